"""textenv-tune: the search space, a tiny study that resumes, orphaned trials, the best config trains."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from agents import REINFORCE, tune  # noqa: E402
from agents.tune import Setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = Setup(agent="reinforce", task="sorting", budget=200, eval_points=2, eval_episodes=8, threads=1)


def test_space_params_and_fixed_settings():
    space = tune.space_of("grpo", None, {"kl_in": "loss", "clip_range": 0.3})
    assert "clip_range" not in space and "learning_rate" in space and "group_size" in space
    assert list(tune.space_of("ppo", ["learning_rate", "lam"], {})) == ["learning_rate", "lam"]
    with pytest.raises(SystemExit, match="no searched setting group_size"):
        tune.space_of("ppo", ["group_size"], {})
    assert tune.parse_fixed(["kl-coef=0.05", "kl_in=loss", "scale_rewards=false"]) == {
        "kl_coef": 0.05,
        "kl_in": "loss",
        "scale_rewards": False,
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        tune.parse_fixed(["learning_rate"])
    for agent, space in tune.SPACES.items():  # every searched setting is one the agent has
        from agents.train import agent_classes

        fields = set(agent_classes()[agent].Config.__dataclass_fields__)
        assert set(space) <= fields, (agent, set(space) - fields)


def test_trial_value_is_the_mean_or_the_last_point():
    curve = [{"gold": -1.0, "rm_score": 0.0}, {"gold": 0.2, "rm_score": 1.0}, {"gold": 0.6, "rm_score": 3.0}]
    assert Setup("ppo", "reviews").value(curve) == pytest.approx(0.4)  # the start is left out
    assert Setup("ppo", "reviews", summary="final").value(curve) == pytest.approx(0.6)
    assert Setup("ppo", "reviews", objective="proxy").value(curve) == pytest.approx(2.0)
    assert Setup("ppo", "reviews").value(curve[:1]) == -1.0


def test_on_several_tasks_the_value_averages_normalised_gold():
    """sorting's gold spans [0, 1], reviews' [-1, 1]: each is put on 0 (its start) .. 1 (its best)."""
    curves = {
        "sorting": [{"gold": 0.2}, {"gold": 0.4}, {"gold": 0.6}],  # normalised 0.25, 0.5
        "reviews": [{"gold": -0.5}, {"gold": 0.25}, {"gold": 1.0}],  # normalised 0.5, 1.0
    }
    both = Setup("ppo", "sorting+reviews")
    assert both.task_names == ["sorting", "reviews"]
    assert both.combined(curves) == pytest.approx((0.375 + 0.75) / 2)
    assert Setup("ppo", "sorting+reviews", summary="final").combined(curves) == pytest.approx(0.75)
    assert both.combined({"sorting": curves["sorting"][:2]}) == pytest.approx(0.25)  # the first task so far
    assert Setup("ppo", "reviews").combined({"reviews": curves["reviews"]}) == pytest.approx(0.625)  # raw
    with pytest.raises(ValueError, match="scores gold"):
        Setup("ppo", "sorting+reviews", objective="proxy")


def test_a_study_on_two_tasks_trains_each_and_judges_by_both(tmp_path):
    out = tmp_path / "study"
    argv = ["--agent", "reinforce", "--task", "sorting", "verbosity", "--trials", "1", "--budget", "200"]
    argv += ["--eval-points", "2", "--eval-episodes", "8", "--threads", "1", "--sampler-seed", "0"]
    study = tune.main([*argv, "--out", str(out), "--no-progress"])
    assert study.study_name == "reinforce-sorting+verbosity"
    (trial,) = study.get_trials(deepcopy=False)
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # 2 points on sorting, then 2 on verbosity
    assert trial.intermediate_values[4] == pytest.approx(trial.value)
    attrs = trial.user_attrs
    for name in ("sorting", "verbosity"):
        assert {f"final_{name}_gold", f"final_{name}_kl", f"final_{name}_success_rate"} <= set(attrs)
    assert attrs["final_kl"] == max(attrs["final_sorting_kl"], attrs["final_verbosity_kl"])
    assert "final_gold" not in attrs  # no one figure: the summary names each task's
    assert json.loads((out / "best.json").read_text()) == {"agent": "reinforce", **trial.params}
    assert (out / "tasks.png").stat().st_size > 0  # final gold on one task against the other
    summary = (out / "summary.md").read_text()
    assert "# Tuning reinforce on sorting and verbosity" in summary
    assert (
        f"sorting {attrs['final_sorting_gold']:+.3f} / verbosity {attrs['final_verbosity_gold']:+.3f}"
        in summary
    )
    with pytest.raises(SystemExit, match="each task once"):
        tune.main([*argv, "--task", "sorting+sorting", "--out", str(tmp_path / "twice")])
    with pytest.raises(SystemExit, match="unknown task 'sortin'"):
        tune.main([*argv, "--task", "sortin", "--out", str(tmp_path / "typo")])
    with pytest.raises(SystemExit, match="scores gold"):
        tune.main([*argv, "--objective", "proxy", "--out", str(tmp_path / "proxy")])


def test_on_several_tasks_the_pruner_judges_only_the_last_task():
    """2 tasks of 3 points: a trial trailing on the first task's points goes on; on the last task's
    second point (step 5) it is pruned, as a one-task study prunes at its second point."""

    def trails_at(pruner: optuna.pruners.BasePruner) -> list[int]:
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for _ in range(4):
            leader = study.ask()
            for step in range(1, 7):
                leader.report(1.0, step)
            study.tell(leader, 1.0)
        trailing = study.ask()
        pruned = []
        for step in range(1, 7):
            trailing.report(0.0, step)
            if trailing.should_prune():
                pruned.append(step)
        return pruned

    assert trails_at(tune.make_pruner("median", before=3)) == [5, 6]
    assert trails_at(tune.make_pruner("median"))[0] == 2
    assert trails_at(tune.make_pruner("none")) == []


def test_a_trial_trailing_only_at_its_last_point_is_not_pruned(tmp_path, monkeypatch):
    """Trained to the end, a trial has nothing left to save: its last point is recorded, not pruned."""
    calls = []

    def fake_run(setup, settings, report):
        value = 1.0 if len(calls) < 4 else 0.0  # the fifth trial trails the four before it
        calls.append(settings)
        report(1, value, 1.0)  # not judged: the median pruner's warm-up
        report(2, value, 1.0)  # judged, but the last
        final = {"gold": value, "kl": 1.0, "train_cpu_seconds": 0.0}
        return {"value": value, "finals": {setup.task: final}, "curves": {}}

    monkeypatch.setattr(tune, "run_trial", fake_run)
    setup = Setup("reinforce", "sorting", budget=200, eval_points=2)
    study = tune.tune(setup, 5, tmp_path, sampler_seed=0, progress=False)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states == ["COMPLETE"] * 5 and study.get_trials(deepcopy=False)[4].value == 0.0


def test_a_tiny_study_resumes_and_writes_the_best_config(tmp_path):
    out = tmp_path / "study"
    study = tune.tune(TINY, 2, out, sampler_seed=0, progress=False)
    assert tune.finished(study) == 2
    for name in ("study.db", "best.json", "trials.csv", "history.png", "importances.png", "summary.md"):
        assert (out / name).is_file(), name
    best = json.loads((out / "best.json").read_text())
    winner = tune.best_trial(study)
    assert winner is not None
    assert best == {"agent": "reinforce", "task": "sorting", "timesteps": 200, **winner.params}
    assert winner.user_attrs["final_kl"] <= 10 and "final_gold" in winner.user_attrs

    again = tune.tune(TINY, 3, out, sampler_seed=0, progress=False)  # one more trial, not three
    trials = again.get_trials(deepcopy=False)
    assert len(trials) == 3 and tune.finished(again) == 3
    assert trials[2].params != trials[0].params  # a resumed seeded sampler draws new settings
    assert "| trial | state |" in (out / "summary.md").read_text()

    # a baseline: the agent's defaults with one setting changed, queued ahead of TPE's next draw
    queued = tune.tune(TINY, 4, out, sampler_seed=0, progress=False, enqueue={"learning_rate": 1e-3})
    last = queued.get_trials(deepcopy=False)[3]
    defaults = vars(REINFORCE.Config())
    assert last.params == {k: 1e-3 if k == "learning_rate" else defaults[k] for k in last.params}
    assert last.user_attrs["queued"] and last.state.name == "COMPLETE"  # never pruned
    assert f"| 3 | complete (queued) | {last.value:+.4f} |" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit, match="was run with"):
        tune.tune(Setup(**{**vars(TINY), "objective": "proxy"}), 4, out, progress=False)


def test_a_queued_trial_must_lie_in_the_searched_space():
    space = tune.space_of("reinforce", None, {})
    assert tune.queued_settings("reinforce", space, {})["group_size"] == REINFORCE.Config().group_size
    with pytest.raises(SystemExit, match=r"group_size=3 lies outside the study's range \(2, 4, 8\)"):
        tune.queued_settings("reinforce", space, {"group_size": 3})
    with pytest.raises(SystemExit, match=r"learning_rate=0\.5 lies outside the study's range"):
        tune.queued_settings("reinforce", space, {"learning_rate": 0.5})
    with pytest.raises(SystemExit, match="epsilon: not searched"):
        tune.queued_settings("reinforce", space, {"epsilon": 0.1})
    assert not tune.choice(True, False).holds(1) and tune.choice(64, 128).holds(64)


def test_settings_that_cannot_work_fail_their_trials_and_stop_the_worker(tmp_path):
    """group_size=3 divides no rollout size of the space: every trial fails, with its reason kept."""
    with pytest.raises(
        SystemExit, match="3 trials in a row failed; the last because ValueError: group_size=3"
    ):
        tune.tune(TINY, 5, tmp_path, fixed={"group_size": 3}, sampler_seed=0, progress=False)
    study = optuna.load_study(study_name="reinforce-sorting", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert all("must divide the number of sub-envs" in t.user_attrs["failed_because"] for t in trials)


def test_a_trial_whose_worker_died_is_failed_and_queued_again(tmp_path):
    study = tune.open_study(tmp_path, "orphans", "median", sampler_seed=0)
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
    trial.set_user_attr("worker", "gone")  # no lock file: its process is dead
    with tune.worker_lock(tmp_path) as alive:
        live = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
        live.set_user_attr("worker", alive)
        assert tune.worker_alive(tmp_path, alive)
        assert tune.recover_orphans(study, tmp_path) == [trial.number]  # the live worker's trial stays
    assert not tune.worker_alive(tmp_path, alive)  # its lock went with it
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "WAITING"}  # trial 0's settings queued again
    queued = study.get_trials(deepcopy=False)[2]
    assert queued.params == {} and queued.system_attrs["fixed_params"] == trial.params
    assert queued.user_attrs["retry_of"] == 0


def _tuner(out: Path, trials: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "agents.tune", "--agent", "reinforce", "--task", "sorting"]
    command += ["--trials", str(trials), "--budget", "600", "--eval-points", "3", "--eval-episodes", "8"]
    command += ["--threads", "1", "--sampler-seed", "1", "--out", str(out), "--no-progress"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _states(out: Path) -> list[str]:
    """The study's trial states in order, read from its file without Optuna: read-only, so that the test
    neither races the worker to create the schema nor holds a lock it needs (empty while there is none)."""
    return [state for state, _ in _trials(out)]


def _trials(out: Path) -> list[tuple[str, int]]:
    """(state, how many settings it has drawn) of each trial in order, read as :func:`_states` reads."""
    path = out / "study.db"
    if not path.is_file():
        return []
    query = (
        "SELECT t.state, COUNT(p.param_id) FROM trials t LEFT JOIN trial_params p ON p.trial_id = t.trial_id "
        "GROUP BY t.trial_id ORDER BY t.number"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return [(state, int(drawn)) for state, drawn in db.execute(query)]
    except sqlite3.OperationalError:  # the worker is still making the tables, or holds a write lock
        return []


@pytest.mark.slow  # about a minute: a study killed mid-trial, resumed, then its best config trained
def test_a_killed_study_resumes_and_its_best_config_trains(tmp_path):
    from agents.train import main as train_main

    out = tmp_path / "study"
    first = _tuner(out, 4)
    deadline = time.monotonic() + 240
    training = ("RUNNING", len(tune.space_of("reinforce", None, {})))  # every setting drawn: it trains
    while True:  # until a trial trains after one has finished
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "no trial finished in time"
        trials = _trials(out)
        if trials and trials[-1] == training and ("COMPLETE", training[1]) in trials:
            # a trial of this size can end within a second: freeze the worker, then look again, so that
            # the trial is still running when the worker dies
            first.send_signal(signal.SIGSTOP)
            if _trials(out)[-1:] == [training]:
                break
            first.send_signal(signal.SIGCONT)  # it ended in between: wait for the next one
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # mid-trial: no clean-up, the trial stays RUNNING in the file
    first.wait()
    assert _states(out)[-1] == "RUNNING"

    second = _tuner(out, 4)
    output = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0, output
    assert "marked failed, queued again" in output
    study = optuna.load_study(study_name="reinforce-sorting", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert tune.finished(study) == 4
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["failed_because"] == "its worker process died"
    retried = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params
    assert not [t for t in trials if t.state.name == "RUNNING"]

    best = json.loads((out / "best.json").read_text())
    run = tmp_path / "run"
    summary = train_main(["--config", str(out / "best.json"), "--run-dir", str(run), "--eval-episodes", "16"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["agent"] == "reinforce" and saved["task"] == "sorting"
    for key, value in best.items():
        if key not in ("agent", "task", "timesteps"):
            assert saved["config"][key] == value, key
    assert summary["timesteps"] >= best["timesteps"]
