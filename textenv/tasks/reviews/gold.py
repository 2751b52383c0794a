"""The gold scorer: the true quality of a review, which the learned reward model only approximates.

Gold reads ``prompt + response`` with the grammar (:mod:`textenv.tasks.reviews.grammar`). A response is
*grammatical* when the whole text parses as a complete review; its *gold sentiment* is the sentiment of that
parse, in [-1, 1]. Ungrammatical text gets no sentiment credit (0), so a policy cannot earn gold by emitting
a list of positive words, whatever a reward model thinks of them.

The simulated labellers who produce the preference data compare two responses by a *utility*: the gold
sentiment of a grammatical response, and ``UNGRAMMATICAL_UTILITY`` (-1, as bad as the worst review) for an
ungrammatical one, because people prefer any fluent review to broken text. They choose by a Bradley–Terry
probability ``P(a over b) = σ((u_a - u_b) / temperature)``, the noise of real labellers: two responses of
nearly equal sentiment are a coin flip, a clearly better one wins almost always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from textenv.tasks import base
from textenv.tasks.reviews.grammar import parse

UNGRAMMATICAL_UTILITY = -1.0
LABELLER_TEMPERATURE = 0.05


@dataclass(frozen=True)
class GoldScore:
    """Gold verdict on one response: grammatical or not, and its sentiment (0 when ungrammatical)."""

    grammatical: bool
    sentiment: float

    @property
    def positive(self) -> bool:
        return self.grammatical and self.sentiment > 0

    @property
    def utility(self) -> float:
        """What the simulated labellers maximise: the sentiment, or -1 for broken text."""
        return self.sentiment if self.grammatical else UNGRAMMATICAL_UTILITY


def gold_score(prompt: str, response: str) -> GoldScore:
    """Gold grammaticality and sentiment of ``response`` as the continuation of ``prompt``."""
    result = parse(prompt + response)
    if result is None:
        return GoldScore(False, 0.0)
    return GoldScore(True, result.sentiment)


def gold_sentiment(prompt: str, response: str) -> float:
    """Gold sentiment in [-1, 1] of one response (0 for ungrammatical text)."""
    return gold_score(prompt, response).sentiment


def is_grammatical(prompt: str, response: str) -> bool:
    """Whether ``prompt + response`` is a complete, grammatical review."""
    return gold_score(prompt, response).grammatical


def distinct_n(responses: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``responses`` (1.0: no n-gram repeats; 0 if none)."""
    grams = [
        tuple(words[i : i + n])
        for text in responses
        for words in [text.split()]
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Gold quality of a batch of responses.

    Returns:
        ``gold`` (the mean utility, in [-1, 1]: the sentiment of a grammatical review, -1 for broken text),
        ``success_rate`` (the share of successes: grammatical reviews with sentiment > 0, the same as
        ``positive_rate``), ``gold_sentiment`` (mean, ungrammatical counting 0), ``positive_rate``,
        ``grammatical_rate``, ``distinct_2`` (over the responses' words), ``mean_words`` (response length
        in words) and ``n``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return summarize([gold_score(p, r) for p, r in zip(prompts, responses, strict=True)], responses)


def summarize(scores: Sequence[GoldScore], responses: Sequence[str]) -> dict[str, float]:
    """What :func:`evaluate` returns, from gold scores already computed (one per response)."""
    if len(scores) != len(responses):
        raise ValueError(f"{len(scores)} gold scores but {len(responses)} responses")
    if not responses:
        raise ValueError("evaluate needs at least one response")
    positive_rate = float(np.mean([s.positive for s in scores]))
    return {
        "gold": float(np.mean([s.utility for s in scores])),
        "success_rate": positive_rate,
        "gold_sentiment": float(np.mean([s.sentiment for s in scores])),
        "positive_rate": positive_rate,
        "grammatical_rate": float(np.mean([s.grammatical for s in scores])),
        "distinct_2": distinct_n(responses, 2),
        "mean_words": float(np.mean([len(r.split()) for r in responses])),
        "n": float(len(responses)),
    }


def gold_utilities(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Gold utility of each response: its sentiment if grammatical, -1 for broken text."""
    return [gold_score(p, r).utility for p, r in zip(prompts, responses, strict=True)]


def gold_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Gold sentiment as a reward function ``(prompts, responses) -> floats``: RL against the truth."""
    return [gold_sentiment(p, r) for p, r in zip(prompts, responses, strict=True)]


def prefer(
    rng: np.random.Generator,
    prompt: str,
    first: str,
    second: str,
    temperature: float = LABELLER_TEMPERATURE,
) -> tuple[str, str]:
    """A simulated labeller's choice between two responses: ``(chosen, rejected)``."""
    return base.prefer(rng, prompt, first, second, lambda p, r: gold_score(p, r).utility, temperature)
