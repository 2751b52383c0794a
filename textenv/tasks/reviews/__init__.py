"""The embedded default task of ``TextRLHF-v0``: reviews in a small language made here.

``gymnasium.make("TextRLHF-v0")`` with no model arguments plays this task: the prompts are the openings
of product, restaurant and hotel reviews; the policy (and frozen reference) is a GPT-2 of about 0.5M
parameters pretrained on reviews drawn from the grammar; the reward model was trained from simulated
pairwise preferences. :func:`evaluate` is the gold scorer the reward model only approximates.

Importing this package stays light (no torch): the grammar and gold scorer are pure Python + numpy.
Rebuild the assets with ``python -m textenv.tasks.reviews.build``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from textenv.tasks import base
from textenv.tasks.base import MANIFEST, POLICY_DIR, PROMPTS_FILE, REWARD_MODEL_DIR, AssetError, Task
from textenv.tasks.reviews.gold import (
    GoldScore,
    distinct_n,
    evaluate,
    gold_reward,
    gold_score,
    gold_sentiment,
    gold_utilities,
    is_grammatical,
    summarize,
)
from textenv.tasks.reviews.grammar import default_prompts, parse, sample_corpus, sample_review

ASSETS = Path(__file__).resolve().parent / "assets"
REBUILD = "python -m textenv.tasks.reviews.build --in-place"

#: Environment settings of the default task (the constructors' defaults when no policy is given).
ENV_DEFAULTS: dict[str, Any] = {"max_new_tokens": 24, "max_prompt_tokens": 16}

TASK = Task(
    name="reviews",
    summary="write a review of a restaurant, hotel or product; a reward model learned from preferences "
    "scores it, gold is its sentiment",
    stresses="RLHF as usual: a learned proxy of a simple goal (the embedded default task)",
    assets=ASSETS,
    gold=gold_utilities,
    evaluate=evaluate,
    gold_range=(-1.0, 1.0),
    success="a grammatical review whose gold sentiment is > 0",
    reward="reward_model",
    env_defaults=ENV_DEFAULTS,
    budget=120_000,
    columns=(
        ("gold_sentiment", "gold sentiment", "{:+.3f}"),
        ("grammatical_rate", "grammatical", "{:.1%}"),
        ("distinct_2", "distinct-2", "{:.3f}"),
        ("mean_words", "words", "{:.1f}"),
    ),
    build_module="textenv.tasks.reviews.build",
    manifest_sha256="9dde8beab006690dbf1a88c5feb02375cdf0ce552ff452b36bfeae678a38127a",
    corpus=sample_corpus,
)


def load_manifest(assets: Path = ASSETS) -> dict[str, Any]:
    """The manifest of the default task's assets (or of a rebuild in ``assets``)."""
    return base.load_manifest(assets, REBUILD)


def verify_assets(assets: Path = ASSETS) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256 (and, for the shipped folder, the
    manifest against the hash pinned in :data:`TASK`); returns the manifest.

    Raises:
        AssetError: naming the first missing or changed file.
    """
    pinned = TASK.manifest_sha256 if Path(assets).resolve() == ASSETS else None
    return base.verify_assets(assets, REBUILD, pinned)


def load_prompts(assets: Path = ASSETS) -> list[str]:
    """The default task's prompts as shipped."""
    return _task_at(assets).prompts()


def env_kwargs(assets: Path = ASSETS) -> dict[str, Any]:
    """What ``TextRLHF-v0`` is made with when no policy is given: paths of the shipped models, the prompts
    and :data:`ENV_DEFAULTS`."""
    return _task_at(assets).env_kwargs()


def _task_at(assets: Path) -> Task:
    """This task with its assets in ``assets`` (the shipped folder, or a rebuild elsewhere)."""
    return dataclasses.replace(TASK, assets=Path(assets))


__all__ = [
    "ASSETS",
    "ENV_DEFAULTS",
    "MANIFEST",
    "POLICY_DIR",
    "PROMPTS_FILE",
    "REWARD_MODEL_DIR",
    "TASK",
    "AssetError",
    "GoldScore",
    "default_prompts",
    "distinct_n",
    "env_kwargs",
    "evaluate",
    "gold_reward",
    "gold_score",
    "gold_sentiment",
    "gold_utilities",
    "is_grammatical",
    "load_manifest",
    "load_prompts",
    "parse",
    "sample_corpus",
    "sample_review",
    "summarize",
    "verify_assets",
]
