"""The review language: a seeded probabilistic grammar, its parser, and the sentiment a parse carries.

A review is a header naming its domain, then one to three sentences::

    restaurant review : the pasta was very tasty but the waiter was rude . i would not recommend this place .

Words are separated by single spaces; ``,``, ``.`` and ``:`` are words of their own. The grammar, with
``d`` the domain (restaurant, hotel, product) and every noun taken from that domain's lexicon::

    review    := d "review" ":" sentence "." [sentence "."] [sentence "."]
    sentence  := clause | clause connector clause            connector: and | but | , and | , but
    clause    := copula | opinion | verdict | recommend | return
    copula    := det noun be ["not"] adjp                     "the rooms were not very clean"
    adjp      := adj | adj "and" adj                          adj := [intensifier] adjective
    opinion   := pron ["really"] verb-past det noun           "i really loved the soup"
               | pron "did not" verb-base det noun            "we did not enjoy the dessert"
    verdict   := "it was" ["not"] a/an [intensifier] adjective experience    "it was an awful stay"
    recommend := pron "would" [definitely|not|never] "recommend this" place
    return    := pron "will" [definitely|not|never] return-phrase            "we will never come back"

Agreement is part of the grammar: ``be`` agrees in number with its noun (was/is, were/are), ``a``/``an``
with the next word, and an adjective must suit its noun (food is ``delicious``, staff are ``friendly``; the
general adjectives such as ``great`` or ``awful`` suit every noun). "the staff was delicious" and "hotel
review : the pasta ..." do not parse.

Sentiment, in [-1, 1], is computed from the parse: every adjective and verb has a strength, an intensifier
multiplies it (then clipped to [-1, 1]), ``not`` multiplies by ``NEGATION`` (-0.6: "not great" is mildly
negative, "not bad" mildly positive), two clauses joined by ``and`` average, ``but`` weighs the second
clause 0.7 and the first 0.3, and a review averages its sentences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")
DOMAINS = ("restaurant", "hotel", "product")
NEGATION = -0.6
BUT_WEIGHTS = (0.3, 0.7)
MAX_BODY_WORDS = 22  # reviews are sampled to fit a 24-token response with its EOS
MAX_SENTENCES = 3  # a review of the default task has one to three sentences
SENTENCE_WEIGHTS = (0.25, 0.5, 0.25)  # the sampler's odds of one, two and three sentences

# ----------------------------------------------------------------------------- lexicon
# fmt: off
ADJECTIVES: dict[str, dict[str, float]] = {
    "general": {
        "excellent": 0.9, "amazing": 0.9, "great": 0.8, "good": 0.6, "nice": 0.5, "decent": 0.3,
        "fine": 0.2, "okay": 0.1, "mediocre": -0.3, "bad": -0.6, "poor": -0.6, "disappointing": -0.6,
        "horrible": -0.9, "terrible": -0.9, "awful": -1.0,
    },
    "food": {
        "delicious": 0.9, "tasty": 0.7, "flavorful": 0.7, "fresh": 0.6, "salty": -0.4, "cold": -0.4,
        "bland": -0.5, "greasy": -0.5, "overcooked": -0.6, "stale": -0.7,
    },
    "service": {
        "friendly": 0.7, "helpful": 0.7, "attentive": 0.6, "welcoming": 0.6, "polite": 0.5,
        "slow": -0.5, "unhelpful": -0.6, "careless": -0.6, "unfriendly": -0.7, "rude": -0.8,
    },
    "room": {
        "comfortable": 0.7, "clean": 0.6, "spacious": 0.6, "quiet": 0.5, "cozy": 0.6, "tiny": -0.4,
        "cramped": -0.5, "noisy": -0.6, "dirty": -0.8, "smelly": -0.8,
    },
    "ambience": {
        "charming": 0.6, "relaxing": 0.6, "cozy": 0.6, "lively": 0.5, "boring": -0.4, "crowded": -0.4,
        "loud": -0.5, "gloomy": -0.5,
    },
    "device": {
        "reliable": 0.7, "sturdy": 0.6, "fast": 0.6, "responsive": 0.6, "bright": 0.5, "dim": -0.4,
        "slow": -0.5, "flimsy": -0.7, "buggy": -0.7, "unreliable": -0.7,
    },
    "delivery": {"quick": 0.6, "fast": 0.6, "slow": -0.5, "late": -0.6, "delayed": -0.6},
}
INTENSIFIERS = {
    "extremely": 1.5, "incredibly": 1.5, "very": 1.3, "really": 1.3, "quite": 1.1, "pretty": 1.1,
    "somewhat": 0.7, "slightly": 0.6,
}
VERBS = {  # past: (base, strength)
    "adored": ("adore", 1.0), "loved": ("love", 0.9), "enjoyed": ("enjoy", 0.7), "liked": ("like", 0.6),
    "disliked": ("dislike", -0.6), "hated": ("hate", -0.9),
}
# fmt: on
VERB_BASES = {base: past for past, (base, _) in VERBS.items()}
RECOMMEND: dict[str | None, float] = {None: 0.8, "definitely": 1.0, "not": -0.8, "never": -1.0}
RETURN: dict[str | None, float] = {None: 0.6, "definitely": 0.9, "not": -0.7, "never": -0.9}
PRONOUNS = ("i", "we")
CONNECTORS = (("and",), ("but",), (",", "and"), (",", "but"))
BE = {False: ("was", "is"), True: ("were", "are")}


@dataclass(frozen=True)
class Noun:
    word: str
    plural: bool
    category: str  # which adjectives suit it: its category's and the general ones


def _nouns(category: str, singular: str = "", plural: str = "") -> list[Noun]:
    return [Noun(w, False, category) for w in singular.split()] + [
        Noun(w, True, category) for w in plural.split()
    ]


@dataclass(frozen=True)
class Domain:
    name: str
    nouns: tuple[Noun, ...]
    determiners: tuple[str, ...]
    experiences: tuple[str, ...]  # "it was a great <experience>"
    places: tuple[str, ...]  # "i would recommend this <place>"
    returns: tuple[tuple[str, ...], ...]  # "we will <return phrase>"

    def noun(self, word: str) -> Noun | None:
        for noun in self.nouns:
            if noun.word == word:
                return noun
        return None


LEXICON: dict[str, Domain] = {
    "restaurant": Domain(
        "restaurant",
        tuple(
            _nouns("food", "pasta pizza soup steak salad dessert coffee", "fries noodles portions")
            + _nouns("service", "waiter service", "staff")
            + _nouns("ambience", "atmosphere music decor")
            + _nouns("general", "price location", "prices")
        ),
        ("the", "our"),
        ("meal", "dinner", "lunch", "experience"),
        ("restaurant", "place"),
        (("come", "back"), ("return",)),
    ),
    "hotel": Domain(
        "hotel",
        tuple(
            _nouns("room", "room bed bathroom shower pool", "towels sheets")
            + _nouns("service", "service reception", "staff")
            + _nouns("food", "breakfast")
            + _nouns("ambience", "lobby bar")
            + _nouns("general", "view location wifi price")
        ),
        ("the", "our"),
        ("stay", "visit", "weekend", "experience"),
        ("hotel", "place"),
        (("come", "back"), ("return",)),
    ),
    "product": Domain(
        "product",
        tuple(
            _nouns("device", "battery screen camera keyboard charger", "speakers buttons")
            + _nouns("delivery", "delivery shipping")
            + _nouns("general", "price design case", "instructions")
        ),
        ("the", "its"),
        ("purchase", "product", "experience"),
        ("product", "seller"),
        (("buy", "it", "again"), ("order", "again")),
    ),
}


def adjectives_for(category: str) -> dict[str, float]:
    """Adjectives that suit a noun of ``category``, with their strengths."""
    return {**ADJECTIVES["general"], **ADJECTIVES[category]}


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ----------------------------------------------------------------------------- parser
# Each clause parser takes the words and a start index and yields (end index, sentiment) for every way
# the words from the start index can be read as that clause.
Parses = Iterator[tuple[int, float]]


def _at(words: Sequence[str], i: int) -> str | None:
    return words[i] if i < len(words) else None


def _adj(words: Sequence[str], i: int, allowed: dict[str, float]) -> Parses:
    factor = INTENSIFIERS.get(_at(words, i) or "")
    if factor is not None:
        i += 1
    word = _at(words, i)
    if word in allowed:
        yield i + 1, _clip(allowed[word] * (factor or 1.0))


def _adjp(words: Sequence[str], i: int, allowed: dict[str, float]) -> Parses:
    for j, first in _adj(words, i, allowed):
        yield j, first
        if _at(words, j) == "and":
            for k, second in _adj(words, j + 1, allowed):
                yield k, (first + second) / 2


def _noun_phrase(words: Sequence[str], i: int, domain: Domain) -> Noun | None:
    if _at(words, i) in domain.determiners:
        return domain.noun(_at(words, i + 1) or "")
    return None


def _copula(words: Sequence[str], i: int, domain: Domain) -> Parses:
    noun = _noun_phrase(words, i, domain)
    if noun is None or _at(words, i + 2) not in BE[noun.plural]:
        return
    j, sign = i + 3, 1.0
    if _at(words, j) == "not":
        j, sign = j + 1, NEGATION
    for k, value in _adjp(words, j, adjectives_for(noun.category)):
        yield k, sign * value


def _opinion(words: Sequence[str], i: int, domain: Domain) -> Parses:
    if _at(words, i) not in PRONOUNS:
        return
    j = i + 1
    if words[j : j + 2] == ["did", "not"] and _at(words, j + 2) in VERB_BASES:
        value = NEGATION * VERBS[VERB_BASES[words[j + 2]]][1]
        j += 3
    else:
        factor = 1.0
        if _at(words, j) == "really":
            j, factor = j + 1, INTENSIFIERS["really"]
        if _at(words, j) not in VERBS:
            return
        value = _clip(factor * VERBS[words[j]][1])
        j += 1
    if _noun_phrase(words, j, domain) is not None:
        yield j + 2, value


def _verdict(words: Sequence[str], i: int, domain: Domain) -> Parses:
    if list(words[i : i + 2]) != ["it", "was"]:
        return
    j, sign = i + 2, 1.0
    if _at(words, j) == "not":
        j, sign = j + 1, NEGATION
    article, following = _at(words, j), _at(words, j + 1)
    if article not in ("a", "an") or following is None or article != _article(following):
        return
    for k, value in _adj(words, j + 1, ADJECTIVES["general"]):
        if _at(words, k) in domain.experiences:
            yield k + 1, sign * value


def _modal(
    words: Sequence[str], i: int, modal: str, table: dict[str | None, float]
) -> tuple[int, float] | None:
    if _at(words, i) not in PRONOUNS or _at(words, i + 1) != modal:
        return None
    word = _at(words, i + 2)
    if word is not None and word in table:
        return i + 3, table[word]
    return i + 2, table[None]


def _recommend(words: Sequence[str], i: int, domain: Domain) -> Parses:
    found = _modal(words, i, "would", RECOMMEND)
    if found is not None:
        j, value = found
        if list(words[j : j + 2]) == ["recommend", "this"] and _at(words, j + 2) in domain.places:
            yield j + 3, value


def _return(words: Sequence[str], i: int, domain: Domain) -> Parses:
    found = _modal(words, i, "will", RETURN)
    if found is not None:
        j, value = found
        for phrase in domain.returns:
            if tuple(words[j : j + len(phrase)]) == phrase:
                yield j + len(phrase), value


_CLAUSES = (_copula, _opinion, _verdict, _recommend, _return)


def _clause(words: Sequence[str], i: int, domain: Domain) -> Parses:
    for shape in _CLAUSES:
        yield from shape(words, i, domain)


def _sentence(words: Sequence[str], i: int, domain: Domain) -> Parses:
    for j, first in _clause(words, i, domain):
        yield j, first
        for connector in CONNECTORS:
            if tuple(words[j : j + len(connector)]) == connector:
                for k, second in _clause(words, j + len(connector), domain):
                    if connector[-1] == "but":
                        yield k, BUT_WEIGHTS[0] * first + BUT_WEIGHTS[1] * second
                    else:
                        yield k, (first + second) / 2


def _body(words: Sequence[str], i: int, domain: Domain, sentences: int) -> list[float] | None:
    """Sentence values of the first complete reading of ``words[i:]`` as at most ``sentences`` sentences."""
    if sentences == 0:
        return None
    for j, value in _sentence(words, i, domain):
        if _at(words, j) != ".":
            continue
        if j + 1 == len(words):
            return [value]
        rest = _body(words, j + 1, domain, sentences - 1)
        if rest is not None:
            return [value, *rest]
    return None


@dataclass(frozen=True)
class Parse:
    """A review read by the grammar: its domain and the sentiment of each sentence."""

    domain: str
    sentence_values: tuple[float, ...]

    @property
    def sentiment(self) -> float:
        return _clip(float(np.mean(self.sentence_values)))


def parse(text: str, max_sentences: int = MAX_SENTENCES) -> Parse | None:
    """Read ``text`` as a whole review; ``None`` when it is not one (ungrammatical or incomplete)."""
    words = text.split()
    if len(words) < 4 or words[0] not in LEXICON or words[1:3] != ["review", ":"]:
        return None
    return parse_body(words[0], words[3:], max_sentences)


def parse_body(domain: str, words: Sequence[str], max_sentences: int = MAX_SENTENCES) -> Parse | None:
    """Read ``words`` as the body of a review of ``domain`` (one to ``max_sentences`` sentences)."""
    if domain not in LEXICON:
        raise ValueError(f"unknown domain {domain!r}; the domains are {DOMAINS}")
    values = _body(list(words), 0, LEXICON[domain], max_sentences) if words else None
    return None if values is None else Parse(domain, tuple(values))


# ----------------------------------------------------------------------------- sampler
def _choice(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _signed(rng: np.random.Generator, table: dict[str, float], sign: float) -> str:
    return str(_choice(rng, [w for w, v in table.items() if v * sign > 0]))


def _sample_adj(
    rng: np.random.Generator, table: dict[str, float], sign: float, exclude: str = ""
) -> list[str]:
    pool = {w: v for w, v in table.items() if w != exclude}
    words = [_signed(rng, pool, sign)]
    if rng.random() < 0.3:
        words.insert(0, str(_choice(rng, list(INTENSIFIERS))))
    return words


def _sample_clause(
    rng: np.random.Generator, domain: Domain, sign: float, about: Noun | None = None
) -> list[str]:
    """A clause leaning ``sign``; about the noun ``about`` when given (a copula or an opinion clause)."""
    shape = rng.choice(5, p=[0.45, 0.2, 0.13, 0.11, 0.11]) if about is None else int(rng.integers(2))
    negate = rng.random() < 0.2
    inner = -sign if negate else sign
    if shape == 0:  # copula
        noun = _choice(rng, domain.nouns) if about is None else about
        table = adjectives_for(noun.category)
        adjp = _sample_adj(rng, table, inner)
        if rng.random() < 0.25:
            adjp += ["and", *_sample_adj(rng, table, inner, exclude=adjp[-1])]
        be = str(_choice(rng, BE[noun.plural]))
        return [str(_choice(rng, domain.determiners)), noun.word, be, *(["not"] if negate else []), *adjp]
    pronoun = str(_choice(rng, PRONOUNS))
    if shape == 1:  # opinion
        past = _signed(rng, {w: v for w, (_, v) in VERBS.items()}, inner)
        if negate:
            verb = ["did", "not", VERBS[past][0]]
        else:
            verb = (["really"] if rng.random() < 0.2 else []) + [past]
        noun = _choice(rng, domain.nouns) if about is None else about
        return [pronoun, *verb, str(_choice(rng, domain.determiners)), noun.word]
    if shape == 2:  # verdict
        adj = _sample_adj(rng, ADJECTIVES["general"], inner)
        head = ["it", "was", *(["not"] if negate else [])]
        return [*head, _article(adj[0]), *adj, str(_choice(rng, domain.experiences))]
    modal = RECOMMEND if shape == 3 else RETURN
    modifier = _choice(rng, [m for m, v in modal.items() if v * sign > 0])
    middle = [modifier] if modifier else []
    if shape == 3:
        return [pronoun, "would", *middle, "recommend", "this", str(_choice(rng, domain.places))]
    return [pronoun, "will", *middle, *_choice(rng, domain.returns)]


def _sample_sentence(
    rng: np.random.Generator, domain: Domain, sign: float, about: Noun | None = None
) -> list[str]:
    first = sign if rng.random() < 0.85 else -sign
    words = _sample_clause(rng, domain, first, about)
    if rng.random() < 0.45:
        second = sign if rng.random() < 0.8 else -sign
        contrast = second != first or rng.random() < 0.1
        connector = _choice(rng, CONNECTORS[1::2] if contrast else CONNECTORS[0::2])
        words += [*connector, *_sample_clause(rng, domain, second)]
    return [*words, "."]


def sample_review(
    rng: np.random.Generator,
    domain: str | None = None,
    max_body_words: int = MAX_BODY_WORDS,
    sentence_weights: Sequence[float] = SENTENCE_WEIGHTS,
) -> str:
    """One review drawn from the grammar.

    The review's leaning (positive or negative, even odds) is drawn first; each clause follows it with
    probability 0.85 (0.8 for a second clause, drawn for 45% of sentences, usually after ``but``), so
    reviews are mostly coherent and sometimes mixed. The number of sentences is k + 1 with probability
    ``sentence_weights[k]``. Reviews whose body would pass ``max_body_words`` words are drawn again.
    """
    name = domain if domain is not None else str(_choice(rng, DOMAINS))
    if name not in LEXICON:
        raise ValueError(f"unknown domain {name!r}; the domains are {DOMAINS}")
    lexicon = LEXICON[name]
    while True:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        count = int(rng.choice(len(sentence_weights), p=list(sentence_weights))) + 1
        body = sample_body(rng, lexicon, sign, count)
        if len(body) <= max_body_words:
            return " ".join([name, "review", ":", *body])


def sample_body(
    rng: np.random.Generator, domain: Domain, sign: float, sentences: int, about: Noun | None = None
) -> list[str]:
    """The words of a review body of ``sentences`` sentences leaning ``sign`` (+1 or -1), each sentence
    drawn as :func:`sample_review` draws them; the first clause is about the noun ``about`` when given."""
    return [
        w for k in range(sentences) for w in _sample_sentence(rng, domain, sign, about if k == 0 else None)
    ]


def sample_corpus(
    n: int,
    seed: int = 0,
    max_body_words: int = MAX_BODY_WORDS,
    sentence_weights: Sequence[float] = SENTENCE_WEIGHTS,
) -> list[str]:
    """``n`` reviews from the grammar, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        sample_review(rng, max_body_words=max_body_words, sentence_weights=sentence_weights) for _ in range(n)
    ]


def default_prompts() -> list[str]:
    """The default task's prompts: a review's header, alone or with the first words of a first clause.

    None of them carries sentiment, so every bit of a review's sentiment is the response's doing.
    """
    prompts = []
    for name, domain in LEXICON.items():
        header = f"{name} review :"
        prompts += [header, f"{header} it was", f"{header} i", f"{header} we"]
        prompts += [f"{header} the {noun.word}" for noun in domain.nouns]
    return prompts
