"""Shared fixtures: tiny models built in the test, no network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be downloaded
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv import toy


@pytest.fixture(scope="session")
def tokenizer():
    return toy.toy_tokenizer()


@pytest.fixture(scope="session")
def reference(tokenizer):
    return toy.toy_causal_lm(tokenizer, seed=0, initializer_range=0.5)


@pytest.fixture
def policy(tokenizer):
    """A policy that differs from the reference, so that the KL is not zero."""
    return toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5)


@pytest.fixture
def env_kwargs(policy, reference, tokenizer) -> dict[str, Any]:
    return dict(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        reward_model=toy.lexicon_reward,
        prompts=toy.PROMPTS,
        max_new_tokens=6,
        max_prompt_tokens=6,
    )


@pytest.fixture
def make_env(env_kwargs) -> Callable[..., gym.Env]:
    def make(**overrides: Any) -> gym.Env:
        return gym.make("TextRLHF-v0", **(env_kwargs | overrides))

    return make


@pytest.fixture
def make_vec(env_kwargs) -> Callable[..., gym.vector.VectorEnv]:
    def make(num_envs: int, **overrides: Any) -> gym.vector.VectorEnv:
        return gym.make_vec(
            "TextRLHF-v0",
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            **(env_kwargs | overrides),
        )

    return make


@pytest.fixture
def make_agent_env(env_kwargs, tokenizer):
    """A fresh vector env with its own policy (training changes the policy in place), adaptive beta."""

    def make(num_envs: int = 8, **overrides: Any) -> gym.vector.VectorEnv:
        fresh = toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5)
        kwargs = env_kwargs | {"policy": fresh, "kl_coef": 0.2, "kl_target": 6.0, "kl_horizon": 100}
        return gym.make_vec(
            "TextRLHF-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **(kwargs | overrides)
        )

    return make
