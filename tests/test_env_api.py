"""The env as a Gymnasium (and SB3) environment: checkers, spaces, observation layout, rendering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env


@pytest.mark.parametrize("kl_placement", ["terminal", "per_token"])
@pytest.mark.parametrize("with_policy", [True, False])
def test_env_checkers_pass_with_warnings_as_errors(make_env, kl_placement, with_policy):
    overrides = {"kl_placement": kl_placement, "render_mode": "ansi"}
    if not with_policy:
        overrides["policy"] = None
    env = make_env(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)


def test_spaces_and_observation_layout(make_env, tokenizer):
    env = make_env(max_prompt_tokens=6, max_new_tokens=4)
    V = len(tokenizer)
    assert env.action_space.n == V
    assert env.observation_space["input_ids"].shape == (10,)
    assert env.observation_space["input_ids"].dtype == np.int64
    obs, info = env.reset(options={"prompt": "the food was"})
    prompt_ids = tokenizer("the food was")["input_ids"]
    n = len(prompt_ids)
    # prompt left-padded into the first max_prompt_tokens columns, response columns empty
    assert obs["input_ids"][6 - n : 6].tolist() == prompt_ids
    assert obs["attention_mask"].tolist() == [0] * (6 - n) + [1] * n + [0] * 4
    assert info == {"prompt": "the food was", "prompt_truncated": False}
    good = tokenizer(" good")["input_ids"][0]
    obs, reward, terminated, truncated, info = env.step(good)
    assert obs["input_ids"][6] == good and obs["attention_mask"][6] == 1
    assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    assert obs in env.observation_space


def test_episode_ends_at_eos_or_max_new_tokens(make_env, tokenizer):
    env = make_env(max_new_tokens=4)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(tokenizer.eos_token_id)
    assert terminated and not truncated
    assert info["logprobs"].shape == (1,) and info["response"] == ""
    env.reset(seed=0)
    word = tokenizer(" good")["input_ids"][0]
    for t in range(4):
        _, _, terminated, truncated, info = env.step(word)
        assert terminated == (t == 3) and not truncated
    assert info["response"] == " good good good good"
    assert info["logprobs"].shape == info["ref_logprobs"].shape == (4,)


def test_render_ansi_returns_the_text_so_far(make_env, tokenizer):
    env = make_env(render_mode="ansi")
    env.reset(options={"prompt": "the room was"})
    assert env.render() == "the room was"
    env.step(tokenizer(" clean")["input_ids"][0])
    assert env.render() == "the room was clean"


def test_models_and_beta_are_reachable_on_unwrapped(make_env, policy, reference, tokenizer):
    env = make_env(kl_coef=0.3)
    assert env.unwrapped.policy is policy  # shared with the agent, never copied
    assert env.unwrapped.reference is reference
    assert env.unwrapped.tokenizer is tokenizer
    assert env.unwrapped.kl_coef == 0.3
    env.unwrapped.kl_coef = 0.5
    env.reset(seed=0)
    *_, info = _play(env, [tokenizer.eos_token_id])
    assert info["kl_coef"] == 0.5


def test_reference_defaults_to_a_frozen_copy_of_the_policy(make_env, policy):
    env = make_env(reference=None)
    reference = env.unwrapped.reference
    assert reference is not policy
    assert all(not p.requires_grad for p in reference.parameters())
    for (name, p), q in zip(policy.named_parameters(), reference.parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr(), name
        assert np.array_equal(p.detach().numpy(), q.numpy()), name


def test_env_leaves_the_policy_mode_and_grads_alone(make_env, policy, tokenizer):
    policy.train()
    env = make_env(kl_placement="per_token")
    env.reset(seed=0)
    _play(env, [tokenizer.eos_token_id])
    assert policy.training
    assert all(p.grad is None for p in policy.parameters())


def _play(env, actions):
    for action in actions:
        out = env.step(action)
    return out
