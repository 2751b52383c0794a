"""Same seed, same actions: same everything; the vector env equals N single envs, autoreset included."""

from __future__ import annotations

import numpy as np
import pytest


def _assert_info_equal(a: dict, b: dict, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray | float):
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=2 * rtol, err_msg=key)
        else:
            assert a[key] == b[key], key


def _random_actions(env, tokenizer, seed: int, n: int, shape=()) -> np.ndarray:
    """Random tokens with EOS often enough that episodes end at different lengths."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, env.action_space.n if not shape else env.single_action_space.n, (n, *shape))
    actions[rng.random((n, *shape)) < 0.2] = tokenizer.eos_token_id
    return actions


@pytest.mark.parametrize("kl_placement", ["terminal", "per_token"])
def test_two_envs_same_seed_same_actions_identical(make_env, tokenizer, kl_placement):
    envs = [make_env(kl_placement=kl_placement) for _ in range(2)]
    results = []
    for env in envs:
        obs, info = env.reset(seed=123)
        trace = [(obs, info)]
        for action in _random_actions(env, tokenizer, seed=0, n=40):
            obs, reward, terminated, truncated, info = env.step(action)
            trace.append((obs, reward, terminated, truncated, info))
            if terminated:
                trace.append(env.reset())
        results.append(trace)
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results, strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, dict) and "input_ids" in x:
                assert all(np.array_equal(x[k], y[k]) for k in x)
            elif isinstance(x, dict):
                _assert_info_equal(x, y)
            else:
                assert x == y


@pytest.mark.parametrize("kl_placement", ["terminal", "per_token"])
@pytest.mark.parametrize("with_policy", [True, False])
def test_vector_env_equals_n_single_envs(make_env, make_vec, tokenizer, kl_placement, with_policy):
    n, seed, steps = 4, 7, 30
    overrides = {"kl_placement": kl_placement} | ({} if with_policy else {"policy": None})
    vec = make_vec(n, **overrides)
    singles = [make_env(**overrides) for _ in range(n)]
    actions = _random_actions(vec, tokenizer, seed=1, n=steps, shape=(n,))

    obs, infos = vec.reset(seed=seed)
    single_out = [env.reset(seed=seed + i) for i, env in enumerate(singles)]
    needs_reset = [False] * n
    episodes_ended = 0
    for t in range(steps):
        for i, (s_obs, s_info) in enumerate(single_out):
            for key in ("input_ids", "attention_mask"):
                assert np.array_equal(obs[key][i], s_obs[key]), (t, i, key)
            expected_keys = {k for k in infos if not k.startswith("_") and infos["_" + k][i]}
            assert expected_keys == set(s_info), (t, i)
            _assert_info_equal({k: infos[k][i] for k in expected_keys}, s_info, rtol=1e-5)
        obs, rewards, terminated, truncated, infos = vec.step(actions[t])
        assert not truncated.any()
        single_out = []
        for i, env in enumerate(singles):
            if needs_reset[i]:  # NEXT_STEP autoreset: this step resets, action ignored
                s_obs, s_info = env.reset()
                s_reward, s_term = 0.0, False
            else:
                s_obs, s_reward, s_term, _, s_info = env.step(actions[t, i])
            np.testing.assert_allclose(rewards[i], s_reward, rtol=1e-5, atol=2e-5, err_msg=f"{t},{i}")
            assert terminated[i] == s_term
            needs_reset[i] = s_term
            episodes_ended += s_term
            single_out.append((s_obs, s_info))
    assert episodes_ended >= 2 * n  # autoreset was exercised


def test_vector_env_reset_options(make_vec, tokenizer):
    vec = make_vec(3)
    _, info = vec.reset(seed=0, options={"prompts": ["the food", "the room was", "the staff"]})
    assert info["prompt"].tolist() == ["the food", "the room was", "the staff"]
    vec.step(np.full(3, tokenizer(" good")["input_ids"][0]))
    _, info = vec.reset(options={"prompt": "overall it was", "reset_mask": np.array([False, True, False])})
    assert info["_prompt"].tolist() == [False, True, False]
    assert vec.unwrapped.engine.response_length.tolist() == [1, 0, 1]
