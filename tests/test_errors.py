"""Bad input gets a clear error of a specific type and changes nothing: the next valid step is unaffected."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.error import InvalidAction, ResetNeeded

from textenv import RewardModelError, toy

GOOD_ACTIONS = [10, 20, 30, 1]  # 1 is <eos>: the episode ends on the 4th step


def _outcomes(env, actions):
    """(obs, reward, terminated, info) of each step, for comparison with an env that saw no bad input."""
    out = []
    for action in actions:
        obs, reward, terminated, _, info = env.step(action)
        out.append((obs["input_ids"].tolist(), reward, terminated, {k: v for k, v in info.items()}))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (ids_a, r_a, t_a, i_a), (ids_b, r_b, t_b, i_b) in zip(a, b, strict=True):
        assert ids_a == ids_b and r_a == r_b and t_a == t_b and i_a.keys() == i_b.keys()
        for key in i_a:
            assert np.array_equal(i_a[key], i_b[key]), key


@pytest.fixture
def clean_run(make_env):
    env = make_env()
    env.reset(seed=5)
    return _outcomes(env, GOOD_ACTIONS)


@pytest.mark.parametrize(
    "bad_action", [-1, 10_000, 2.0, 1.5, "3", None, True, np.array([1, 2]), np.float32(3)]
)
@pytest.mark.parametrize("unwrapped", [False, True])
def test_invalid_action(make_env, clean_run, bad_action, unwrapped):
    env = make_env()
    target = env.unwrapped if unwrapped else env
    target.reset(seed=5)
    first = _outcomes(target, GOOD_ACTIONS[:1])
    with pytest.raises(InvalidAction):
        target.step(bad_action)
    _same(first + _outcomes(target, GOOD_ACTIONS[1:]), clean_run)


def test_numpy_and_torch_integer_actions_are_accepted(make_env, clean_run):
    env = make_env()
    env.reset(seed=5)
    actions = [np.int64(10), np.array(20), np.array([30], dtype=np.int32), torch.tensor(1)]
    _same(_outcomes(env, actions), clean_run)


@pytest.mark.parametrize("unwrapped", [False, True])
def test_step_before_reset_and_after_the_end(make_env, clean_run, unwrapped):
    env = make_env()
    target = env.unwrapped if unwrapped else env
    with pytest.raises(ResetNeeded):
        target.step(10)
    target.reset(seed=5)
    _same(_outcomes(target, GOOD_ACTIONS), clean_run)
    with pytest.raises(ResetNeeded):
        target.step(10)
    target.reset(seed=5)
    _same(_outcomes(target, GOOD_ACTIONS), clean_run)


def test_vector_env_bad_actions_and_step_before_reset(make_vec):
    vec = make_vec(3)
    with pytest.raises(ResetNeeded):
        vec.step(np.zeros(3, dtype=np.int64))
    vec.reset(seed=0)
    for bad in [np.zeros(2, dtype=np.int64), np.zeros(3), np.array([0, -1, 0]), np.array([0, 0, 999])]:
        with pytest.raises(InvalidAction):
            vec.step(bad)
    assert vec.unwrapped.engine.response_length.tolist() == [0, 0, 0]
    obs, *_ = vec.step(np.array([10, 11, 12]))
    assert obs["input_ids"][:, 6].tolist() == [10, 11, 12]


@pytest.mark.parametrize("prompt", ["", "the food " * 10])
def test_empty_or_overlong_prompt(make_env, clean_run, prompt):
    with pytest.raises(
        ValueError, match="has 0 tokens" if not prompt else "has 21 tokens, more than max_prompt_tokens=6"
    ):
        make_env(prompts=["the food", prompt])
    env = make_env()
    env.reset(seed=5)
    first = _outcomes(env, GOOD_ACTIONS[:2])
    with pytest.raises(ValueError, match="tokens"):
        env.reset(options={"prompt": prompt})
    _same(first + _outcomes(env, GOOD_ACTIONS[2:]), clean_run)


def test_overlong_prompt_truncated_when_asked(make_env, tokenizer):
    env = make_env(truncate_prompts=True, max_prompt_tokens=3)
    obs, info = env.reset(options={"prompt": "the food was very good"})
    assert info == {"prompt": " was very good", "prompt_truncated": True}
    assert obs["input_ids"][:3].tolist() == tokenizer(" was very good")["input_ids"]
    *_, info = env.step(tokenizer.eos_token_id)
    assert info["prompt_truncated"] is True and info["prompt"] == " was very good"


def test_prompt_callable_result_is_checked(make_env):
    env = make_env(prompts=lambda rng: "")
    with pytest.raises(ValueError, match="0 tokens"):
        env.reset(seed=0)


class FlakyReward:
    """A reward model whose failure mode the test switches on and off."""

    def __init__(self):
        self.mode = "ok"

    def score(self, prompts, responses):
        scores = toy.lexicon_reward(prompts, responses)
        if self.mode == "raise":
            raise KeyError("lookup failed")
        if self.mode == "nan":
            scores[-1] = math.nan
        if self.mode == "inf":
            scores[0] = math.inf
        if self.mode == "short":
            scores = scores[:-1]
        return scores


@pytest.mark.parametrize("mode", ["raise", "nan", "inf", "short"])
@pytest.mark.parametrize("kl_placement", ["terminal", "per_token"])
def test_reward_model_failure(make_env, clean_run, mode, kl_placement):
    reward = FlakyReward()
    env = make_env(reward_model=reward, kl_placement=kl_placement)
    clean = make_env(kl_placement=kl_placement)
    clean.reset(seed=5)
    expected = _outcomes(clean, GOOD_ACTIONS)
    _, info = env.reset(seed=5)
    first = _outcomes(env, GOOD_ACTIONS[:3])
    reward.mode = mode
    with pytest.raises(RewardModelError, match=f"prompt {info['prompt']!r}"):
        env.step(GOOD_ACTIONS[3])  # the episode ends: the reward model is called and fails
    assert env.unwrapped.engine.observation(0)["input_ids"].tolist() == first[-1][0]  # nothing written
    reward.mode = "ok"
    _same(first + _outcomes(env, GOOD_ACTIONS[3:]), expected)
    assert env.unwrapped.kl_coef == clean.unwrapped.kl_coef


def test_vector_env_reward_failure_changes_nothing(make_vec, tokenizer):
    reward = FlakyReward()
    vec, clean = make_vec(3, reward_model=reward), make_vec(3)
    eos = tokenizer.eos_token_id
    steps = [np.array([eos, 10, eos]), np.array([10, eos, 11]), np.array([eos, 12, 13])]
    vec.reset(seed=0)
    clean.reset(seed=0)
    np.testing.assert_equal(vec.step(steps[0])[:4], clean.step(steps[0])[:4])
    reward.mode = "nan"
    before = vec.unwrapped.engine.observation(slice(None))
    with pytest.raises(RewardModelError, match="not finite"):
        vec.step(steps[1])  # slot 1 ends; slots 0 and 2 autoreset (their prompts must not be consumed)
    after = vec.unwrapped.engine.observation(slice(None))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    reward.mode = "ok"
    for action in steps[1:]:
        out, expected = vec.step(action), clean.step(action)
        np.testing.assert_equal(out[:4], expected[:4])
        assert out[4]["prompt"].tolist() == expected[4]["prompt"].tolist()


def test_policy_and_reference_vocabularies_must_match(make_env, tokenizer):
    other = toy.toy_causal_lm(toy.toy_tokenizer(words=["a", "b"]))
    with pytest.raises(ValueError, match="share one vocabulary"):
        make_env(reference=other)


def test_the_policy_object_cannot_be_its_own_reference(make_env, policy):
    with pytest.raises(ValueError, match="reference is the policy object itself"):
        make_env(policy=policy, reference=policy)
    assert all(p.requires_grad for p in policy.parameters())  # refused before anything was frozen


def test_tokenizer_without_pad_token_is_handled_and_left_unchanged(make_env):
    tokenizer = toy.toy_tokenizer(pad_token=False)
    assert tokenizer.pad_token is None
    env = make_env(tokenizer=tokenizer)
    obs, _ = env.reset(seed=0)
    assert tokenizer.pad_token is None  # the user's object is not changed
    padding = obs["input_ids"][obs["attention_mask"] == 0]
    assert (padding == tokenizer.eos_token_id).all()
    *_, terminated, _, info = env.step(tokenizer.eos_token_id)
    assert terminated and "score" in info


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"kl_estimator": "k4"}, "kl_estimator"),
        ({"kl_placement": "sometimes"}, "kl_placement"),
        ({"temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"kl_target": -1.0}, "kl_target"),
        ({"reward_model": None}, "reward_model"),
        ({"prompts": None}, "prompts"),
        ({"prompts": []}, "empty"),
        ({"render_mode": "human"}, "render_mode"),
        ({"policy": None, "reference": None}, "reference"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode")
def test_bad_arguments_are_named(make_env, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_env(**overrides)
