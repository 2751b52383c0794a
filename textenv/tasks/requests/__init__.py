"""``requests``: prompt-conditioned. Write the review the prompt asks for: its sentiment and its subject.

Each prompt is a request for a review of a given sentiment about a given subject::

    positive hotel review about the staff :   ->   the staff were very friendly . we will come back .
    negative product review about the battery :   ->   the battery is not reliable .

The **gold** utility of a response to a request of sentiment ``s`` (+1 positive, -1 negative) is::

    gold = (s * sentiment + (1 if the review mentions the subject else -1)) / 2      (-1 if ungrammatical)

in [-1, 1], and a success is a grammatical review that mentions the subject with a sentiment of the
requested sign. There are 98 requests (2 sentiments x 49 subjects of three domains), so no single
answer serves them all: the policy must read its prompt. The reference was pretrained on requests
answered by a careless crowd: a review leans the requested way in ``FOLLOW_SENTIMENT`` of the corpus
(else a coin flip) and opens on the requested subject in ``FOLLOW_SUBJECT`` (else it is drawn freely),
so it meets a request only sometimes (the manifest has the rate). The reward model was learned from
simulated labellers who compare responses by gold's utility, with Bradley-Terry noise: to score well it
must itself read the request.

Importing this module stays light (no torch). Rebuild the assets with
``python -m textenv.tasks.requests.build``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textenv.tasks.base import Task
from textenv.tasks.reviews.gold import distinct_n
from textenv.tasks.reviews.grammar import (
    DOMAINS,
    LEXICON,
    MAX_BODY_WORDS,
    SENTENCE_WEIGHTS,
    parse_body,
    sample_body,
)

ASSETS = Path(__file__).resolve().parent / "assets"
SENTIMENTS = {"positive": 1.0, "negative": -1.0}
FOLLOW_SENTIMENT = 0.3  # corpus: share of reviews that lean the requested way (the rest: a coin flip)
FOLLOW_SUBJECT = 0.25  # corpus: share of reviews whose first clause is about the requested subject
UNGRAMMATICAL_UTILITY = -1.0


@dataclass(frozen=True)
class Request:
    sentiment: float  # +1 or -1
    domain: str
    subject: str  # a noun of the domain

    @property
    def prompt(self) -> str:
        name = "positive" if self.sentiment > 0 else "negative"
        return f"{name} {self.domain} review about the {self.subject} :"


@dataclass(frozen=True)
class RequestScore:
    """Gold verdict on one response to a request."""

    grammatical: bool
    sentiment: float  # the review's sentiment (0 when ungrammatical)
    requested: float  # +1 or -1
    mentions: bool  # the review names the subject

    @property
    def sentiment_met(self) -> bool:
        return self.grammatical and self.requested * self.sentiment > 0

    @property
    def success(self) -> bool:
        return self.sentiment_met and self.mentions

    @property
    def utility(self) -> float:
        if not self.grammatical:
            return UNGRAMMATICAL_UTILITY
        return (self.requested * self.sentiment + (1.0 if self.mentions else -1.0)) / 2


def read_prompt(prompt: str) -> Request | None:
    """The request of a prompt, or ``None`` if it is not one."""
    words = prompt.split()
    if len(words) != 7 or words[0] not in SENTIMENTS or words[1] not in LEXICON:
        return None
    if words[2:5] != ["review", "about", "the"] or words[6] != ":":
        return None
    if LEXICON[words[1]].noun(words[5]) is None:
        return None
    return Request(SENTIMENTS[words[0]], words[1], words[5])


def gold_score(prompt: str, response: str) -> RequestScore:
    request = read_prompt(prompt)
    if request is None:
        raise ValueError(
            f"not a request: {prompt!r} (expected e.g. 'positive hotel review about the staff :')"
        )
    words = response.split()
    result = parse_body(request.domain, words)
    if result is None:
        return RequestScore(False, 0.0, request.sentiment, False)
    return RequestScore(True, result.sentiment, request.sentiment, request.subject in words)


def gold_utilities(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [gold_score(p, r).utility for p, r in zip(prompts, responses, strict=True)]


def default_prompts() -> list[str]:
    """Every request: two sentiments times every subject of every domain (98 prompts)."""
    return [
        Request(value, domain, noun.word).prompt
        for value in SENTIMENTS.values()
        for domain in DOMAINS
        for noun in LEXICON[domain].nouns
    ]


def sample_answer(rng: np.random.Generator, request: Request) -> str:
    """The corpus' answer to a request: the careless crowd's review (with its leading space)."""
    lexicon = LEXICON[request.domain]
    lean = request.sentiment if rng.random() < FOLLOW_SENTIMENT else (1.0 if rng.random() < 0.5 else -1.0)
    about = lexicon.noun(request.subject) if rng.random() < FOLLOW_SUBJECT else None
    while True:
        count = int(rng.choice(len(SENTENCE_WEIGHTS), p=list(SENTENCE_WEIGHTS))) + 1
        body = sample_body(rng, lexicon, lean, count, about)
        if len(body) <= MAX_BODY_WORDS:
            return "".join(" " + w for w in body)


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` requests with the careless crowd's answers, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        domain = DOMAINS[int(rng.integers(len(DOMAINS)))]
        nouns = LEXICON[domain].nouns
        request = Request(
            1.0 if rng.random() < 0.5 else -1.0, domain, nouns[int(rng.integers(len(nouns)))].word
        )
        texts.append(request.prompt + sample_answer(rng, request))
    return texts


def evaluate(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Gold quality of a batch of answers to requests.

    Returns:
        ``gold`` (mean utility, in [-1, 1]), ``success_rate`` (grammatical, the subject named, the
        requested sentiment), ``sentiment_rate`` (grammatical with the requested sentiment),
        ``mention_rate`` (grammatical and naming the subject), ``grammatical_rate``, ``distinct_2``,
        ``mean_words`` and ``n``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not responses:
        raise ValueError("evaluate needs at least one response")
    scores = [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]
    return {
        "gold": float(np.mean([s.utility for s in scores])),
        "success_rate": float(np.mean([s.success for s in scores])),
        "sentiment_rate": float(np.mean([s.sentiment_met for s in scores])),
        "mention_rate": float(np.mean([s.grammatical and s.mentions for s in scores])),
        "grammatical_rate": float(np.mean([s.grammatical for s in scores])),
        "distinct_2": distinct_n(responses, 2),
        "mean_words": float(np.mean([len(r.split()) for r in responses])),
        "n": float(len(scores)),
    }


TASK = Task(
    name="requests",
    summary="write the review a request asks for (a sentiment and a subject); a reward model learned from "
    "preferences scores it",
    stresses="prompt-conditioning: the right answer depends on the prompt, one answer cannot serve all",
    assets=ASSETS,
    gold=gold_utilities,
    evaluate=evaluate,
    gold_range=(-1.0, 1.0),
    success="a grammatical review that names the requested subject, with a sentiment of the requested sign",
    reward="reward_model",
    env_defaults={"max_new_tokens": 24, "max_prompt_tokens": 8},
    budget=150_000,
    columns=(
        ("sentiment_rate", "sentiment met", "{:.1%}"),
        ("mention_rate", "subject named", "{:.1%}"),
        ("grammatical_rate", "grammatical", "{:.1%}"),
    ),
    manifest_sha256="6205b85ed101de4522e9d135a8e656b3268c7e5af9074a27a4f492cb5d2db550",
    corpus=sample_corpus,
)

__all__ = [
    "ASSETS",
    "TASK",
    "Request",
    "RequestScore",
    "default_prompts",
    "evaluate",
    "gold_score",
    "gold_utilities",
    "read_prompt",
    "sample_answer",
    "sample_corpus",
]
