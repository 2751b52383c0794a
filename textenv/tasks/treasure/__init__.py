"""``treasure``: exploration. A walk on a grid pays only if it reaches a far cell; the reference rarely does.

The policy writes a walk, one move per token, from the origin of an unbounded grid::

    walk : north   ->   north north north north north north north north north north    reaches (0, 11): 1
    walk :         ->   south east east east north                                     does not: 0

The prompt is ``walk :`` and up to two first moves; the response continues the walk. The reward is 1 when
the walk passes the treasure, ``TREASURE`` = 11 steps due north, during the response, else 0. The
reference was pretrained on persistent random walks of 4 to 16 moves (a walker who keeps its direction
with probability ``PERSISTENCE`` = 0.7 and otherwise turns to one of the three other directions), so
every step of the way is a likely token (0.7), but the whole is rare: the reference reaches the treasure
on about 0.3% of its samples (the manifest has the measured rate), about one episode of a 256-episode
rollout. On-policy sampling rarely sees a success, so how an algorithm explores and how it learns from
one rare success decide how soon it learns. A response with anything but moves earns nothing.

:func:`shaped_reward` is the dense variant (how close the walk came, ``1 - distance / 11``), for studying
what shaping buys: ``gym.make("TextRLHF-v0", task="treasure", reward_model=shaped_reward)``.

Importing this module stays light (no torch). Rebuild the assets with
``python -m textenv.tasks.treasure.build``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textenv.tasks.base import KL_BAR, Task

ASSETS = Path(__file__).resolve().parent / "assets"
MOVES: dict[str, tuple[int, int]] = {"north": (0, 1), "east": (1, 0), "south": (0, -1), "west": (-1, 0)}
TREASURE = (0, 11)
MIN_MOVES, MAX_MOVES = 4, 16  # walk lengths of the pretraining corpus
PERSISTENCE = 0.7  # the corpus walker's chance of repeating its last move
HEADER = "walk :"
START = abs(TREASURE[0]) + abs(TREASURE[1])  # the treasure's distance from the origin


@dataclass(frozen=True)
class Walk:
    """A response read as a walk: whether it is one, and what it did."""

    valid: bool  # the response is moves only
    moves: int  # moves in the response
    found: bool  # the walk passed the treasure during the response
    closest: int  # least Manhattan distance to the treasure during the response (START if no move)


def _position(moves: Sequence[str]) -> tuple[int, int]:
    x = y = 0
    for move in moves:
        dx, dy = MOVES[move]
        x, y = x + dx, y + dy
    return x, y


def read_prompt(prompt: str) -> list[str] | None:
    """The moves a prompt starts the walk with, or ``None`` if it is not a walk prompt."""
    words = prompt.split()
    if words[:2] != HEADER.split() or any(w not in MOVES for w in words[2:]):
        return None
    return words[2:]


def follow(prompt: str, response: str) -> Walk:
    """Walk the prompt's moves, then the response's; judge the response's part."""
    start = read_prompt(prompt)
    if start is None:
        raise ValueError(f"not a walk prompt: {prompt!r} (expected e.g. 'walk : north east')")
    words = response.split()
    x, y = _position(start)
    tx, ty = TREASURE
    closest = abs(tx - x) + abs(ty - y)
    if any(w not in MOVES for w in words):
        return Walk(False, len(words), False, closest)
    for move in words:
        dx, dy = MOVES[move]
        x, y = x + dx, y + dy
        closest = min(closest, abs(tx - x) + abs(ty - y))
    return Walk(True, len(words), closest == 0, closest)


def sample_walk(rng: np.random.Generator, persistence: float = PERSISTENCE) -> list[str]:
    """A walk of the pretraining corpus: ``MIN_MOVES`` to ``MAX_MOVES`` moves, the first uniform, each next
    one the same as the last with probability ``persistence``, else one of the three others."""
    names = list(MOVES)
    size = int(rng.integers(MIN_MOVES, MAX_MOVES + 1))
    moves = [int(rng.integers(len(names)))]
    for _ in range(size - 1):
        turn = rng.random() >= persistence
        moves.append((moves[-1] + int(rng.integers(1, len(names)))) % len(names) if turn else moves[-1])
    return [names[i] for i in moves]


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` random walks, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [" ".join([HEADER, *sample_walk(rng)]) for _ in range(n)]


def default_prompts() -> list[str]:
    """``walk :`` and every start of one or two moves (21 prompts)."""
    starts = [combo for k in range(3) for combo in itertools.product(MOVES, repeat=k)]
    return [" ".join([HEADER, *combo]) for combo in starts]


def gold_utilities(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """1.0 when the walk passes the treasure, 0.0 otherwise."""
    return [float(follow(p, r).found) for p, r in zip(prompts, responses, strict=True)]


def treasure_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The env's reward: 1 when the walk passes the treasure, 0 otherwise (the gold itself)."""
    return gold_utilities(prompts, responses)


def shaped_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A dense variant: ``1 - closest distance / START`` for a walk (1 at the treasure), 0 for a non-walk."""
    walks = [follow(p, r) for p, r in zip(prompts, responses, strict=True)]
    return [max(0.0, 1.0 - w.closest / START) if w.valid else 0.0 for w in walks]


def evaluate(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Gold quality of a batch of walks.

    Returns:
        ``gold`` and ``success_rate`` (both the share of walks that pass the treasure, in [0, 1]),
        ``valid_rate`` (responses of moves only), ``mean_moves`` and ``mean_closest`` (the least Manhattan
        distance to the treasure, over walks) and ``n``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not responses:
        raise ValueError("evaluate needs at least one response")
    walks = [follow(p, r) for p, r in zip(prompts, responses, strict=True)]
    rate = float(np.mean([w.found for w in walks]))
    valid = [w for w in walks if w.valid]
    return {
        "gold": rate,
        "success_rate": rate,
        "valid_rate": len(valid) / len(walks),
        "mean_moves": float(np.mean([w.moves for w in walks])),
        "mean_closest": float(np.mean([w.closest for w in valid])) if valid else float(START),
        "n": float(len(walks)),
    }


TASK = Task(
    name="treasure",
    summary="write a walk on a grid, one move per token; it pays 1 if it reaches the cell 11 steps north",
    stresses="exploration: the rewarded behaviour is rare (well under 1%) under the reference",
    assets=ASSETS,
    gold=gold_utilities,
    evaluate=evaluate,
    gold_range=(0.0, 1.0),
    success="the walk passes the treasure cell (11 steps due north) during the response",
    reward=treasure_reward,
    env_defaults={"max_new_tokens": 20, "max_prompt_tokens": 4},
    budget=240_000,
    bar=(("success_rate", ">=", 0.05), ("kl", "<=", KL_BAR)),
    columns=(
        ("valid_rate", "walks", "{:.1%}"),
        ("mean_closest", "closest", "{:.2f}"),
        ("mean_moves", "moves", "{:.1f}"),
    ),
    manifest_sha256="e18fb392468407b8715216fc025adddc477240630e898dfd3048cacd51234ed6",
    corpus=sample_corpus,
)

__all__ = [
    "ASSETS",
    "MOVES",
    "TASK",
    "TREASURE",
    "Walk",
    "default_prompts",
    "evaluate",
    "follow",
    "gold_utilities",
    "read_prompt",
    "sample_corpus",
    "sample_walk",
    "shaped_reward",
    "treasure_reward",
]
