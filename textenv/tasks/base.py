"""What a task is: shipped assets checked against a manifest, env defaults, a gold scorer and a budget;
and the simulated labellers' choice.

This module stays light (no torch): the registry imports it when ``textenv`` is imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textenv.atomic import sha256 as file_sha256

#: ``(prompt, response) -> float``: one response's utility (gold's, or simulated labellers').
Utility = Callable[[str, str], float]
#: ``(prompts, responses) -> one gold utility per response``.
GoldFn = Callable[[Sequence[str], Sequence[str]], list[float]]
#: ``(prompts, responses) -> {"gold": mean utility, "success_rate": share, ...the task's own columns}``.
EvaluateFn = Callable[[Sequence[str], Sequence[str]], dict[str, float]]

#: The KL (nats per response) beyond which no task counts a policy as solving it: far from the reference.
KL_BAR = 10.0

POLICY_DIR = "policy"
REWARD_MODEL_DIR = "reward_model"
PROMPTS_FILE = "prompts.json"
MANIFEST = "manifest.json"


def prefer(
    rng: np.random.Generator, prompt: str, first: str, second: str, utility: Utility, temperature: float
) -> tuple[str, str]:
    """A simulated labeller's choice between two responses, ``(chosen, rejected)``: ``first`` wins with the
    Bradley-Terry probability ``σ((u_first - u_second) / temperature)`` of the labeller's utilities ``u``.
    Two responses of nearly equal utility are a coin flip (the labelling noise); a clearly better one
    wins almost always."""
    margin = utility(prompt, first) - utility(prompt, second)
    p_first = 1.0 / (1.0 + np.exp(-margin / temperature))
    return (first, second) if rng.random() < p_first else (second, first)


class AssetError(RuntimeError):
    """A task's shipped files are missing or do not match their manifest."""


def load_manifest(assets: Path, rebuild: str = "the task's build command") -> dict[str, Any]:
    """The manifest of an asset folder; ``rebuild`` is the command the error message suggests."""
    path = Path(assets) / MANIFEST
    if not path.is_file():
        raise AssetError(
            f"no manifest at {path}: the task's assets are missing; rebuild them with `{rebuild}`"
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))


def verify_assets(
    assets: Path, rebuild: str = "the task's build command", manifest_sha256: str | None = None
) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; returns the manifest.

    ``manifest_sha256`` pins the manifest itself: the hash a release shipped, written in the task's source
    (:attr:`Task.manifest_sha256`), which no build writes. A rebuild into the shipped folder rewrites the
    files and their manifest together, so only the pin can tell that they are no longer the shipped ones.

    Raises:
        AssetError: naming the first missing or changed file, or a manifest that is not the pinned one.
    """
    manifest = load_manifest(assets, rebuild)
    if manifest_sha256:
        digest = file_sha256(Path(assets) / MANIFEST)
        if digest != manifest_sha256:
            raise AssetError(
                f"{Path(assets) / MANIFEST} is not the manifest this version of textenv shipped (sha256 "
                f"{digest[:12]}... != pinned {manifest_sha256[:12]}...): the assets were rebuilt or changed "
                "in place. Reinstall the package (or `git checkout` the assets folder); to ship a rebuild on "
                f"purpose, set the task's manifest_sha256 to {digest}"
            )
    for name, entry in manifest["files"].items():
        path = Path(assets) / name
        if not path.is_file():
            raise AssetError(f"{name} is listed in the manifest but missing from {assets}; run `{rebuild}`")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise AssetError(
                f"{name} does not match the manifest (sha256 {digest[:12]}... != "
                f"{entry['sha256'][:12]}...); rebuild with `{rebuild}` or reinstall the package"
            )
    return manifest


@dataclass(frozen=True)
class Task:
    """One task of the suite: what ``gymnasium.make("TextRLHF-v0", task=name)`` plays, and how to judge it.

    Attributes:
        name: the registry name.
        summary: one line on what the policy is asked to write.
        stresses: the one thing an RLHF algorithm must do well here.
        assets: folder of the shipped files (``policy/``, ``prompts.json``, ``manifest.json``, and
            ``reward_model/`` when the reward is learned).
        gold: per-response gold utility, ``(prompts, responses) -> list[float]``; higher is better.
        evaluate: batch summary, ``(prompts, responses) -> dict`` with ``gold`` (mean utility),
            ``success_rate`` and the task's own columns.
        gold_range: the lowest and highest gold utility; the highest is the best reachable gold.
        success: what counts as a success (the definition behind ``success_rate``).
        reward: ``"reward_model"`` (the learned proxy in ``assets/reward_model``) or a function
            ``(prompts, responses) -> scores`` that the env calls (the gold itself, for verifiable tasks).
        env_defaults: constructor defaults of the env (lengths; anything else a task needs).
        budget: response tokens per run in the suite benchmark (``textenv-bench``).
        bar: what an evaluation must reach for the task to count as solved: ``(key, ">=" or "<=", value)``
            on the keys of an evaluation summary (``success_rate``, ``kl``, the task's columns). The
            benchmark reports the response tokens and CPU seconds each run needed to reach it.
        columns: the task's own ``evaluate`` keys worth a table column: ``(key, header, format)``.
        build_module: the module whose ``python -m`` rebuilds the assets.
        manifest_sha256: sha256 of the shipped ``manifest.json``, kept in the source so that a rebuild
            cannot rewrite it (``""``: not pinned, e.g. a task of your own still being built).
        corpus: the pretraining corpus' sampler, ``(n, seed) -> n texts`` (prompt and response together),
            the distribution the shipped policy was pretrained on; PPO-ptx's default pretraining text
            (:meth:`pretraining_texts`). ``None`` for a task without one.
    """

    name: str
    summary: str
    stresses: str
    assets: Path
    gold: GoldFn
    evaluate: EvaluateFn
    gold_range: tuple[float, float]
    success: str
    reward: str | Callable[[Sequence[str], Sequence[str]], Sequence[float]]
    env_defaults: Mapping[str, Any] = field(default_factory=dict)
    budget: int = 100_000
    bar: tuple[tuple[str, str, float], ...] = (("success_rate", ">=", 0.9), ("kl", "<=", KL_BAR))
    columns: tuple[tuple[str, str, str], ...] = ()
    build_module: str = ""
    manifest_sha256: str = ""
    corpus: Callable[[int, int], list[str]] | None = None

    @property
    def rebuild_command(self) -> str:
        return f"python -m {self.build_module or f'textenv.tasks.{self.name}.build'} --in-place"

    @property
    def best_gold(self) -> float:
        """The highest gold utility a response can have."""
        return self.gold_range[1]

    def meets_bar(self, summary: Mapping[str, float]) -> bool:
        """Whether an evaluation summary (:func:`agents.evaluation.evaluate`'s) reaches :attr:`bar`."""
        for key, op, value in self.bar:
            if key not in summary:
                raise KeyError(f"the bar of task {self.name!r} needs {key!r}, which the summary lacks")
            if not (summary[key] >= value if op == ">=" else summary[key] <= value):
                return False
        return True

    @property
    def bar_text(self) -> str:
        """The bar in words, e.g. ``success_rate >= 0.9 and kl <= 10``."""
        return " and ".join(f"{key} {op} {value:g}" for key, op, value in self.bar)

    def manifest(self) -> dict[str, Any]:
        """The shipped ``manifest.json``: build settings, library versions, quality figures, file hashes."""
        return load_manifest(self.assets, self.rebuild_command)

    def verify_assets(self) -> dict[str, Any]:
        """Check the shipped files against the manifest (sha256) and the manifest against the pin in the
        source (:attr:`manifest_sha256`); returns it. Raises :class:`AssetError`."""
        return verify_assets(self.assets, self.rebuild_command, self.manifest_sha256 or None)

    def prompts(self) -> list[str]:
        """The task's prompts as shipped."""
        path = self.assets / PROMPTS_FILE
        if not path.is_file():
            self.manifest()  # raises AssetError with the rebuild command
            raise AssetError(f"the prompts are missing from {self.assets}; run `{self.rebuild_command}`")
        return list(json.loads(path.read_text(encoding="utf-8")))

    def pretraining_texts(self, n: int, seed: int | None = None) -> list[str]:
        """``n`` texts of the task's pretraining corpus: with ``seed=None`` those of the build's own seed
        (the text the shipped policy was pretrained on, as PPO-ptx mixes it in); another seed gives fresh
        draws of the same distribution (held-out text for a perplexity).

        Raises:
            ValueError: the task has no corpus sampler.
        """
        if self.corpus is None:
            raise ValueError(f"task {self.name!r} has no pretraining corpus (Task.corpus is None)")
        if seed is None:
            seed = int(self.manifest().get("build", {}).get("seed", 0))
        return list(self.corpus(int(n), int(seed)))

    def env_kwargs(self) -> dict[str, Any]:
        """What the env is made with for this task: the shipped policy and its tokenizer, the reward (model
        folder or function), the prompts and :attr:`env_defaults`."""
        policy = self.assets / POLICY_DIR
        if not (policy / "config.json").is_file():
            self.manifest()
            raise AssetError(f"the policy is missing from {policy}; run `{self.rebuild_command}`")
        reward = self.assets / REWARD_MODEL_DIR if self.reward == "reward_model" else self.reward
        return {
            "policy": policy,
            "tokenizer": policy,
            "reward_model": reward,
            "prompts": self.prompts(),
            **self.env_defaults,
        }

    def __post_init__(self) -> None:
        for key, op, _ in self.bar:
            if op not in (">=", "<="):
                raise ValueError(f"task {self.name!r}: the bar's {key!r} needs '>=' or '<=', got {op!r}")

    def __repr__(self) -> str:
        return f"Task({self.name!r}: {self.summary})"
