"""Saves are whole or absent: a save killed half-way, a damaged file, a refused file never load a mix.

The training command's side (a resume killed mid-save, then resumed) is in test_train_cli.py."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import agents.base
from agents import PPO
from textenv import CheckpointError, atomic, toy


def _train(agent, iterations):
    return agent.learn(10**9, callback=lambda a, m: a.iterations < iterations)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way may swallow it."""


def _fail_on(monkeypatch, module, name, after_calls=0):
    """Make ``module.name`` raise Killed on its call number ``after_calls + 1``."""
    original = getattr(module, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Killed(f"killed inside {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_a_save_killed_between_two_files_leaves_the_previous_checkpoint(
    make_agent_env, tmp_path, monkeypatch
):
    path = tmp_path / "checkpoint"
    agent = _train(PPO(make_agent_env(), seed=0), 1)
    agent.save(path)
    saved_weights = _weights(agent.model.policy)
    _train(agent, 2)
    _fail_on(monkeypatch, agents.base, "save_file")  # after policy/ is written, before agent.safetensors
    with pytest.raises(Killed):
        agent.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temporary folder left
    assert json.loads((path / "state.json").read_text())["iterations"] == 1
    loaded = PPO.load(path, make_agent_env())
    assert loaded.iterations == 1 and _same_weights(_weights(loaded.model.policy), saved_weights)


def test_a_kill_between_the_two_renames_keeps_the_previous_version_findable(make_agent_env, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    agent = _train(PPO(make_agent_env(), seed=0), 1)
    agent.save(run / "checkpoint")
    # what a kill leaves after `checkpoint` became `checkpoint.prev`, before the new one took its place
    (run / "checkpoint").rename(run / "checkpoint.prev")
    shutil.copytree(run / "checkpoint.prev", run / ".checkpoint.tmp-1-dead")
    (run / ".checkpoint.tmp-1-dead" / "manifest.json").unlink()  # the new save never finished
    from agents.train import newest_checkpoint

    assert newest_checkpoint(run) == run / "checkpoint.prev"
    assert "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage, names",
    [
        (lambda d: (d / "state.json").write_text("{"), "state.json has"),
        (lambda d: (d / "optimizer.pt").write_bytes(b"\x80"), "optimizer.pt has"),
        (lambda d: (d / "agent.safetensors").unlink(), "agent.safetensors is missing"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(make_agent_env, tmp_path, damage, names):
    path = tmp_path / "checkpoint"
    _train(PPO(make_agent_env(), seed=0), 1).save(path)
    damage(path)
    env = make_agent_env()
    before = _weights(env.unwrapped.policy)
    with pytest.raises(CheckpointError, match=names):
        PPO.load(path, env)
    assert _same_weights(_weights(env.unwrapped.policy), before)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_refused_optimizer_file_leaves_the_callers_policy_untouched(make_agent_env, tmp_path, capsys):
    path = tmp_path / "checkpoint"
    _train(PPO(make_agent_env(), seed=0), 1).save(path)
    (path / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    atomic.write_manifest(path)  # whoever altered it also rewrote the manifest
    env = make_agent_env()
    before = _weights(env.unwrapped.policy)
    with pytest.raises(CheckpointError, match=r"cannot read .*optimizer\.pt"):
        PPO.load(path, env)
    assert "must never run" not in capsys.readouterr().out
    assert _same_weights(_weights(env.unwrapped.policy), before)


def test_weights_of_another_shape_are_refused_before_any_is_copied(make_agent_env, tokenizer, tmp_path):
    path = tmp_path / "checkpoint"
    _train(PPO(make_agent_env(), seed=0), 1).save(path)
    other = toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5, n_embd=48)
    env = make_agent_env(policy=other, reference=None)
    before = _weights(other)
    with pytest.raises(CheckpointError, match="do not fit this env's policy"):
        PPO.load(path, env)
    assert _same_weights(_weights(other), before)


def test_save_refuses_to_replace_a_folder_that_is_not_a_save(make_agent_env, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a save of this kind"):
        PPO(make_agent_env(), seed=0).save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
