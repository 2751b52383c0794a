"""The embedded default task: shipped files, the default env, the shipped models' quality, a tiny rebuild."""

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import textenv
from textenv.sampling import sample_responses
from textenv.tasks import reviews
from textenv.tasks.reviews.build import BuildConfig, build, corrupt, spearman


def test_shipped_files_match_the_manifest():
    manifest = reviews.verify_assets()
    names = set(manifest["files"])
    for required in (
        "policy/model.safetensors",
        "policy/config.json",
        "policy/tokenizer.json",
        "reward_model/model.safetensors",
        "reward_model/tokenizer.json",
        "prompts.json",
    ):
        assert required in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)  # safetensors only
    assert sum(entry["bytes"] for entry in manifest["files"].values()) < 10e6
    assert reviews.load_prompts() == reviews.default_prompts()


def test_default_env_makes_and_plays_an_episode():
    env = gym.make("TextRLHF-v0")
    engine = env.unwrapped.engine
    assert engine.max_new_tokens == reviews.ENV_DEFAULTS["max_new_tokens"]
    assert env.action_space.n == len(env.unwrapped.tokenizer)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    terminated, steps = False, 0
    while not terminated:
        _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
    assert steps <= engine.max_new_tokens and not truncated
    assert np.isfinite(info["score"]) and np.isfinite(info["kl"])
    assert reward == pytest.approx(info["score"] - info["kl_coef"] * info["kl"])
    assert info["prompt"] in reviews.default_prompts()
    assert not reviews.is_grammatical(info["prompt"], info["response"])  # random tokens are gibberish


def test_default_task_parts_can_be_replaced():
    env = gym.make("TextRLHF-v0", reward_model=reviews.gold_reward, prompts=["hotel review :"], kl_coef=0.0)
    env.reset(seed=1)
    tokenizer = env.unwrapped.tokenizer
    reward = 0.0
    for token in tokenizer(" the room was clean .")["input_ids"] + [tokenizer.eos_token_id]:
        _, reward, terminated, _, info = env.step(token)
    assert terminated and info["response"] == " the room was clean ."
    assert reward == pytest.approx(0.6)  # the gold scorer as the reward, beta 0


def test_shipped_policy_writes_grammatical_reviews_of_mixed_sentiment():
    policy = AutoModelForCausalLM.from_pretrained(reviews.ASSETS / "policy")
    tokenizer = AutoTokenizer.from_pretrained(reviews.ASSETS / "policy")
    prompts = reviews.default_prompts() * 10
    responses = sample_responses(
        policy, tokenizer, prompts, max_new_tokens=24, generator=torch.Generator().manual_seed(0)
    )
    quality = reviews.evaluate(prompts, responses)
    assert quality["grammatical_rate"] >= 0.95
    assert 0.3 <= quality["positive_rate"] <= 0.7


def test_shipped_reward_model_agrees_with_gold():
    env = gym.make("TextRLHF-v0")
    reward_model = env.unwrapped.engine.reward_model
    prompts = ["hotel review :"] * 4
    responses = [
        " the staff were very friendly . i would recommend this hotel .",
        " the room was clean .",
        " the room was dirty .",
        " great amazing excellent great .",
    ]
    scores = np.asarray(reward_model.score(prompts, responses))
    assert scores[0] > scores[1] > scores[2]
    assert scores[3] < scores[1]  # a salad of positive words is not a good review
    # measured here on fresh samples of the shipped policy: pairs for one prompt, ordered as gold orders them?
    policy = env.unwrapped.policy
    tokenizer = env.unwrapped.tokenizer
    prompts = reviews.default_prompts() * 5
    generator = torch.Generator().manual_seed(1)
    first, second = (
        sample_responses(policy, tokenizer, prompts, max_new_tokens=24, generator=generator) for _ in range(2)
    )
    s1 = np.asarray(reward_model.score(prompts, first))
    s2 = np.asarray(reward_model.score(prompts, second))
    u1 = np.array([reviews.gold_score(p, r).utility for p, r in zip(prompts, first, strict=True)])
    u2 = np.array([reviews.gold_score(p, r).utility for p, r in zip(prompts, second, strict=True)])
    differ = u1 != u2
    accuracy = ((s1 > s2) == (u1 > u2))[differ].mean()
    assert accuracy > 0.85  # the build's 15,000 held-out pairs give 0.93 (the target: 0.9)
    quality = reviews.load_manifest()["quality"]["reward_model"]
    assert quality["heldout_accuracy_vs_gold"] >= 0.9 and quality["spearman_vs_gold_sentiment"] > 0.9


def test_helpers():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    broken = [corrupt(rng, " the room was very clean and quiet .") for _ in range(40)]
    assert sum(reviews.is_grammatical("hotel review :", b) for b in broken) <= 4


def test_tiny_rebuild_runs_end_to_end(tmp_path):
    out, work = tmp_path / "assets", tmp_path / "work"
    manifest = build(out, work, BuildConfig().tiny())
    assert reviews.verify_assets(out) == manifest
    assert (work / "preferences.jsonl").is_file() and (work / "report.json").is_file()
    records = [json.loads(line) for line in (work / "preferences.jsonl").read_text().splitlines()]
    assert all(set(r) == {"prompt", "chosen", "rejected", "group"} for r in records)
    assert len(records) == 30 * 6  # 30 groups of 4 responses, every pair of them
    for group in {r["group"] for r in records}:  # each group: one prompt, 4 responses, 6 distinct pairs
        members = [r for r in records if r["group"] == group]
        assert len({r["prompt"] for r in members}) == 1
        assert len({(r["chosen"], r["rejected"]) for r in members}) <= 6 and len(members) == 6
        assert len({r["chosen"] for r in members} | {r["rejected"] for r in members}) <= 4
    quality = manifest["quality"]
    assert 0.0 <= quality["reference"]["grammatical_rate"] <= 1.0
    assert set(quality["reward_model"]) >= {"heldout_accuracy_vs_gold", "spearman_vs_gold_sentiment"}
    # same seed, same machine: the same files
    again = build(tmp_path / "again", tmp_path / "work2", BuildConfig().tiny())
    assert again["files"] == manifest["files"]
    # the rebuilt assets make an environment
    env = gym.make("TextRLHF-v0", **reviews.env_kwargs(out))
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(env.unwrapped.tokenizer.eos_token_id)
    assert terminated and np.isfinite(info["score"])
    # a changed or missing file is caught
    (out / "prompts.json").write_text("[]")
    with pytest.raises(reviews.AssetError, match=r"prompts\.json does not match"):
        reviews.verify_assets(out)
    shutil.rmtree(out / "policy")
    with pytest.raises(reviews.AssetError, match="missing"):
        reviews.verify_assets(out)


def test_missing_assets_give_the_rebuild_command(tmp_path):
    with pytest.raises(reviews.AssetError, match=r"python -m textenv\.tasks\.reviews\.build"):
        reviews.env_kwargs(tmp_path)
    assert textenv.ENV_ID == "TextRLHF-v0"


def test_default_vector_env_scores_a_batch():
    envs = gym.make_vec("TextRLHF-v0", num_envs=3)
    envs.reset(seed=0)
    eos = envs.unwrapped.engine.eos_token_id
    _, rewards, terminated, _, info = envs.step(np.full(3, eos))
    assert terminated.all() and np.isfinite(rewards).all()
    # the policy is still the reference: KL 0 up to float error (its log-probs come from a KV-cached pass)
    assert len(info["score"]) == 3 and np.allclose(info["kl"], 0.0, atol=1e-5)
