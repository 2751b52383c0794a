"""Every bad input a demanding user tried: a named error of the right type, raised before anything changes.

Each case checks the exception type, that the message names the argument (or the file) and the value,
and, where an env already exists, that its next episode is the one an env that never saw the call plays.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from textenv import RewardModelError, toy
from textenv.config import EnvConfig


def _episode(env, seed=None, actions=(10, 20, 30, 1)):
    """Observations, rewards and infos of one episode (vector envs: every slot steps the same token)."""
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    vector = isinstance(env, gym.vector.VectorEnv)
    for action in actions:
        a = np.full(env.num_envs, action) if vector else action
        step = env.step(a)
        out.append((step[0], step[1], step[2], step[4]))
    return out


def _assert_same(a, b):
    """Equal, element by element (object arrays of per-token arrays included)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple) or (isinstance(a, np.ndarray) and a.dtype == object):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        np.testing.assert_equal(a, b)


# ----------------------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize(
    "overrides, error, names",
    [
        ({"kl_coef": math.nan}, ValueError, "kl_coef must be finite, got nan"),
        ({"kl_coef": math.inf}, ValueError, "kl_coef must be finite, got inf"),
        ({"kl_coef": -0.1}, ValueError, "kl_coef must be >= 0"),
        ({"kl_coef": "0.1"}, TypeError, "kl_coef must be a number, got str '0.1'"),
        ({"kl_target": math.nan}, ValueError, "kl_target must be finite, got nan"),
        ({"kl_target": 6, "kl_horizon": math.nan}, ValueError, "kl_horizon must be finite, got nan"),
        ({"kl_target": 6, "kl_horizon": None}, TypeError, "kl_horizon must be a number"),
        ({"temperature": math.inf}, ValueError, "temperature must be finite, got inf"),
        ({"temperature": True}, TypeError, "temperature must be a number, got bool"),
        ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an integer or None, got float 2.5"),
        ({"max_new_tokens": "8"}, TypeError, "max_new_tokens must be an integer or None, got str '8'"),
        ({"max_prompt_tokens": 0}, ValueError, "max_prompt_tokens must be >= 1, got 0"),
        ({"prompts": 123}, TypeError, "prompts must be a list of strings or a callable .* got int 123"),
        ({"prompts": "the food"}, TypeError, "prompts must be .* not a single string"),
        ({"prompts": ["ok", 5]}, TypeError, r"prompts\[1\] must be a string, got int 5"),
        ({"truncate_prompts": "yes"}, TypeError, "truncate_prompts must be True or False"),
        ({"kl_estimator": "k9"}, ValueError, "kl_estimator must be one of 'k1', 'k2', 'k3'; got 'k9'"),
        ({"task": 3}, TypeError, "task must be a task name"),
        ({"kl_cof": 0.1}, TypeError, "no setting 'kl_cof'; its settings are: .*kl_coef"),
    ],
)
def test_bad_constructor_arguments_are_named_before_any_model_loads(make_env, overrides, error, names):
    with pytest.raises(error, match=names):
        make_env(**overrides)
    with pytest.raises(error, match=names):
        EnvConfig.from_kwargs(**overrides)  # the same check, without gymnasium in between


def test_cuda_without_cuda_is_a_value_error_naming_the_device(make_env):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        make_env(device="cuda")
    with pytest.raises(ValueError, match="device='tpu9' is not a torch device"):
        make_env(device="tpu9")


@pytest.mark.parametrize(
    "num_envs, error, names",
    [
        (2.0, TypeError, "num_envs must be an integer, got float 2.0"),
        (0, ValueError, "num_envs must be >= 1"),
    ],
)
def test_make_vec_num_envs_is_checked(make_vec, num_envs, error, names):
    with pytest.raises(error, match=names):
        make_vec(num_envs)


def test_an_env_config_makes_the_same_env_as_the_keywords(env_kwargs):
    config = EnvConfig(**env_kwargs, kl_coef=0.1)
    by_config = gym.make("TextRLHF-v0", config=config)
    by_keywords = gym.make("TextRLHF-v0", **env_kwargs, kl_coef=0.1)
    assert by_config.unwrapped.config == by_keywords.unwrapped.config
    _assert_same(_episode(by_config, seed=3), _episode(by_keywords, seed=3))
    vec = gym.make_vec("TextRLHF-v0", num_envs=2, vectorization_mode="vector_entry_point", config=config)
    assert vec.unwrapped.config.kl_coef == 0.1 and vec.unwrapped.constants.num_envs == 2


# ----------------------------------------------------------------------------- beta set by hand
@pytest.mark.parametrize(
    "value, error", [(math.nan, ValueError), (math.inf, ValueError), (-1.0, ValueError), ("0.1", TypeError)]
)
def test_setting_kl_coef_to_a_bad_value_changes_nothing(make_env, value, error):
    env, clean = make_env(), make_env()
    with pytest.raises(error, match="kl_coef"):
        env.unwrapped.kl_coef = value
    assert env.unwrapped.kl_coef == 0.2
    _assert_same(_episode(env, seed=4), _episode(clean, seed=4))


# ----------------------------------------------------------------------------- reset
@pytest.mark.parametrize(
    "seed, options, error, names",
    [
        (-1, None, ValueError, "seed must be >= 0, got -1"),
        (1.5, None, TypeError, "seed must be an integer or None, got float 1.5"),
        (None, {"prompt": 5}, TypeError, r"options\['prompt'\] must be a string, got int 5"),
        (None, {"prompt": "the \ud800"}, ValueError, r"options\['prompt'\] .* not valid Unicode"),
        (None, {"promt": "the food"}, ValueError, r"unknown key\(s\) 'promt'"),
        (None, "the food", TypeError, "options must be a dict or None"),
    ],
)
def test_single_env_bad_reset_changes_nothing(make_env, seed, options, error, names):
    env, clean = make_env(), make_env()
    first, first_clean = _episode(env, seed=7), _episode(clean, seed=7)
    _assert_same(first, first_clean)
    with pytest.raises(error, match=names):
        env.reset(seed=seed, options=options)
    _assert_same(_episode(env), _episode(clean))  # the generators were not touched


def test_single_env_failing_prompt_callable_leaves_the_generator_as_it_was(make_env):
    calls = {"n": 0}

    def prompts(rng):
        calls["n"] += 1
        word = ["the food", "the room"][int(rng.integers(2))]
        if calls["n"] == 2:
            raise RuntimeError("prompt service down")
        return word

    env, clean = (
        make_env(prompts=prompts),
        make_env(prompts=lambda rng: ["the food", "the room"][rng.integers(2)]),
    )
    _assert_same(_episode(env, seed=1), _episode(clean, seed=1))
    with pytest.raises(RuntimeError, match="prompt service down"):
        env.reset(seed=99)  # reseeding would have happened before the draw
    _assert_same(_episode(env), _episode(clean))


@pytest.mark.parametrize(
    "seed, options, error, names",
    [
        ([10, -1, 12, 13], None, ValueError, r"seed\[1\] must be >= 0, got -1"),
        ([10, 11, 12], None, ValueError, "seed has 3 entries for 4 sub-environments"),
        ([10, 11.5, 12, 13], None, TypeError, r"seed\[1\] must be an integer or None, got float 11.5"),
        (1.5, None, TypeError, "seed must be an integer or None, got float 1.5"),
        (
            None,
            {"prompts": "abcd"},
            TypeError,
            r"options\['prompts'\] must be a list of strings, not a single",
        ),
        (None, {"prompts": 5}, TypeError, r"options\['prompts'\] must be a list of strings, got int 5"),
        (None, {"prompts": ["the food"] * 3}, ValueError, r"options\['prompts'\] has 3 prompts for 4"),
        (
            None,
            {"prompts": ["the food"] * 3 + [""]},
            ValueError,
            r"options\['prompts'\]\[3\] '' has 0 tokens",
        ),
        (None, {"group_size": 2.0}, TypeError, r"options\['group_size'\] must be an integer, got float"),
        (None, {"group_size": 3}, ValueError, r"options\['group_size'\] must divide num_envs=4, got 3"),
        (None, {"reset_mask": [1, 0, 0, 0]}, ValueError, r"options\['reset_mask'\] must be a bool array"),
        (None, {"seed": 3}, ValueError, r"unknown key\(s\) 'seed'"),
    ],
)
def test_vector_env_bad_reset_changes_nothing(make_vec, seed, options, error, names):
    vec, clean = make_vec(4), make_vec(4)
    _assert_same(_episode(vec, seed=20), _episode(clean, seed=20))
    with pytest.raises(error, match=names):
        vec.reset(seed=seed, options=options)
    # slot 0 was not reseeded by the valid entry before the bad one: the next episodes are the same
    _assert_same(_episode(vec), _episode(clean))


# ----------------------------------------------------------------------------- the reward model's output
class Returns:
    """A reward model that returns whatever the test sets, once switched on."""

    def __init__(self):
        self.value = None

    def score(self, prompts, responses):
        return toy.lexicon_reward(prompts, responses) if self.value is None else self.value


@pytest.mark.parametrize(
    "value, names",
    [
        (["1.5"], "score 0 is str '1.5', not a number"),
        ([10**400], r"returned inf \(not finite\)"),
        (torch.zeros(1, device="meta"), "meta device"),
        ("1.5", "a str is not a sequence of scores"),
        ([None], "score 0 is NoneType"),
        ([1.0, 2.0], r"returned 2 score\(s\) for 1 response"),
    ],
)
def test_bad_reward_model_output_is_a_reward_model_error_and_changes_nothing(make_env, value, names):
    reward = Returns()
    env, clean = make_env(reward_model=reward), make_env()
    env.reset(seed=2)
    clean.reset(seed=2)
    for action in (10, 20, 30):
        _assert_same(env.step(action), clean.step(action))
    reward.value = value
    with pytest.raises(RewardModelError, match=names) as caught:
        env.step(1)  # EOS: the episode ends and the reward model is called
    assert "prompt '" in str(caught.value)  # which episode it was
    reward.value = None
    _assert_same(env.step(1), clean.step(1))
    _assert_same(_episode(env), _episode(clean))


def test_numbers_of_any_kind_are_scores(make_env):
    for value in ([np.float32(0.5)], [True], np.array([0.5]), [torch.tensor(0.5)], torch.tensor([0.5])):
        reward = Returns()
        reward.value = value
        env = make_env(reward_model=reward)
        env.reset(seed=0)
        *_, info = env.step(1)
        assert info["score"] == float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


# ----------------------------------------------------------------------------- the observation feeds the LM
@pytest.mark.parametrize("kl_placement", ["terminal", "per_token"])
def test_the_observation_feeds_the_policy_directly(make_env, kl_placement):
    """``policy(**obs)`` gives the log-probs the env itself charges (left padding and all)."""
    env = make_env(kl_placement=kl_placement, temperature=0.7)
    policy, P = env.unwrapped.policy, env.unwrapped.constants.prompt_width
    obs, _ = env.reset(options={"prompt": "the food"})  # 2 tokens: 4 columns of left padding
    assert obs["attention_mask"][:P].tolist() == [0, 0, 0, 0, 1, 1]
    mine = []
    for t, action in enumerate((10, 20, 30, 1)):
        with torch.no_grad():
            logits = policy(**{k: torch.as_tensor(v)[None] for k, v in obs.items()}).logits
        mine.append(float((logits[0, P + t - 1] / 0.7).log_softmax(-1)[action]))
        obs, _, terminated, _, info = env.step(action)
    assert terminated
    np.testing.assert_allclose(mine, info["logprobs"], rtol=1e-5, atol=1e-5)
    # without position_ids the padding shifts the prompt and the distribution is another one
    with torch.no_grad():
        shifted = policy(input_ids=torch.as_tensor(obs["input_ids"])[None]).logits
    assert not np.allclose(float((shifted[0, P - 1] / 0.7).log_softmax(-1)[10]), mine[0], atol=1e-3)


# ----------------------------------------------------------------------------- agent settings
@pytest.mark.parametrize(
    "agent, setting, error, names",
    [
        ("PPO", {"learning_rate": math.nan}, ValueError, "learning_rate must be finite, got nan"),
        ("PPO", {"learning_rate": 0.0}, ValueError, "learning_rate must be > 0.0"),
        ("PPO", {"learning_rate": "1e-4"}, TypeError, "learning_rate must be a number, got str"),
        ("PPO", {"num_epochs": 2.5}, TypeError, "num_epochs must be an integer, got float 2.5"),
        ("PPO", {"gamma": 1.5}, ValueError, r"gamma must be in \[0, 1\], got 1.5"),
        ("PPO", {"target_kl": math.inf}, ValueError, "target_kl must be finite"),
        ("PPO", {"whiten_advantages": "yes"}, TypeError, "whiten_advantages must be True or False"),
        ("REINFORCE", {"group_size": 0}, ValueError, "group_size must be >= 1, got 0"),
        ("EpsilonGreedyPPO", {"epsilon": math.nan}, ValueError, "epsilon must be finite"),
    ],
)
def test_bad_agent_settings_are_named(make_agent_env, agent, setting, error, names):
    import agents

    env = make_agent_env()
    before = {k: v.clone() for k, v in env.unwrapped.policy.state_dict().items()}
    with pytest.raises(error, match=names):
        getattr(agents, agent)(env, seed=0, **setting)
    assert all(torch.equal(v, before[k]) for k, v in env.unwrapped.policy.state_dict().items())
