"""textenv: RLHF on language models as a standard Gymnasium problem.

``import textenv`` registers ``TextRLHF-v0`` and stays light: torch and transformers are imported only
when an environment (or one of the classes below) is first used, so reaching ``gymnasium.make`` is fast.

    >>> import gymnasium as gym
    >>> import textenv
    >>> gym.register_envs(textenv)  # keeps linters from flagging the import as unused
    >>> env = gym.make("TextRLHF-v0", policy=..., tokenizer=..., reward_model=..., prompts=[...])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register, registry

from textenv.errors import CheckpointError, RewardModelError

__version__ = "0.1.0"

ENV_ID = "TextRLHF-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="textenv.env:TextRLHFEnv",
        vector_entry_point="textenv.vector_env:TextRLHFVectorEnv",
    )

# Public names that need torch: resolved on first attribute access (PEP 562), never at import.
_LAZY = {
    "TextRLHFEnv": "textenv.env",
    "TextRLHFVectorEnv": "textenv.vector_env",
    "RLHFEngine": "textenv.engine",
    "EnvConfig": "textenv.config",
    "EnvConstants": "textenv.config",
    "AdaptiveKLController": "textenv.kl",
    "KL_ESTIMATORS": "textenv.kl",
    "RewardModel": "textenv.rewards",
    "CallableReward": "textenv.rewards",
    "ClassifierReward": "textenv.rewards",
    "PipelineReward": "textenv.rewards",
    "as_reward_model": "textenv.rewards",
}

if TYPE_CHECKING:
    from textenv.config import EnvConfig, EnvConstants
    from textenv.engine import RLHFEngine
    from textenv.env import TextRLHFEnv
    from textenv.kl import KL_ESTIMATORS, AdaptiveKLController
    from textenv.rewards import (
        CallableReward,
        ClassifierReward,
        PipelineReward,
        RewardModel,
        as_reward_model,
    )
    from textenv.vector_env import TextRLHFVectorEnv


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'textenv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ENV_ID",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "CallableReward",
    "CheckpointError",
    "ClassifierReward",
    "EnvConfig",
    "EnvConstants",
    "PipelineReward",
    "RLHFEngine",
    "RewardModel",
    "RewardModelError",
    "TextRLHFEnv",
    "TextRLHFVectorEnv",
    "__version__",
    "as_reward_model",
]
