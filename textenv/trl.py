"""A textenv task as trl's online trainers take it: a prompt dataset and a reward function.

trl's ``GRPOTrainer`` and ``RLOOTrainer`` have no environment: they take a model, a dataset with a
``"prompt"`` column and reward functions ``f(prompts, completions, **kwargs) -> list[float]``. This module
builds those from the same settings as ``gymnasium.make("TextRLHF-v0", ...)``, through the env itself, so
the reward is the env's reward model called exactly as the env calls it (the prompt text and the response
decoded without special tokens; trl decodes its completions the same way), and trl samples with the env's
response length and temperature::

    from trl import GRPOConfig, GRPOTrainer
    from textenv.trl import for_trl

    parts = for_trl(task="reviews")
    trainer = GRPOTrainer(
        model=parts.policy,
        processing_class=parts.tokenizer,
        reward_funcs=parts.reward,
        train_dataset=parts.dataset,
        args=GRPOConfig(output_dir="grpo-reviews", learning_rate=3e-4, **parts.trl_settings()),
    )
    trainer.train()

The KL: trl's trainers read ``beta`` (fixed; no adaptive controller). ``RLOOTrainer`` subtracts
``beta * sum_t (log pi - log pi_ref)`` from the reward, the env's own estimator and placement;
``GRPOTrainer`` adds ``beta`` times the per-token k3 estimator to the loss instead. Both build their
reference by loading the policy's checkpoint again (``policy.config._name_or_path``), which is the env's
reference when the env's reference is the policy's starting checkpoint (every task's default).

Needs ``datasets`` (a dependency of trl: ``pip install textenv[peers]``); this module imports no trl.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from textenv.rewards import RewardModel, compute_scores


class TrlReward:
    """A trl reward function that scores with a textenv reward model, as the env does.

    trl calls it with ``prompts``, ``completions`` (decoded without special tokens) and further keyword
    arguments (``completion_ids``, dataset columns, ...), which it ignores; it returns one float per
    completion. ``calls`` and ``completion_tokens`` count what it has scored (``completion_tokens`` from
    the ``completion_ids`` trl passes: the response tokens sampled, the EOS included, as the env counts
    its steps).
    """

    def __init__(self, reward_model: RewardModel, name: str = "textenv_reward"):
        self.reward_model = reward_model
        self.__name__ = name  # trl logs each reward function under its __name__
        self.calls = 0
        self.completion_tokens = 0

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
        if prompts and not isinstance(prompts[0], str):
            raise TypeError(
                "TrlReward scores plain-text prompts (a dataset with a string 'prompt' column); "
                f"got {type(prompts[0]).__name__}: conversational prompts are not what the env plays"
            )
        self.calls += 1
        ids = kwargs.get("completion_ids")
        if ids is not None:
            self.completion_tokens += sum(len(x) for x in ids)
        return [float(x) for x in compute_scores(self.reward_model, list(prompts), list(completions))]

    def __repr__(self) -> str:
        return f"TrlReward({self.reward_model!r})"


@dataclass
class TrlParts:
    """What a trl trainer needs to play a textenv task (see :func:`for_trl`).

    Attributes:
        env: the env these parts come from (its reference, reward model and settings).
        policy: the env's policy, the model trl trains (the same object: the env scores it as it learns).
        tokenizer: the env's tokenizer, for ``processing_class``.
        reward: the env's reward model as a trl reward function.
        dataset: a ``datasets.Dataset`` with one ``"prompt"`` row per prompt.
        max_new_tokens: the env's response length limit (trl's ``max_completion_length``).
        temperature: the env's sampling temperature.
        kl_coef: the env's (initial) KL coefficient beta.
    """

    env: gym.Env
    policy: Any
    tokenizer: Any
    reward: TrlReward
    dataset: Any
    max_new_tokens: int
    temperature: float
    kl_coef: float

    def trl_settings(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of ``GRPOConfig``/``RLOOConfig`` that make trl sample as the env does: the
        response length, the temperature, no top-k/top-p truncation, beta = the env's KL coefficient, and
        neither bf16 nor gradient checkpointing (trl turns both on by default; neither helps a small model
        on a CPU). ``overrides`` replace any of them."""
        return {
            "max_completion_length": self.max_new_tokens,
            "temperature": self.temperature,
            "top_k": 0,
            "top_p": 1.0,
            "beta": self.kl_coef,
            "bf16": False,
            "gradient_checkpointing": False,
        } | overrides


def prompt_dataset(prompts: Sequence[str]) -> Any:
    """A ``datasets.Dataset`` with a ``"prompt"`` column: what trl's online trainers train on."""
    try:
        from datasets import Dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("textenv.trl needs `datasets`: pip install 'textenv[peers]'") from exc
    if not prompts:
        raise ValueError("no prompts to make a dataset of")
    return Dataset.from_dict({"prompt": [str(p) for p in prompts]})


def for_trl(env: gym.Env | None = None, prompts: Sequence[str] | None = None, **env_kwargs: Any) -> TrlParts:
    """The parts of a trl trainer for a textenv env: ``for_trl(task="sorting")`` or ``for_trl(env)``.

    Args:
        env: an env already made (``gymnasium.make("TextRLHF-v0", ...)``); else one is made from
            ``env_kwargs`` (the same keywords: ``task``, ``policy``, ``reward_model``, ...).
        prompts: the training prompts (held-out ones left out, say); the env's fixed prompts by default.
            An env made here is made with them too.

    Raises:
        ValueError: the env draws prompts from a function (trl needs a fixed dataset), or its reference is
            not the policy's own checkpoint (trl would build a different one), or the policy was not
            loaded from a checkpoint (trl has nothing to build its reference from).
    """
    if env is None:
        if prompts is not None:
            env_kwargs["prompts"] = list(prompts)
        env = gym.make("TextRLHF-v0", **env_kwargs)
    elif env_kwargs:
        raise TypeError("pass either an env or the keywords to make one, not both")
    engine = env.unwrapped.engine  # type: ignore[attr-defined]
    config = engine.config
    if engine.policy is None:
        raise ValueError("this env was made with policy=None; trl needs the policy it trains")
    source = str(getattr(engine.policy.config, "_name_or_path", "") or "")
    reference = str(getattr(engine.reference.config, "_name_or_path", "") or "")
    if not source or reference != source:
        raise ValueError(
            "trl's GRPOTrainer and RLOOTrainer load their reference from the policy's own checkpoint "
            f"(policy.config._name_or_path: {source!r}); this env's reference comes from {reference!r}, so "
            "trl's KL would not be the env's. Make the env with policy= a checkpoint folder or hub name and "
            "no other reference"
        )
    if prompts is None:
        if callable(config.prompts) or config.prompts is None:
            raise ValueError("this env draws its prompts from a function; pass prompts= (a fixed list)")
        prompts = list(config.prompts)
    task = getattr(env.unwrapped, "task", None)
    return TrlParts(
        env=env,
        policy=engine.policy,
        tokenizer=engine.tokenizer,
        reward=TrlReward(engine.reward_model, name=f"textenv_{task}" if task else "textenv_reward"),
        dataset=prompt_dataset(prompts),
        max_new_tokens=int(engine.max_new_tokens),
        temperature=float(engine.temperature),
        kl_coef=float(engine.kl_coef),
    )
