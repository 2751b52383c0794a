"""A stock SB3 learner trains against the env (policy=None: its policy is an MLP, not a language model)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from textenv import toy


def test_sb3_ppo_trains_two_rollouts_on_a_tiny_vocabulary(tmp_path):
    words = ["the", "food", "was", "good", "bad", "."]
    tokenizer = toy.toy_tokenizer(words)
    assert len(tokenizer) == 15
    reference = toy.toy_causal_lm(tokenizer, seed=0)
    env = gym.make(
        "TextRLHF-v0",
        policy=None,
        reference=reference,
        tokenizer=tokenizer,
        reward_model=toy.lexicon_reward,
        prompts=["the food was", "the food"],
        max_new_tokens=4,
        max_prompt_tokens=4,
        kl_coef=0.05,
    )
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=256,
        batch_size=64,
        n_epochs=2,
        ent_coef=0.05,
        seed=0,
        device="cpu",
        verbose=0,
    )
    model.set_logger(configure(str(tmp_path), []))  # not SB3's default folder in the system temp dir
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=512)  # two rollouts and updates; the slow test below shows it learning
    assert model.num_timesteps >= 512
    logged = model.logger.name_to_value
    assert np.isfinite(logged["train/loss"]) and np.isfinite(logged["train/policy_gradient_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.policy.parameters(), strict=True))
    # the trained MLP acts through the same API
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    env.step(action)


@pytest.mark.slow
def test_sb3_ppo_raises_the_score_on_a_tiny_vocabulary(tmp_path):
    """6k steps: the mean lexicon score of sampled responses goes from ~0 to near its maximum 1.

    Measured with one torch thread: 0.03 before, 0.75 after 2k steps, 0.95 after 4k, 0.99 after 6k (23 CPU s).
    """
    tokenizer = toy.toy_tokenizer(["the", "food", "was", "good", "bad", "."])
    env = gym.make(
        "TextRLHF-v0",
        policy=None,
        reference=toy.toy_causal_lm(tokenizer, seed=0),
        tokenizer=tokenizer,
        reward_model=toy.lexicon_reward,
        prompts=["the food was", "the food"],
        max_new_tokens=4,
        max_prompt_tokens=4,
        kl_coef=0.05,
    )

    def mean_score(model: PPO, episodes: int = 100) -> float:
        scores = []
        for i in range(episodes):
            obs, _ = env.reset(seed=1000 + i)
            terminated = False
            while not terminated:
                action, _ = model.predict(obs, deterministic=False)
                obs, _, terminated, _, info = env.step(action)
            scores.append(info["score"])
        return float(np.mean(scores))

    model = PPO(
        "MultiInputPolicy", env, n_steps=256, batch_size=64, n_epochs=4, ent_coef=0.05, seed=0, device="cpu"
    )
    model.set_logger(configure(str(tmp_path), []))
    before = mean_score(model)
    model.learn(total_timesteps=6_144)
    after = mean_score(model)
    assert before < 0.3 and after > 0.8, (before, after)
