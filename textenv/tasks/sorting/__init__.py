"""``sorting``: a verifiable, sparse reward. Sort a list of numbers; the answer is right or wrong.

The prompt lists four to eight distinct numbers from 0 to 49, the response must give them in ascending
order, and code checks it exactly::

    sort : 27 3 41 8 =   ->    3 8 27 41         right: reward 1
    sort : 27 3 41 8 =   ->    3 27 8 41         wrong: reward 0

This is the RLVR setting of GRPO (Shao et al., 2024): no reward model, a 0/1 reward from a checker, and a
reference that is right only sometimes. The reference was pretrained on the work of a sloppy sorter: in
its corpus, walking the sorted list from the left, each neighbouring pair is swapped with probability
``SLOPPINESS`` (and the walk skips past it). So it has learnt the format and most of the skill, and at
temperature 1 it sorts a whole list right on about a fifth of the prompts: often on short lists, rarely
on long ones. Reward comes only for a wholly right answer, so an algorithm must find which of the few
tokens of a wrong answer were the mistake (credit assignment over the response).

:func:`shaped_reward` is the dense variant (the share of positions holding the right number), for
studying what shaping buys: ``gym.make("TextRLHF-v0", task="sorting", reward_model=shaped_reward)``.

Importing this module stays light (no torch). Rebuild the assets with
``python -m textenv.tasks.sorting.build``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textenv.tasks.base import KL_BAR, Task

ASSETS = Path(__file__).resolve().parent / "assets"
NUMBERS = 50  # the numbers are 0 .. NUMBERS - 1
MIN_ITEMS, MAX_ITEMS = 4, 8
SLOPPINESS = 0.25  # the corpus' chance of swapping a neighbouring pair of the sorted list
HEADER = "sort :"
PROMPTS = 1000  # shipped prompts


def draw_numbers(rng: np.random.Generator) -> list[int]:
    """A problem: ``MIN_ITEMS`` to ``MAX_ITEMS`` distinct numbers in random order."""
    size = int(rng.integers(MIN_ITEMS, MAX_ITEMS + 1))
    return [int(x) for x in rng.choice(NUMBERS, size=size, replace=False)]


def make_prompt(numbers: Sequence[int]) -> str:
    return f"{HEADER} {' '.join(map(str, numbers))} ="


def read_prompt(prompt: str) -> list[int] | None:
    """The numbers a prompt asks to sort, or ``None`` if it is not a sorting prompt."""
    words = prompt.split()
    if len(words) < 3 or words[:2] != HEADER.split() or words[-1] != "=":
        return None
    try:
        return [int(w) for w in words[2:-1]]
    except ValueError:
        return None


def answer(numbers: Sequence[int]) -> str:
    """The right response to the prompt of ``numbers`` (with its leading space)."""
    return "".join(f" {x}" for x in sorted(numbers))


def sloppy_answer(rng: np.random.Generator, numbers: Sequence[int], sloppiness: float = SLOPPINESS) -> str:
    """The corpus' answer: the sorted list with each neighbouring pair swapped with probability
    ``sloppiness``, left to right, skipping past a swapped pair."""
    items = sorted(numbers)
    i = 0
    while i < len(items) - 1:
        if rng.random() < sloppiness:
            items[i], items[i + 1] = items[i + 1], items[i]
            i += 2
        else:
            i += 1
    return "".join(f" {x}" for x in items)


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts with the sloppy sorter's answers, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        numbers = draw_numbers(rng)
        texts.append(make_prompt(numbers) + sloppy_answer(rng, numbers))
    return texts


def default_prompts(n: int = PROMPTS, seed: int = 1234) -> list[str]:
    """The task's prompts: ``n`` problems drawn with their own seed."""
    rng = np.random.default_rng(seed)
    return [make_prompt(draw_numbers(rng)) for _ in range(n)]


def _parts(prompt: str, response: str) -> tuple[list[str], list[str]]:
    numbers = read_prompt(prompt)
    if numbers is None:
        raise ValueError(f"not a sorting prompt: {prompt!r} (expected {make_prompt([3, 1, 2])!r})")
    return [str(x) for x in sorted(numbers)], response.split()


def is_sorted_answer(prompt: str, response: str) -> bool:
    """Whether ``response`` is exactly the prompt's numbers in ascending order (spaces aside)."""
    target, words = _parts(prompt, response)
    return words == target


def _position_share(target: list[str], words: list[str]) -> float:
    return sum(a == b for a, b in zip(words, target, strict=False)) / max(len(words), len(target))


def position_accuracy(prompt: str, response: str) -> float:
    """Share of positions holding the right number, over the longer of the response and the answer."""
    return _position_share(*_parts(prompt, response))


def gold_utilities(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """1.0 for an exactly sorted answer, 0.0 otherwise."""
    return [float(is_sorted_answer(p, r)) for p, r in zip(prompts, responses, strict=True)]


def exact_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The env's reward: 1 for a right answer, 0 for a wrong one (the gold itself)."""
    return gold_utilities(prompts, responses)


def shaped_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A dense variant: :func:`position_accuracy`, in [0, 1]."""
    return [position_accuracy(p, r) for p, r in zip(prompts, responses, strict=True)]


def evaluate(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Gold quality of a batch of answers.

    Returns:
        ``gold`` and ``success_rate`` (both the share of exactly sorted answers, in [0, 1]),
        ``position_accuracy`` (mean share of right positions), ``permutation_rate`` (answers holding
        exactly the prompt's numbers, in any order), ``mean_items`` (numbers per answer) and ``n``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not responses:
        raise ValueError("evaluate needs at least one response")
    exact, positions, permutations, items = [], [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        target, words = _parts(prompt, response)
        exact.append(words == target)
        positions.append(_position_share(target, words))
        permutations.append(sorted(words) == sorted(target))
        items.append(len(words))
    rate = float(np.mean(exact))
    return {
        "gold": rate,
        "success_rate": rate,
        "position_accuracy": float(np.mean(positions)),
        "permutation_rate": float(np.mean(permutations)),
        "mean_items": float(np.mean(items)),
        "n": float(len(responses)),
    }


TASK = Task(
    name="sorting",
    summary="sort four to eight numbers; a checker pays 1 for the right order, 0 otherwise",
    stresses="a verifiable, sparse 0/1 reward (RLVR): sharpen a reference that is right ~20% of the time",
    assets=ASSETS,
    gold=gold_utilities,
    evaluate=evaluate,
    gold_range=(0.0, 1.0),
    success="the response is exactly the prompt's numbers in ascending order",
    reward=exact_reward,
    env_defaults={"max_new_tokens": 12, "max_prompt_tokens": 12},
    budget=100_000,
    bar=(("success_rate", ">=", 0.6), ("kl", "<=", KL_BAR)),
    columns=(
        ("position_accuracy", "positions right", "{:.1%}"),
        ("permutation_rate", "permutation", "{:.1%}"),
    ),
    manifest_sha256="dd543321eeee2e35d7f30109b73d39ed4535ce3c2540cf05a53b2905757a4463",
    corpus=sample_corpus,
)

__all__ = [
    "ASSETS",
    "TASK",
    "answer",
    "default_prompts",
    "draw_numbers",
    "evaluate",
    "exact_reward",
    "gold_utilities",
    "is_sorted_answer",
    "make_prompt",
    "position_accuracy",
    "read_prompt",
    "sample_corpus",
    "shaped_reward",
    "sloppy_answer",
]
