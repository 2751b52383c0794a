"""PPO-ptx: the pretraining LM loss mixed into PPO's, its text sources, and the perplexity it is judged by."""

from __future__ import annotations

import math

import pytest
import torch

from agents import PPO, EpsilonGreedyPPO
from agents.ptx import PretrainingText, lm_loss, perplexity, pretraining_texts
from textenv import tasks, toy

PTX_TEXT = "the food was very good . the staff was really friendly ."


def train(agent, iterations: int):
    return agent.learn(10**9, callback=lambda a, m: a.iterations < iterations)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "pretraining.txt"
    path.write_text(f"{PTX_TEXT}\n\n the room was clean .\n", encoding="utf-8")
    return path


def test_ptx_loss_is_logged_and_a_resumed_run_is_exact(make_agent_env, text_file, tmp_path):
    config = {"ptx_coef": 0.5, "ptx_source": str(text_file), "ptx_batch_size": 3}
    straight = train(PPO(make_agent_env(), seed=0, **config), 3)
    assert all("loss/ptx" in row and row["loss/ptx"] > 0 for row in straight.history)
    plain = train(PPO(make_agent_env(), seed=0), 1)
    assert "loss/ptx" not in plain.history[0]

    first = train(PPO(make_agent_env(), seed=0, **config), 2)
    first.save(tmp_path / "ckpt")
    resumed = train(PPO.load(tmp_path / "ckpt", make_agent_env()), 3)
    timing = (
        "charts/rollout_seconds",
        "charts/env_seconds",
        "charts/update_seconds",
        "charts/tokens_per_second",
    )
    strip = [{k: v for k, v in row.items() if k not in timing} for row in straight.history]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in resumed.history]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_ptx_term_teaches_the_pretraining_text(make_agent_env, text_file, tokenizer):
    """Same seed, same rollouts' start: with the LM term, the policy's loss on the pretraining text falls
    far below where it started and below the run without it."""
    texts = pretraining_texts(str(text_file), None, 0)
    data = PretrainingText(texts, tokenizer, 64)
    ids, mask = data.batch(range(len(data)), "cpu")

    def loss_of(agent) -> float:
        with torch.no_grad():
            return float(lm_loss(agent.model.policy, ids, mask))

    start = loss_of(PPO(make_agent_env(), seed=0))
    common = {"learning_rate": 3e-3, "num_epochs": 2}
    with_ptx = train(PPO(make_agent_env(), seed=0, ptx_coef=1.0, ptx_source=str(text_file), **common), 6)
    without = train(PPO(make_agent_env(), seed=0, **common), 6)
    assert loss_of(with_ptx) < 0.5 * start
    assert loss_of(with_ptx) < 0.5 * loss_of(without)


def test_epsilon_greedy_ppo_has_ptx_too(make_agent_env, text_file):
    agent = train(EpsilonGreedyPPO(make_agent_env(), seed=0, ptx_coef=0.1, ptx_source=str(text_file)), 1)
    assert agent.history[0]["loss/ptx"] > 0


def test_ptx_settings_are_checked_when_the_agent_is_made(make_agent_env, tmp_path):
    with pytest.raises(ValueError, match="plays none"):  # the toy env plays no task: no corpus to mix in
        PPO(make_agent_env(), ptx_coef=0.1)
    with pytest.raises(FileNotFoundError, match="no pretraining text file"):
        PPO(make_agent_env(), ptx_coef=0.1, ptx_source=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no text"):
        PPO(make_agent_env(), ptx_coef=0.1, ptx_source=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="ptx_coef must be >= 0"):
        PPO(make_agent_env(), ptx_coef=-1.0)
    PPO(make_agent_env(), ptx_source="nowhere.txt")  # unused while ptx_coef is 0


def test_the_task_corpus_is_the_default_pretraining_text():
    agent = PPO("TextRLHF-v0", num_envs=4, ptx_coef=0.1, ptx_texts=50)
    data = agent.pretraining_text()
    corpus = tasks.load("reviews").pretraining_texts(50)
    assert len(data) == 50
    tokenizer = agent.env.unwrapped.tokenizer
    assert data.rows[0].tolist() == [*tokenizer(corpus[0])["input_ids"], tokenizer.eos_token_id]
    # the build's seed by default: the policy was pretrained on this text, so it knows it well
    fresh = tasks.load("reviews").pretraining_texts(50, seed=7)
    assert fresh != corpus
    assert perplexity(agent.model.policy, tokenizer, corpus) < 10


def test_perplexity_is_the_exponent_of_the_models_own_loss(tokenizer):
    model = toy.toy_causal_lm(tokenizer, seed=3, initializer_range=0.5)
    text = "the food was good ."
    ids = torch.tensor([[*tokenizer(text)["input_ids"], tokenizer.eos_token_id]])
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert perplexity(model, tokenizer, [text]) == pytest.approx(expected, rel=1e-5)
    # texts of other lengths in one batch: pads are not predicted
    other = "the staff was really friendly . the view was lovely ."
    ids2 = torch.tensor([[*tokenizer(other)["input_ids"], tokenizer.eos_token_id]])
    with torch.no_grad():
        losses = [float(model(input_ids=x, labels=x).loss) for x in (ids, ids2)]
    tokens = [ids.shape[1] - 1, ids2.shape[1] - 1]
    pooled = math.exp(sum(l * n for l, n in zip(losses, tokens, strict=True)) / sum(tokens))
    assert perplexity(model, tokenizer, [text, other], batch_size=2) == pytest.approx(pooled, rel=1e-5)
