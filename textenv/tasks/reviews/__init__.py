"""The embedded default task of ``TextRLHF-v0``: reviews in a small language made here.

``gymnasium.make("TextRLHF-v0")`` with no model arguments plays this task: the prompts are the openings
of product, restaurant and hotel reviews; the policy (and frozen reference) is a GPT-2 of about 0.5M
parameters pretrained on reviews drawn from the grammar; the reward model was trained from simulated
pairwise preferences. :func:`evaluate` is the gold scorer the reward model only approximates.

Importing this package stays light (no torch): the grammar and gold scorer are pure Python + numpy.
Rebuild the assets with ``python -m textenv.tasks.reviews.build``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from textenv.tasks.reviews.gold import (
    GoldScore,
    distinct_n,
    evaluate,
    gold_reward,
    gold_score,
    gold_sentiment,
    is_grammatical,
    summarize,
)
from textenv.tasks.reviews.grammar import default_prompts, parse, sample_corpus, sample_review

ASSETS = Path(__file__).resolve().parent / "assets"
POLICY_DIR = "policy"
REWARD_MODEL_DIR = "reward_model"
PROMPTS_FILE = "prompts.json"
MANIFEST = "manifest.json"

#: Environment settings of the default task (the constructors' defaults when no policy is given).
ENV_DEFAULTS: dict[str, Any] = {"max_new_tokens": 24, "max_prompt_tokens": 16}


class AssetError(RuntimeError):
    """The shipped files are missing or do not match their manifest."""


def load_manifest(assets: Path = ASSETS) -> dict[str, Any]:
    path = Path(assets) / MANIFEST
    if not path.is_file():
        raise AssetError(
            f"no manifest at {path}: the default task's assets are missing; rebuild them with "
            "`python -m textenv.tasks.reviews.build`"
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))


def verify_assets(assets: Path = ASSETS) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; returns the manifest.

    Raises:
        AssetError: naming the first missing or changed file.
    """
    manifest = load_manifest(assets)
    for name, entry in manifest["files"].items():
        path = Path(assets) / name
        if not path.is_file():
            raise AssetError(f"{name} is listed in the manifest but missing from {assets}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise AssetError(
                f"{name} does not match the manifest (sha256 {digest[:12]}... != "
                f"{entry['sha256'][:12]}...); rebuild or reinstall the package"
            )
    return manifest


def load_prompts(assets: Path = ASSETS) -> list[str]:
    """The default task's prompts as shipped."""
    return list(json.loads((Path(assets) / PROMPTS_FILE).read_text(encoding="utf-8")))


def env_kwargs(assets: Path = ASSETS) -> dict[str, Any]:
    """What ``TextRLHF-v0`` is made with when no policy is given: paths of the shipped models, the prompts
    and :data:`ENV_DEFAULTS`."""
    policy = Path(assets) / POLICY_DIR
    if not (policy / "config.json").is_file():
        load_manifest(assets)  # raises AssetError with the rebuild command
        raise AssetError(f"the policy is missing from {policy}; rebuild the assets")
    return {
        "policy": policy,
        "tokenizer": policy,
        "reward_model": Path(assets) / REWARD_MODEL_DIR,
        "prompts": load_prompts(assets),
        **ENV_DEFAULTS,
    }


__all__ = [
    "ASSETS",
    "ENV_DEFAULTS",
    "AssetError",
    "GoldScore",
    "default_prompts",
    "distinct_n",
    "env_kwargs",
    "evaluate",
    "gold_reward",
    "gold_score",
    "gold_sentiment",
    "is_grammatical",
    "load_manifest",
    "load_prompts",
    "parse",
    "sample_corpus",
    "sample_review",
    "summarize",
    "verify_assets",
]
