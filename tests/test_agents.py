"""The agents on tiny models: updates, determinism, exact resume, predict, saved policies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents import GRPO, PPO, REINFORCE, EpsilonGreedyPPO
from agents.base import Agent
from textenv import CheckpointError

AGENTS: dict[str, tuple[type[Agent], dict[str, Any]]] = {
    "ppo": (PPO, {}),
    "ppo-separate-critic": (PPO, {"critic": "separate"}),
    "grpo": (GRPO, {"group_size": 4, "minibatch_size": 3}),
    "grpo-kl-in-loss": (GRPO, {"group_size": 4, "minibatch_size": 4, "num_epochs": 2, "kl_in": "loss"}),
    "reinforce-loo": (REINFORCE, {}),
    "reinforce-moving-average": (REINFORCE, {"baseline": "moving_average"}),
    "reinforce-minibatches": (REINFORCE, {"minibatch_size": 2, "learning_rate": 1e-2}),
    "reinforce-lr-decay": (REINFORCE, {"learning_rate": 1e-2, "lr_final": 1e-3, "lr_decay_timesteps": 40}),
    "egreedy-uniform": (EpsilonGreedyPPO, {"epsilon": 0.2}),
    "egreedy-reference-top-k": (
        EpsilonGreedyPPO,
        {"epsilon": 0.2, "epsilon_final": 0.0, "exploration": "reference_top_k", "exploration_top_k": 3},
    ),
}
TIMING = ("charts/rollout_seconds", "charts/env_seconds", "charts/update_seconds", "charts/tokens_per_second")


def train(agent: Agent, iterations: int) -> Agent:
    return agent.learn(10**9, callback=lambda a, m: a.iterations < iterations)


def comparable(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.mark.parametrize("name", list(AGENTS))
def test_one_update_changes_every_trainable_parameter(name, make_agent_env):
    cls, config = AGENTS[name]
    agent = cls(make_agent_env(), seed=0, **config)
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters() if p.requires_grad}
    assert before, "the agent has nothing to train"
    rollout = agent.collect_rollout()
    metrics = agent.update(rollout)
    unchanged = [n for n, p in agent.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    if cls in (REINFORCE, GRPO):
        assert agent.model.value_head is None  # REINFORCE and GRPO learn no value function
    else:
        assert agent.model.value_head is not None and "loss/value" in metrics


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_rollout_matches_a_teacher_forced_pass(make_agent_env, critic):
    """The env's log-probs and the sampler's values agree with one teacher-forced pass of the model."""
    agent = train(PPO(make_agent_env(), seed=0, critic=critic), 2)  # a trained, nonzero value head
    rollout = agent.collect_rollout()
    mask = rollout.response_mask.bool()
    assert rollout.num_episodes == 8 and mask.any(-1).all()
    with torch.no_grad():
        logprobs, values, entropy = agent.model.evaluate(
            rollout.input_ids, rollout.attention_mask, agent.constants.prompt_width
        )
    assert values[mask].abs().max() > 1e-4
    torch.testing.assert_close(rollout.logprobs[mask], logprobs[mask], rtol=1e-4, atol=1e-4)
    # the KV-cached sampler drew each token from the distribution the env scores
    assert rollout.sampler_logprobs is not None
    torch.testing.assert_close(rollout.sampler_logprobs[mask], logprobs[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rollout.values[mask], values[mask], rtol=1e-4, atol=1e-4)
    kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.response_mask).sum(-1)
    torch.testing.assert_close(kl, rollout.kl, rtol=1e-4, atol=1e-4)
    # terminal reward: score - beta * KL on the last token, nothing before it
    torch.testing.assert_close(
        rollout.rewards.sum(-1), rollout.scores - rollout.kl_coef * rollout.kl, rtol=1e-4, atol=1e-4
    )
    assert (entropy[mask] > 0).all()


def test_group_size_gives_each_group_one_prompt(make_agent_env):
    agent = REINFORCE(make_agent_env(num_envs=8), seed=3, group_size=4)
    rollout = agent.collect_rollout()
    assert len(set(rollout.prompts[:4])) == 1 and len(set(rollout.prompts[4:])) == 1
    with pytest.raises(ValueError, match="group_size"):
        REINFORCE(make_agent_env(num_envs=6), seed=0, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        make_agent_env(num_envs=6).reset(seed=0, options={"group_size": 4})


@pytest.mark.parametrize(
    "name", ["ppo", "grpo-kl-in-loss", "reinforce-loo", "reinforce-minibatches", "egreedy-reference-top-k"]
)
def test_same_seed_same_metrics(name, make_agent_env):
    cls, config = AGENTS[name]
    runs = [train(cls(make_agent_env(), seed=7, **config), 2) for _ in range(2)]
    assert comparable(runs[0].history) == comparable(runs[1].history)
    other = train(cls(make_agent_env(), seed=8, **config), 2)
    assert comparable(other.history) != comparable(runs[0].history)


@pytest.mark.parametrize(
    "name",
    [
        "ppo",
        pytest.param("ppo-separate-critic", marks=pytest.mark.slow),  # 2 LMs: the slowest case, same code
        "grpo",
        "reinforce-moving-average",
        "reinforce-lr-decay",  # the step size follows num_timesteps, which the checkpoint restores
        "egreedy-uniform",
    ],
)
def test_three_iterations_equal_two_then_save_load_then_one(name, make_agent_env, tmp_path):
    cls, config = AGENTS[name]
    straight = train(cls(make_agent_env(), seed=0, **config), 3)

    first = train(cls(make_agent_env(), seed=0, **config), 2)
    first.save(tmp_path / "ckpt")
    resumed = cls.load(tmp_path / "ckpt", make_agent_env())
    assert resumed.num_timesteps == first.num_timesteps and resumed.iterations == 2
    assert resumed.env.unwrapped.kl_coef == first.env.unwrapped.kl_coef
    train(resumed, 3)

    assert comparable(resumed.history) == comparable(straight.history)
    for (n, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n
    assert straight.env.unwrapped.kl_coef == resumed.env.unwrapped.kl_coef


def test_save_load_gives_identical_predict(make_agent_env, tmp_path):
    agent = train(PPO(make_agent_env(), seed=0, top_k=5), 1)
    agent.save(tmp_path / "ckpt")
    loaded = Agent.load(tmp_path / "ckpt", make_agent_env())  # the base class finds the saved agent's type
    assert type(loaded) is PPO and loaded.config == agent.config
    obs, _ = make_agent_env().reset(seed=11)
    for deterministic in (True, False):
        for _ in range(3):
            a, _ = agent.predict(obs, deterministic=deterministic)
            b, _ = loaded.predict(obs, deterministic=deterministic)
            np.testing.assert_array_equal(a, b)
    single = {k: v[0] for k, v in obs.items()}
    action, state = loaded.predict(single, deterministic=True)
    assert state is None and np.ndim(action) == 0 and action == loaded.predict(obs, deterministic=True)[0][0]


def test_predict_deterministic_is_the_most_likely_token(make_agent_env):
    env = make_agent_env(num_envs=2)
    agent = PPO(env, seed=0)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([5, 6]))  # one response token in each row
    ids, mask = torch.from_numpy(obs["input_ids"]), torch.from_numpy(obs["attention_mask"])
    with torch.no_grad():
        logits = agent.model.policy(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    P = agent.constants.prompt_width
    expected = logits[:, P].argmax(-1).numpy()  # the column of the first response token predicts the next
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True)[0], expected)
    sampled, _ = agent.predict(obs)
    assert sampled.shape == (2,) and ((sampled >= 0) & (sampled < env.single_action_space.n)).all()


def test_saved_policy_loads_as_a_plain_transformers_model(make_agent_env, tmp_path):
    agent = train(PPO(make_agent_env(), seed=0), 1)
    agent.save(tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "policy", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "policy")
    ids = torch.tensor([tokenizer("the food was")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, agent.model.policy(ids).logits)


def test_agent_errors(make_agent_env, make_env, tmp_path):
    env = make_agent_env()
    with pytest.raises(TypeError, match="learning_rate"):
        PPO(env, learnin_rate=1e-3)
    with pytest.raises(TypeError, match="vector env"):
        PPO(make_env(), seed=0)
    with pytest.raises(ValueError, match="policy=None"):
        PPO(make_agent_env(policy=None), seed=0)
    with pytest.raises(ValueError, match="num_envs=4"):
        PPO(env, num_envs=4)
    assert PPO(env).config.num_envs == 8  # the env given decides
    with pytest.raises(ValueError, match="baseline"):
        REINFORCE(env, baseline="median")
    with pytest.raises(ValueError, match="exploration"):
        EpsilonGreedyPPO(env, exploration="boltzmann")
    with pytest.raises(ValueError, match="kl_in"):
        GRPO(env, group_size=4, kl_in="advantage")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPO(env, group_size=1)
    with pytest.raises(ValueError, match="must divide"):
        GRPO(env, group_size=3)
    with pytest.raises(ValueError, match="minibatch_size"):
        GRPO(env, group_size=4, minibatch_size=0)
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        PPO.load(tmp_path, env)
    train(PPO(make_agent_env(), seed=0), 1).save(tmp_path / "ppo")
    with pytest.raises(TypeError, match="holds a PPO"):
        REINFORCE.load(tmp_path / "ppo", make_agent_env())


def test_epsilon_schedule(make_agent_env):
    agent = EpsilonGreedyPPO(make_agent_env(), epsilon=0.3, epsilon_final=0.1, epsilon_decay_timesteps=100)
    assert agent.epsilon() == pytest.approx(0.3)
    agent.num_timesteps = 50
    assert agent.epsilon() == pytest.approx(0.2)
    agent.num_timesteps = 1000
    assert agent.epsilon() == pytest.approx(0.1)
    assert EpsilonGreedyPPO(make_agent_env(), epsilon=0.3).epsilon() == 0.3


def test_learning_rate_decays_linearly_and_reaches_the_optimizer(make_agent_env):
    agent = REINFORCE(make_agent_env(), learning_rate=1e-2, lr_final=2e-3, lr_decay_timesteps=100)
    assert agent.learning_rate_now() == pytest.approx(1e-2)
    agent.num_timesteps = 50
    assert agent.learning_rate_now() == pytest.approx(6e-3)
    agent.num_timesteps = 1000
    assert agent.learning_rate_now() == pytest.approx(2e-3)

    agent = train(REINFORCE(make_agent_env(), learning_rate=1e-2, lr_final=0.0, lr_decay_timesteps=30), 3)
    rates = [row["charts/learning_rate"] for row in agent.history]
    assert rates[0] == pytest.approx(1e-2) and rates[0] > rates[1] >= rates[2] >= 0.0
    done_before_last = agent.history[-2]["charts/timesteps"]
    assert rates[-1] == pytest.approx(max(0.0, 1e-2 * (1 - done_before_last / 30)))
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(rates[-1])
    assert all(
        row["charts/learning_rate"] == 1e-2
        for row in train(REINFORCE(make_agent_env(), learning_rate=1e-2, lr_final=None), 2).history
    )  # lr_final=None: constant, whatever lr_decay_timesteps says
    default = REINFORCE(make_agent_env())  # REINFORCE decays by default, from 3e-4 to 1e-4 over 120k tokens
    default.num_timesteps = 60_000
    assert default.learning_rate_now() == pytest.approx((3e-4 + 1e-4) / 2)
    assert PPO(make_agent_env()).config.lr_final is None  # the others are constant

    with pytest.raises(ValueError, match="needs lr_decay_timesteps"):
        PPO(make_agent_env(), lr_final=1e-4)
    with pytest.raises(ValueError, match="lr_final must be >= 0"):
        REINFORCE(make_agent_env(), lr_final=-1e-4, lr_decay_timesteps=10)
    with pytest.raises(ValueError, match="lr_decay_timesteps must be >= 1"):
        REINFORCE(make_agent_env(), lr_final=1e-4, lr_decay_timesteps=0)


def test_reference_top_k_exploration_records_u_of_each_token(make_agent_env):
    """U(a_t) is 1/k exactly when a_t is among the reference's k most likely next tokens."""
    k = 3
    agent = EpsilonGreedyPPO(
        make_agent_env(), seed=0, epsilon=0.5, exploration="reference_top_k", exploration_top_k=k
    )
    rollout = agent.collect_rollout()
    mask = rollout.response_mask.bool()
    assert rollout.explore_probs is not None
    reference = agent.env.unwrapped.reference
    P = agent.constants.prompt_width
    ids, attention = rollout.input_ids, rollout.attention_mask
    with torch.no_grad():
        logits = reference(
            input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0)
        ).logits[:, P - 1 : -1]  # (B, T, V): the distributions the tokens were drawn from
    top = logits.topk(k, dim=-1).indices  # (B, T, k)
    in_top = (top == rollout.response_ids[..., None]).any(-1)
    expected = torch.where(in_top, 1.0 / k, 0.0)
    torch.testing.assert_close(rollout.explore_probs[mask], expected[mask])
    assert in_top[mask].any() and (~in_top[mask]).any()  # both cases occur
    # and the stored behaviour log-prob is log((1 - eps) pi + eps U)
    expected_mu = torch.log(0.5 * rollout.logprobs.exp() + 0.5 * expected)
    torch.testing.assert_close(rollout.behaviour_logprobs[mask], expected_mu[mask], rtol=1e-5, atol=1e-5)


def test_ppo_trains_with_per_token_kl(make_agent_env):
    """With kl_placement="per_token" every step pays -beta * k_t; the rollout keeps them all."""
    agent = PPO(make_agent_env(kl_placement="per_token", kl_target=None), seed=0)
    rollout = agent.collect_rollout()
    mask = rollout.response_mask.bool()
    before_last = mask.clone()
    before_last[torch.arange(len(mask)), rollout.lengths.long() - 1] = False
    assert rollout.rewards[before_last].ne(0).any()  # KL paid on the way, not only at the end
    torch.testing.assert_close(
        rollout.rewards.sum(-1), rollout.scores - 0.2 * rollout.kl, rtol=1e-4, atol=1e-4
    )
    metrics = agent.update(rollout)
    assert all(math.isfinite(v) for v in metrics.values())


def flat_reward(prompts, responses):
    return [0.5] * len(responses)


def test_grpo_flat_groups_do_not_move_the_policy_when_the_kl_is_in_the_reward(make_agent_env):
    """Answers that all score alike carry no signal: zero advantages, so no gradient (beta = 0 here)."""
    env = make_agent_env(reward_model=flat_reward, kl_coef=0.0, kl_target=None)
    agent = GRPO(env, seed=0, group_size=4, minibatch_size=4)
    before = [p.detach().clone() for p in agent.model.policy.parameters()]
    metrics = agent.update(agent.collect_rollout())
    assert metrics["val/flat_groups"] == 1.0 and metrics["val/advantage_std"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.policy.parameters(), strict=True))


def test_grpo_kl_in_the_loss_is_its_only_gradient_when_scores_are_flat(make_agent_env):
    """kl_in="loss": the advantages come from the scores alone, so with flat scores the loss is beta * k3,
    and a small step on it brings the policy closer to the reference on the same tokens. kl_in="reward":
    the same beta reaches the advantages instead (through the group's spread of KL), not the loss."""
    from agents.core import k3, masked_mean

    def kl_to_reference(agent, rollout):
        with torch.no_grad():
            new, _, _ = agent.model.evaluate(
                rollout.input_ids, rollout.attention_mask, agent.constants.prompt_width
            )
        return float(masked_mean(k3(rollout.ref_logprobs - new), rollout.response_mask))

    env = make_agent_env(reward_model=flat_reward, kl_coef=0.5, kl_target=None)
    agent = GRPO(env, seed=0, group_size=4, minibatch_size=8, num_epochs=1, learning_rate=1e-4, kl_in="loss")
    rollout = agent.collect_rollout().trimmed()
    before = kl_to_reference(agent, rollout)
    metrics = agent.update(rollout)
    assert metrics["val/advantage_std"] == 0.0 and metrics["loss/policy"] == 0.0
    assert metrics["loss/total"] == pytest.approx(0.5 * metrics["loss/kl"]) and metrics["loss/kl"] > 0
    assert metrics["loss/kl"] == pytest.approx(before, rel=1e-5)
    assert kl_to_reference(agent, rollout) < before

    env = make_agent_env(reward_model=flat_reward, kl_coef=0.5, kl_target=None)
    agent = GRPO(env, seed=0, group_size=4, minibatch_size=8, learning_rate=1e-4, kl_in="reward")
    metrics = agent.update(agent.collect_rollout())
    assert metrics["val/advantage_std"] > 0 and metrics["loss/total"] == pytest.approx(metrics["loss/policy"])


def test_reinforce_minibatches_weigh_later_steps_by_the_ratio(make_agent_env):
    """The first minibatch is the textbook step (ratio 1); the later ones see a policy that has moved.
    A minibatch as large as the rollout is one textbook step."""
    agent = REINFORCE(make_agent_env(), seed=0, minibatch_size=3, learning_rate=1e-2)  # steps of 3, 3, 2
    metrics = agent.update(agent.collect_rollout())
    assert metrics["policy/ratio_mean"] != 1.0
    one = REINFORCE(make_agent_env(), seed=0, minibatch_size=8, learning_rate=1e-2)
    metrics = one.update(one.collect_rollout())
    assert metrics["policy/ratio_mean"] == 1.0 and metrics["policy/clipfrac"] == 0.0
    with pytest.raises(ValueError, match="minibatch_size"):
        REINFORCE(make_agent_env(), minibatch_size=0)


def test_minibatches_use_every_episode_once():
    from agents.core import minibatches

    order = torch.randperm(10)
    parts = minibatches(order, 4)
    assert [len(p) for p in parts] == [4, 4, 2] and torch.equal(torch.cat(parts), order)
    assert [len(p) for p in minibatches(order, 32)] == [10]
