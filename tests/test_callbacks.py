"""Callbacks in SB3's shape, the plain function still accepted; the run logger's folder as training goes."""

from __future__ import annotations

import json

import pytest

from agents import PPO, REINFORCE
from agents.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    EveryNIterations,
    StopTrainingOnThreshold,
    make_callback,
)
from agents.reporting import RunLogger, parse_report_to


class Recorder(BaseCallback):
    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.seen: list[tuple[int, int, int]] = []

    def _on_training_start(self):
        self.events.append("start")

    def _on_step(self):
        self.seen.append((self.n_calls, self.num_timesteps, int(self.locals["metrics"]["charts/iteration"])))
        return True

    def _on_training_end(self):
        self.events.append("end")


def test_sb3_shaped_callback_sees_each_iteration(make_agent_env):
    agent = REINFORCE(make_agent_env(), seed=0)
    recorder = Recorder()
    agent.learn(100, callback=recorder)
    assert recorder.events == ["start", "end"] and recorder.model is agent
    assert (
        [s[0] for s in recorder.seen] == [s[2] for s in recorder.seen] == list(range(1, agent.iterations + 1))
    )
    assert recorder.seen[-1][1] == agent.num_timesteps


def test_plain_function_and_lists_still_work(make_agent_env):
    agent = REINFORCE(make_agent_env(), seed=0)
    calls: list[int] = []
    agent.learn(10_000, callback=lambda a, m: calls.append(a.iterations) or len(calls) < 2)
    assert calls == [1, 2] and agent.iterations == 2  # returning False stops
    recorder = Recorder()
    agent.learn(10_000, callback=[recorder, lambda a, m: False])
    assert agent.iterations == 3 and len(recorder.seen) == 1
    with pytest.raises(TypeError, match="callback must be"):
        make_callback(42)


def test_eval_callback_adds_eval_metrics_and_stop_on_threshold(make_agent_env):
    agent = PPO(make_agent_env(), seed=0, num_minibatches=2, num_epochs=1)
    # the toy env plays no task: the evaluation reports the proxy, KL and length, no gold
    stop = StopTrainingOnThreshold("eval/kl", -1.0, mode="above")  # any KL passes: stops at the first eval
    evaluation = EvalCallback(eval_every=2, episodes=8, callback_after_eval=stop)
    agent.learn(100_000, callback=evaluation)
    assert agent.iterations == 2 and stop.stopped_at == 2 and stop.parent is evaluation
    assert "eval/rm_score" not in agent.history[0]
    assert {"eval/rm_score", "eval/kl", "eval/length", "eval/distinct_2"} <= set(agent.history[1])
    assert "eval/gold" not in agent.history[1]
    again = evaluation.evaluate()
    assert again == {k: v for k, v in agent.history[1].items() if k.startswith("eval/")}  # fixed seeds
    with pytest.raises(ValueError, match="mode"):
        StopTrainingOnThreshold("eval/gold", 0.9, mode="over")
    with pytest.raises(ValueError, match="eval_every"):
        EvalCallback(eval_every=0)


def test_eval_callback_judges_by_the_task_gold():
    agent = REINFORCE("TextRLHF-v0", seed=0, num_envs=8, env_kwargs={"task": "sorting"})
    new_best = Recorder()
    evaluation = EvalCallback(eval_every=1, episodes=8, callback_on_new_best=new_best)
    agent.learn(1, callback=evaluation)
    assert {"eval/gold", "eval/success_rate", "eval/position_accuracy"} <= set(agent.history[0])
    assert len(new_best.seen) == 1 and evaluation.best == agent.history[0]["eval/gold"]


def test_checkpoint_callback_every_n_and_keep_all(make_agent_env, tmp_path):
    agent = REINFORCE(make_agent_env(), seed=0)
    agent.learn(100_000, callback=[CheckpointCallback(2, tmp_path / "all", keep_all=True),
                                   CheckpointCallback(2, tmp_path / "last"),
                                   lambda a, m: a.iterations < 4])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["iteration-2", "iteration-4"]
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    assert state["iterations"] == 4
    rhythm = Recorder()
    agent.learn(100_000, callback=[EveryNIterations(3, rhythm), lambda a, m: a.iterations < 7])
    assert [s[2] for s in rhythm.seen] == [6]  # by the agent's count, which a resumed run keeps


def test_run_logger_writes_the_folder_as_training_goes(make_agent_env, tmp_path):
    agent = REINFORCE(make_agent_env(), seed=0)
    seen: list[int] = []

    def look(a, m):  # after the logger: the folder already holds this iteration
        seen.append(len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()))
        csv_rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
        assert len(csv_rows) == a.iterations + 1
        return a.iterations < 3

    logger = RunLogger(tmp_path / "run", plot_every=2)
    agent.learn(100_000, callback=[logger, look])
    assert seen == [1, 2, 3]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert parse_report_to("tensorboard, wandb") == ["tensorboard", "wandb"] and parse_report_to("none") == []
    with pytest.raises(ValueError, match="unknown"):
        parse_report_to("mlflow")


def test_evaluating_during_training_does_not_change_training(make_agent_env):
    def train(callback):
        agent = PPO(make_agent_env(), seed=0, num_minibatches=2, num_epochs=1)
        agent.learn(300, callback=callback)
        timing = (
            "charts/rollout_seconds",
            "charts/env_seconds",
            "charts/update_seconds",
            "charts/tokens_per_second",
        )
        return [
            {k: v for k, v in row.items() if not k.startswith("eval/") and k not in timing}
            for row in agent.history
        ]

    plain = train(None)
    assert len(plain) >= 3
    assert train(EvalCallback(eval_every=1, episodes=8)) == plain  # own env, own RNG, beta untouched
