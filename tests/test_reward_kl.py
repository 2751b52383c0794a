"""The reward definition, recomputed independently of the env; the adaptive KL controller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textenv import toy
from textenv.kl import AdaptiveKLController


def _own_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> np.ndarray:
    """Teacher-forced log-probs of the response, with no padding and no env code."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature  # (T_all, V)
    logprobs = logits.log_softmax(-1)
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(response_ids) - 1)
    return logprobs[positions, torch.tensor(response_ids)].numpy()


def _play_episode(env, tokenizer, seed: int) -> tuple[list[int], list[tuple[float, dict]]]:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    actions, steps = [], []
    terminated = False
    while not terminated:
        action = int(rng.integers(env.action_space.n))
        if rng.random() < 0.15:
            action = tokenizer.eos_token_id
        _, reward, terminated, _, step_info = env.step(action)
        actions.append(action)
        steps.append((reward, step_info))
    return actions, steps


@pytest.mark.parametrize("kl_estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_terminal_reward_is_score_minus_beta_kl(
    make_env, policy, reference, tokenizer, kl_estimator, temperature
):
    env = make_env(kl_estimator=kl_estimator, temperature=temperature, kl_coef=0.3)
    for seed in range(4):
        actions, steps = _play_episode(env, tokenizer, seed)
        assert all(r == 0.0 and i == {} for r, i in steps[:-1])
        reward, info = steps[-1]
        prompt_ids = tokenizer(info["prompt"])["input_ids"]
        lp = _own_logprobs(policy, prompt_ids, actions, temperature)
        lr = _own_logprobs(reference, prompt_ids, actions, temperature)
        np.testing.assert_allclose(info["logprobs"], lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(info["ref_logprobs"], lr, rtol=1e-5, atol=1e-5)
        own_kl = {
            "k1": lp - lr,
            "k2": 0.5 * (lp - lr) ** 2,
            "k3": np.exp(lr - lp) - 1 - (lr - lp),
        }[kl_estimator].sum()
        assert info["kl"] == pytest.approx(own_kl, rel=1e-5, abs=1e-5)
        assert abs(own_kl) > 1e-3  # the policy and the reference really differ
        response = tokenizer.decode(
            [a for a in actions if a != tokenizer.eos_token_id], skip_special_tokens=True
        )
        assert info["response"] == response
        assert info["score"] == toy.lexicon_sentiment(response)
        assert info["kl_coef"] == 0.3
        assert reward == pytest.approx(info["score"] - 0.3 * info["kl"], rel=1e-6, abs=1e-6)
        # against the independent KL, as closely as the KL itself matched it (float32 logits: k3 sums
        # exponentials of log-ratios, so its rounding grows with them)
        assert reward == pytest.approx(info["score"] - 0.3 * own_kl, rel=1e-5, abs=1e-5)
        assert info["reward_form"] == "score - kl_coef * kl"


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_per_token_rewards_sum_to_the_terminal_total(make_env, tokenizer, kl_estimator):
    terminal = make_env(kl_estimator=kl_estimator, kl_coef=0.25)
    per_token = make_env(kl_estimator=kl_estimator, kl_coef=0.25, kl_placement="per_token")
    for seed in range(5):
        actions_a, steps_a = _play_episode(terminal, tokenizer, seed)
        actions_b, steps_b = _play_episode(per_token, tokenizer, seed)
        assert actions_a == actions_b
        info_a, info_b = steps_a[-1][1], steps_b[-1][1]
        total = sum(r for r, _ in steps_b)
        assert total == pytest.approx(steps_a[-1][0], rel=1e-5, abs=1e-5)
        assert info_b["kl"] == pytest.approx(info_a["kl"], rel=1e-5, abs=1e-5)
        token_kls = [i["token_kl"] for _, i in steps_b]
        assert sum(token_kls) == pytest.approx(info_b["kl"], rel=1e-9, abs=1e-9)
        for (reward, _), k in zip(steps_b[:-1], token_kls, strict=False):
            assert reward == pytest.approx(-0.25 * k)
        np.testing.assert_allclose(info_b["logprobs"], info_a["logprobs"], rtol=1e-5, atol=1e-5)


def test_policy_free_reward_is_score_plus_beta_ref_logprobs(make_env, reference, tokenizer):
    env = make_env(policy=None, kl_coef=0.1)
    actions, steps = _play_episode(env, tokenizer, seed=3)
    reward, info = steps[-1]
    assert "kl" not in info and "logprobs" not in info
    assert info["reward_form"] == "score + kl_coef * sum(ref_logprobs)"
    lr = _own_logprobs(reference, tokenizer(info["prompt"])["input_ids"], actions, 1.0)
    np.testing.assert_allclose(info["ref_logprobs"], lr, rtol=1e-5, atol=1e-5)
    assert reward == pytest.approx(info["score"] + 0.1 * lr.sum(), rel=1e-5, abs=1e-5)


def test_adaptive_controller_follows_the_formula_on_a_known_stream():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    beta = 0.2
    stream = [(12.0, 64), (9.0, 64), (6.0, 32), (3.0, 64), (0.0, 128), (7.2, 16)]
    for kl, n in stream:
        error = np.clip(kl / 6.0 - 1.0, -0.2, 0.2)
        beta *= 1 + error * n / 10_000
        assert ctl.update(kl, n) == pytest.approx(beta, rel=1e-12)
    # above the target beta rises, below it falls, at the target it stays
    ctl = AdaptiveKLController(1.0, target=6.0, horizon=100)
    assert ctl.update(60.0, 10) == pytest.approx(1.02)  # error clipped to +0.2
    assert ctl.update(6.0, 10) == pytest.approx(1.02)
    assert ctl.update(0.0, 10) == pytest.approx(1.02 * 0.98)
    fixed = AdaptiveKLController(0.2, target=None)
    assert fixed.update(100.0, 1000) == 0.2 and not fixed.adaptive


def test_env_adapts_beta_toward_the_target(make_env, make_vec, tokenizer):
    # the policy's KL per episode is well above a tiny target: beta must rise, by the formula
    env = make_env(kl_coef=0.2, kl_target=1e-3, kl_horizon=10, kl_estimator="k3")  # k3 >= 0
    beta = 0.2
    for seed in range(3):
        _, steps = _play_episode(env, tokenizer, seed)
        info = steps[-1][1]
        assert info["kl_coef"] == pytest.approx(beta)  # the reward used beta before this episode's update
        beta *= 1 + float(np.clip(info["kl"] / 1e-3 - 1, -0.2, 0.2)) * 1 / 10
    assert env.unwrapped.kl_coef == pytest.approx(beta)
    assert beta > 0.2
    # in the vector env, one update per step with every episode that ended on it
    vec = make_vec(4, kl_coef=0.2, kl_target=1e6, kl_horizon=10)
    vec.reset(seed=0)
    _, _, terminated, _, info = vec.step(np.full(4, tokenizer.eos_token_id))
    assert terminated.all()
    assert vec.unwrapped.kl_coef == pytest.approx(0.2 * (1 - 0.2 * 4 / 10))


@pytest.mark.parametrize("explore", [False, True])
def test_log_probs_offered_by_the_agents_sampler_give_the_teacher_forced_kl(make_agent_env, explore):
    """The agents' rollouts hand the env the log-probs their sampler read through its KV cache, and the env
    skips the policy's teacher-forced pass: the KL, the log-probs and the rewards are those of the pass to
    float precision, and the policy is read fewer times."""
    from agents import PPO, EpsilonGreedyPPO
    from agents.rollout import collect

    def run(offer: bool):
        env = make_agent_env(num_envs=6)
        agent = EpsilonGreedyPPO(env, seed=0, epsilon=0.3) if explore else PPO(env, seed=0)
        calls = []
        hook = env.unwrapped.policy.register_forward_hook(lambda *a: calls.append(1))
        if not offer:
            env.unwrapped.offer_policy_logprobs = lambda logprobs: None
        rollout = collect(
            env,
            agent.model,
            generator=torch.Generator().manual_seed(3),
            seed=11,
            exploration=agent.exploration(),
            reference=env.unwrapped.reference,
            whole_episodes=False,  # stepped token by token (tests/test_whole_episodes.py: the other way)
        )
        hook.remove()
        return rollout, len(calls)

    offered, fewer = run(True)
    forced, more = run(False)
    assert torch.equal(offered.response_ids, forced.response_ids)
    assert torch.allclose(offered.logprobs, forced.logprobs, atol=1e-5)
    assert torch.allclose(offered.kl, forced.kl, atol=1e-5)
    assert torch.allclose(offered.rewards, forced.rewards, atol=1e-5)
    assert torch.equal(offered.ref_logprobs, forced.ref_logprobs)
    assert fewer < more
