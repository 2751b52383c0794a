"""textenv.trl: a textenv env as trl's online trainers take it. The fast tier needs no trl; the slow tier
trains trl's GRPO a few steps and checks every reward it saw against the env's own score."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from textenv import toy
from textenv.trl import TrlReward


def _play(env: gym.Env, prompt: str, tokens: list[int]) -> dict:
    """Play ``tokens`` after ``prompt``; the terminal info (score, response, ...)."""
    env.reset(seed=0, options={"prompt": prompt})
    for token in tokens:
        _, _, terminated, truncated, info = env.step(token)
        if terminated or truncated:
            return info
    raise AssertionError("the episode did not end")


def test_the_reward_function_scores_as_the_env_does(make_env):
    env = make_env()
    reward = TrlReward(env.unwrapped.engine.reward_model)
    rng = np.random.default_rng(0)
    eos = env.unwrapped.engine.tokenizer.eos_token_id
    vocab = env.unwrapped.engine.tokenizer.convert_tokens_to_ids([" good", " bad", " very", " the", " food"])
    prompts, completions, ids, scores = [], [], [], []
    for prompt in toy.PROMPTS:
        tokens = [int(t) for t in rng.choice(vocab, size=3)] + [eos]
        info = _play(env, prompt, tokens)
        prompts.append(prompt)
        completions.append(info["response"])
        ids.append(tokens)
        scores.append(info["score"])
    got = reward(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=None)
    assert got == pytest.approx(scores, abs=0, rel=0)  # the same numbers, not nearly
    assert reward.calls == 1 and reward.completion_tokens == 4 * len(toy.PROMPTS)
    with pytest.raises(TypeError, match="plain-text prompts"):
        reward(prompts=[[{"role": "user", "content": "hi"}]], completions=["x"])


def _saved_lm(tmp_path, tokenizer, seed: int = 1) -> str:
    folder = tmp_path / f"lm{seed}"
    toy.toy_causal_lm(tokenizer, seed=seed, initializer_range=0.5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_for_trl_takes_the_envs_parts_and_settings(make_env, tmp_path, tokenizer):
    pytest.importorskip("datasets")
    from textenv.trl import for_trl

    lm = _saved_lm(tmp_path, tokenizer)
    env = make_env(policy=lm, reference=None, temperature=0.7)
    parts = for_trl(env, prompts=toy.PROMPTS[:3])
    engine = env.unwrapped.engine
    assert parts.policy is engine.policy and parts.tokenizer is engine.tokenizer
    assert parts.dataset["prompt"] == toy.PROMPTS[:3]
    settings = parts.trl_settings(beta=0.0)
    assert settings["max_completion_length"] == 6 and settings["temperature"] == 0.7
    assert settings["beta"] == 0.0 and settings["top_k"] == 0 and settings["top_p"] == 1.0
    with pytest.raises(ValueError, match="reference comes from"):
        for_trl(make_env(policy=lm, reference=_saved_lm(tmp_path, tokenizer, seed=2)))
    with pytest.raises(ValueError, match="checkpoint"):
        for_trl(make_env())  # models built in memory: trl could not load a reference


@pytest.mark.slow
def test_grpo_trains_on_a_tiny_task_and_every_reward_is_the_envs_score(tmp_path, tokenizer):
    trl = pytest.importorskip("trl")
    from textenv.trl import for_trl

    torch.manual_seed(0)
    lm = _saved_lm(tmp_path, tokenizer)
    kwargs = dict(
        policy=lm,
        tokenizer=lm,
        reward_model=toy.lexicon_reward,
        prompts=toy.PROMPTS,
        max_new_tokens=6,
        max_prompt_tokens=6,
        kl_coef=0.2,
    )
    parts = for_trl(**kwargs)
    seen: list[tuple[str, list[int], float]] = []

    def reward(prompts, completions, completion_ids, **kw):
        scores = parts.reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kw)
        seen.extend(zip(prompts, completion_ids, scores, strict=True))
        return scores

    reward.__name__ = "recorded"
    before = {k: v.clone() for k, v in parts.policy.named_parameters()}
    args = trl.GRPOConfig(
        **parts.trl_settings(),
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = trl.GRPOTrainer(
        model=parts.policy,
        processing_class=parts.tokenizer,
        reward_funcs=reward,
        train_dataset=parts.dataset,
        args=args,
    )
    trainer.train()
    assert len(seen) == 3 * 8 and parts.reward.completion_tokens == sum(len(ids) for _, ids, _ in seen)
    changed = [k for k, v in parts.policy.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every parameter moved
    reference = dict(trainer.ref_model.named_parameters())  # trl's reference: the starting checkpoint
    assert all(
        torch.equal(v, reference[k]) for k, v in parts.env.unwrapped.engine.reference.named_parameters()
    )

    env = gym.make("TextRLHF-v0", **kwargs)  # a fresh env of the same settings scores what trl sampled
    for prompt, ids, score in seen:
        info = _play(env, prompt, [int(t) for t in ids])
        assert info["score"] == score
