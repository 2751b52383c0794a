"""The review language and its gold scorer: samples parse, hand-written sentences score as expected."""

import numpy as np
import pytest

from textenv.tasks import reviews
from textenv.tasks.reviews import grammar
from textenv.tasks.reviews.gold import (
    LABELLER_TEMPERATURE,
    UNGRAMMATICAL_UTILITY,
    distinct_n,
    evaluate,
    gold_score,
    prefer,
)


def test_grammar_samples_always_parse_and_fit_the_response_limit():
    corpus = grammar.sample_corpus(3000, seed=7)
    for text in corpus:
        result = grammar.parse(text)
        assert result is not None, text
        assert -1.0 <= result.sentiment <= 1.0
        assert len(text.split()) - 3 <= grammar.MAX_BODY_WORDS
    sentiments = np.array([grammar.parse(t).sentiment for t in corpus])
    assert 0.35 < (sentiments > 0).mean() < 0.65  # mixed sentiment, room for RL to move
    assert len(set(corpus)) > 0.9 * len(corpus)  # a language, not a list of templates
    assert grammar.sample_corpus(50, seed=3) == grammar.sample_corpus(50, seed=3)


def test_every_prompt_is_a_neutral_prefix_of_some_review():
    corpus = grammar.sample_corpus(2000, seed=0)  # seed 0: every prompt appears in 2000 reviews
    sentiment_words = {w for table in grammar.ADJECTIVES.values() for w in table}
    sentiment_words |= {*grammar.VERBS, *grammar.VERB_BASES, *grammar.INTENSIFIERS, "not", "never"}
    for prompt in grammar.default_prompts():
        assert any(text.startswith(prompt + " ") for text in corpus), prompt
        assert not set(prompt.split()) & sentiment_words, prompt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hotel review : the room was clean .", 0.6),
        ("hotel review : the room was not clean .", -0.36),  # negation flips (and softens)
        ("hotel review : the room was very clean .", 0.78),
        ("restaurant review : the staff were not rude .", 0.48),  # "not rude" is mildly positive
        ("restaurant review : the soup was extremely awful .", -1.0),  # intensified, then clipped
        ("restaurant review : i loved the pasta .", 0.9),
        ("restaurant review : we did not enjoy our dessert .", -0.42),
        ("product review : it was an excellent purchase .", 0.9),
        ("product review : it was not a good purchase .", -0.36),
        ("hotel review : we would never recommend this hotel .", -1.0),
        ("hotel review : i will definitely come back .", 0.9),
        ("product review : the screen is bright and sturdy .", 0.55),
        # "but" weighs the second clause 0.7
        ("restaurant review : the pasta was delicious but the waiter was rude .", 0.3 * 0.9 - 0.7 * 0.8),
        # sentences average
        ("hotel review : the bed was comfortable . the wifi was terrible .", (0.7 - 0.9) / 2),
    ],
)
def test_hand_written_sentences_get_the_expected_sentiment(text, expected):
    header, _, _ = text.partition(" : ")
    score = gold_score(header + " :", text[len(header) + 2 :])
    assert score.grammatical, text
    assert score.sentiment == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    [
        "hotel review : the room was clean",  # incomplete: no full stop
        "hotel review : the staff was friendly .",  # agreement: staff are plural
        "hotel review : the room were clean .",
        "restaurant review : the waiter was delicious .",  # adjective does not suit the noun
        "hotel review : the pasta was delicious .",  # a restaurant noun in a hotel review
        "product review : it was a excellent purchase .",  # a/an
        "hotel review : we will definitely never come back .",
        "restaurant review : great excellent amazing delicious .",  # bag of positive words
        "restaurant review : delicious delicious delicious delicious",
        "hotel review : xq zzv the the .",  # gibberish
        "hotel review : .",
        "review : the room was clean .",  # no domain
    ],
)
def test_ungrammatical_text_gets_no_credit(text):
    score = gold_score(text, "")
    assert not score.grammatical
    assert score.sentiment == 0.0 and not score.positive
    assert score.utility == UNGRAMMATICAL_UTILITY


def test_response_is_read_as_a_continuation_of_its_prompt():
    assert gold_score("hotel review : the room", " was clean .").grammatical
    assert not gold_score("restaurant review : the room", " was clean .").grammatical  # no rooms there
    assert not gold_score("hotel review : the room", " the room was clean .").grammatical
    assert gold_score("hotel review : the room", " was clean .") == gold_score(
        "hotel review :", " the room was clean ."
    )


def test_evaluate_reports_the_gold_figures():
    prompts = ["hotel review :"] * 4
    responses = [
        " the room was clean .",  # +0.6
        " the room was dirty .",  # -0.8
        " great great great .",  # ungrammatical: 0
        " the room was clean .",
    ]
    result = evaluate(prompts, responses)
    assert result["gold_sentiment"] == pytest.approx((0.6 - 0.8 + 0 + 0.6) / 4)
    assert result["positive_rate"] == pytest.approx(0.5)
    assert result["grammatical_rate"] == pytest.approx(0.75)
    assert result["distinct_2"] == pytest.approx(distinct_n(responses))
    assert distinct_n(["a b a b"]) == pytest.approx(2 / 3)  # bigrams ab, ba, ab
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        evaluate(["a", "b"], ["c"])


def test_simulated_labellers_follow_bradley_terry():
    rng = np.random.default_rng(0)
    good, bad = " the room was very clean .", " the room was dirty ."
    wins = sum(prefer(rng, "hotel review :", good, bad)[0] == good for _ in range(2000))
    assert wins / 2000 > 0.99  # utility gap 1.58, many times the labellers' temperature
    close_a, close_b = " the room was clean .", " the room was comfortable ."  # 0.6 vs 0.7
    wins = sum(prefer(rng, "hotel review :", close_a, close_b)[0] == close_b for _ in range(4000))
    expected = 1 / (1 + np.exp(-0.1 / LABELLER_TEMPERATURE))
    assert wins / 4000 == pytest.approx(expected, abs=0.03)


def test_package_import_stays_light():
    import subprocess
    import sys

    code = "import textenv.tasks.reviews, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert reviews.ENV_DEFAULTS["max_new_tokens"] == 24
