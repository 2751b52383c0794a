"""The benchmark runner (textenv-bench): specs, the results file, kill and resume, the statistics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents import benchmark, benchstats
from agents.benchmark import AgentSpec, Job, Protocol, ResultsFile
from textenv import tasks

ROOT = Path(__file__).resolve().parents[1]


def test_agent_specs_parse_and_print_canonically():
    spec = AgentSpec.parse("ppo: kl_target=none , kl_coef=0.05")
    assert spec.name == "ppo" and spec.settings == {"kl_coef": 0.05, "kl_target": None}
    assert spec.label == "ppo:kl_coef=0.05,kl_target=none"
    assert AgentSpec.parse(spec.label) == spec
    assert AgentSpec.parse("trl-rloo:learning_rate=1e-3").label == "trl-rloo:learning_rate=0.001"
    assert AgentSpec.parse("trl-grpo").is_peer and not AgentSpec.parse("reinforce").is_peer
    with pytest.raises(SystemExit, match="unknown agent 'a2c'"):
        AgentSpec.parse("a2c")
    with pytest.raises(SystemExit, match="key=value"):
        AgentSpec.parse("ppo:learning_rate")
    # the env's settings go to the env, the rest to the agent
    lora = benchmark.expected_config(
        AgentSpec.parse("ppo:lora=8,frozen_dtype=bfloat16,learning_rate=1e-3"), "reviews"
    )
    assert lora is not None and lora["learning_rate"] == 0.001 and "lora" not in lora
    assert lora["env_kwargs"]["lora"] == 8 and lora["env_kwargs"]["frozen_dtype"] == "bfloat16"


def test_budgets_for_every_task_or_one():
    assert benchmark.parse_budgets([], ["sorting"]) == (None, {})
    assert benchmark.parse_budgets(["5000", "sorting=2e3"], ["sorting", "reviews"]) == (
        5000,
        {"sorting": 2000},
    )
    protocol = Protocol(budget=5000, budgets={"sorting": 2000}, budget_scale=0.5)
    assert protocol.budget_of(tasks.load("sorting")) == 1000
    assert protocol.budget_of(tasks.load("reviews")) == 2500
    assert Protocol().budget_of(tasks.load("treasure")) == tasks.load("treasure").budget
    with pytest.raises(SystemExit, match="not one of the tasks"):
        benchmark.parse_budgets(["treasure=10"], ["sorting"])
    with pytest.raises(SystemExit, match="TASK=TOKENS"):
        benchmark.parse_budgets(["lots"], ["sorting"])


def test_plan_is_tasks_by_seeds_by_agents_with_unique_keys():
    jobs = benchmark.plan(["sorting", "reviews"], [AgentSpec("ppo"), AgentSpec("reinforce")], [0, 1, 2])
    assert len(jobs) == 12 and len({j.key for j in jobs}) == 12
    assert jobs[0] == Job("sorting", "ppo", 0) and jobs[0].key == "sorting/ppo/seed0"
    assert jobs[1] == Job("sorting", "reinforce", 0) and jobs[2] == Job("sorting", "ppo", 1)
    assert {j.task for j in jobs[:6]} == {"sorting"}


def test_results_file_appends_whole_lines_and_drops_a_torn_one(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    assert results.read() == []
    results.append({"key": "a", "x": 1.5})
    results.append({"key": "b", "x": float("nan")})
    with results.path.open("a") as handle:  # a crash half-way through a third line
        handle.write('{"key": "c", "x"')
    assert [r["key"] for r in results.read()] == ["a", "b"]
    results.repair()
    results.append({"key": "d"})
    assert [r["key"] for r in results.read()] == ["a", "b", "d"]
    assert results.path.read_text().count("\n") == 3


def test_task_bars_are_judged_on_evaluation_summaries():
    task = tasks.load("reviews")
    assert task.bar_text == "success_rate >= 0.9 and kl <= 10"
    assert task.meets_bar({"success_rate": 0.95, "kl": 4.0})
    assert not task.meets_bar({"success_rate": 0.95, "kl": 12.0})
    assert not task.meets_bar({"success_rate": 0.5, "kl": 1.0})
    with pytest.raises(KeyError, match="kl"):
        task.meets_bar({"success_rate": 1.0})
    assert all(t.bar for t in map(tasks.load, tasks.names()))


def _runner(out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "agents.benchmark", "--tasks", "sorting", "--agents", "reinforce"]
    command += ["--seeds", "3", "--budget", "300", "--eval-points", "1", "--eval-episodes", "8"]
    command += ["--workers", "1", "--threads", "1", "--out", str(out), "--no-report", *extra]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(") ")[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.slow  # about 40 s: three runs in their own processes, one of them killed
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; the runner's kill guard is Linux's"
)
def test_a_killed_runner_resumes_without_doing_a_run_twice(tmp_path):
    out = tmp_path / "bench"
    results = out / "results.jsonl"
    first = _runner(out)
    deadline = time.monotonic() + 240
    while not (results.is_file() and results.read_text().count("\n") >= 1):
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.2)
    children = _children_of(first.pid)
    first.send_signal(signal.SIGKILL)  # no clean-up: the runner dies mid-run
    first.wait()
    # the run in flight dies with it: killed by the kernel, or, if it was still importing, on its own
    deadline = time.monotonic() + 60
    while [pid for pid in children if _alive(pid)]:
        assert time.monotonic() < deadline, "a run outlived its runner"
        time.sleep(0.2)
    before = results.read_text().splitlines()
    assert 1 <= len(before) < 3

    second = _runner(out)
    output = second.communicate(timeout=300)[0].decode()
    assert second.returncode == 0, output
    assert f"{len(before)} of 3 runs already in" in output
    after = results.read_text().splitlines()
    assert after[: len(before)] == before  # finished runs are kept as they were
    keys = [json.loads(line)["key"] for line in after]
    assert sorted(keys) == [f"sorting/reinforce/seed{s}" for s in range(3)]  # each run exactly once

    third = _runner(out)  # nothing left to do
    assert "3 of 3 runs already in" in third.communicate(timeout=120)[0].decode()
    assert results.read_text().splitlines() == after
    row = json.loads(after[0])
    assert row["protocol"] == {
        "budget_scale": 1.0,
        "budget": 300,
        "budgets": None,
        "eval_points": 1,
        "eval_episodes": 8,
        "holdout": 0.2,
    }
    assert row["curve"][0]["timesteps"] == 0 and row["final"]["timesteps"] >= 300
    assert {"gold", "rm_score", "kl", "success_rate", "train_cpu_seconds"} <= set(row["final"])
    assert row["versions"]["torch"] and row["machine"]["cpus"]
    # what a run records is what the runner expects of today's defaults (else resuming would object)
    assert row["config"] == benchmark.expected_config(AgentSpec.parse("reinforce"), "sorting")


def test_each_worker_gets_its_own_cpus():
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    slots = benchmark.cpu_slots(workers=2, threads=1)
    shares = [slots.get_nowait() for _ in range(2)]
    if len(usable) >= 2:
        assert shares == [usable[:1], usable[1:2]]
    else:
        assert shares == [None, None]  # not enough CPUs to pin: nobody is pinned
    assert benchmark.cpu_slots(workers=1, threads=len(usable) + 1).get_nowait() is None


def test_a_protocol_is_the_same_when_a_line_predates_a_field():
    saved = {"budget_scale": 1.0, "budget": None, "eval_points": 10, "eval_episodes": 256, "holdout": 0.2}
    assert benchmark.same_protocol(saved, Protocol())
    assert not benchmark.same_protocol(saved | {"eval_points": 5}, Protocol())
    assert not benchmark.same_protocol(saved | {"unknown": 1}, Protocol())
    assert not benchmark.same_protocol(None, Protocol())


def test_resuming_with_another_protocol_is_refused(tmp_path):
    ResultsFile(tmp_path / "results.jsonl").append({"key": "x", "protocol": {"budget": 1}})
    with pytest.raises(SystemExit, match="another protocol"):
        benchmark.run_all([Job("sorting", "ppo", 0)], Protocol(), tmp_path)


def test_runs_made_with_other_defaults_stop_the_runner_or_are_set_aside(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    jobs = [Job("sorting", "ppo", 0), Job("sorting", "reinforce", 0), Job("sorting", "trl-rloo", 0)]
    today = {a: benchmark.expected_config(AgentSpec.parse(a), "sorting") for a in ("ppo", "reinforce")}
    assert today["ppo"]["env_kwargs"]["task"] == "sorting" and today["reinforce"]["minibatch_size"] >= 1
    old = today["reinforce"] | {"learning_rate": 5e-4, "num_envs": 3}  # as if the defaults had moved since
    for job, config in zip(jobs, [today["ppo"], old, {"anything": 1}], strict=True):
        results.append({"key": job.key, "config": config})
    results.append({"key": "reviews/reinforce/seed0", "config": old})  # not among the jobs: left alone
    assert benchmark.changed_settings({"config": today["ppo"]}, today["ppo"]) == {}

    with pytest.raises(SystemExit, match=r"1 run\(s\).*reinforce: learning_rate 0.0005 -> .*num_envs 3 ->"):
        benchmark.set_aside_changed(results, jobs, rerun=False)
    assert len(results.read()) == 4  # nothing moved without --rerun-changed

    benchmark.set_aside_changed(results, jobs, rerun=True)
    kept = [line["key"] for line in results.read()]
    assert kept == ["sorting/ppo/seed0", "sorting/trl-rloo/seed0", "reviews/reinforce/seed0"]
    aside = ResultsFile(tmp_path / "results-replaced.jsonl").read()
    assert [line["key"] for line in aside] == ["sorting/reinforce/seed0"] and aside[0]["config"] == old
    benchmark.set_aside_changed(results, jobs, rerun=False)  # nothing left to object to


def _fake_run(task: str, agent: str, seed: int, final_gold: float, reached: int | None) -> dict:
    """A results line with the fields the report reads (synthetic numbers, to check the statistics)."""
    budget = 1000
    curve = [
        {
            "timesteps": t,
            "gold": g,
            "rm_score": 2 * g,
            "kl": t / 200,
            "success_rate": max(0.0, g),
            "train_cpu_seconds": t / 10,
            "train_wall_seconds": t / 10,
        }
        for t, g in ((0, 0.0), (500, final_gold / 2), (1000, final_gold))
    ]
    to_bar = None
    if reached is not None:
        to_bar = {"timesteps": reached, "train_cpu_seconds": reached / 10, "train_wall_seconds": reached / 5}
    return {
        "key": f"{task}/{agent}/seed{seed}",
        "task": task,
        "agent": agent,
        "seed": seed,
        "budget": budget,
        "protocol": {"eval_episodes": 8, "holdout": 0.2, "eval_points": 2},
        "curve": curve,
        "final": curve[-1],
        "to_bar": to_bar,
    }


def test_iqm_and_its_interval_are_rliables():
    point, low, high = benchstats.iqm_ci(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), reps=200)
    assert point == pytest.approx(3.0)  # the middle half: 2, 3, 4
    assert low <= point <= high and high < 100


def test_tokens_to_bar_counts_runs_that_never_reach_it_as_slowest():
    runs = [{"to_bar": {"timesteps": 100}}, {"to_bar": {"timesteps": 300}}, {"to_bar": None}]
    assert benchstats.to_bar_text(runs, "timesteps", "{:,.0f}") == "300 (2/3)"
    assert benchstats.to_bar_text(runs[1:], "timesteps", "{:.0f}") == "not reached (1/2)"


def test_long_agent_names_break_at_commas_in_legends():
    long = "ppo:clip_range=0.38,lam=0.94,learning_rate=0.00045,num_envs=64,num_epochs=1,vf_coef=0.036"
    label = benchstats.legend_label(long, width=30)
    lines = label.split("\n")
    assert len(lines) > 1 and all(len(line) <= 30 for line in lines)
    assert label.replace("\n", "") == long  # nothing lost or added but the breaks
    assert benchstats.legend_label("trl-rloo:learning_rate=0.001") == "trl-rloo:learning_rate=0.001"


@pytest.mark.parametrize("count", [2, 6, 9])
def test_the_figure_legend_fits_across_the_figure(count):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    settings = "lr_final=0.0001,minibatch_size=8,num_envs=16"
    agents = [f"reinforce:lr_decay_timesteps=12000{i},{settings}" for i in range(count)]
    labels = [benchstats.legend_label(a) for a in agents]
    fig, _ = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    ncol = benchstats.legend_columns(labels, fig.get_figwidth())
    assert 1 <= ncol <= min(count, 5)
    handles = [Line2D([], [], marker="o") for _ in labels]
    legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
    fig.canvas.draw()
    box, page = legend.get_window_extent(), fig.bbox
    plt.close(fig)
    assert page.x0 <= box.x0 and box.x1 <= page.x1  # no label cut off at either side
    if count > ncol:  # and no more rows than needed: one column more would not fit
        assert box.width * (ncol + 1) / ncol > page.width * 0.9


def test_report_tables_and_plots(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    for seed in range(3):
        results.append(_fake_run("sorting", "good", seed, 0.8 + 0.01 * seed, 500))
        results.append(_fake_run("sorting", "bad", seed, 0.2 + 0.01 * seed, None))
        results.append(_fake_run("treasure", "good", seed, 0.5, 1000))
        results.append(_fake_run("treasure", "bad", seed, 0.1, None))
    written = benchstats.write_report(tmp_path, reps=50)
    assert {p.name for p in written} == {"report.md", "curves.png", "profile.png", "improvement.png"}
    assert all(p.stat().st_size > 1000 for p in written)
    report = (tmp_path / "report.md").read_text()
    assert "### sorting" in report and "### treasure" in report
    good = next(line for line in report.splitlines() if line.startswith("| good | 3 | +0.810"))
    assert "500 (3/3)" in good
    assert "not reached (0/3)" in next(line for line in report.splitlines() if line.startswith("| bad | 3"))
    after_header = report.split("P(row > column)")[1]
    improvement = next(line for line in after_header.splitlines() if line.startswith("| good | "))
    assert improvement.split("|")[3].strip().startswith("1.00")  # good beats bad on every run of every task


def test_a_results_line_keeps_a_thinned_history():
    from agents.benchmark import thin

    rows = [{"charts/timesteps": float(t)} for t in range(1001)]
    kept = thin(rows, 5)
    assert [r["charts/timesteps"] for r in kept] == [0.0, 250.0, 500.0, 750.0, 1000.0]
    assert thin(rows[:3], 5) == rows[:3] and thin(rows, 1) == rows[-1:] and thin(rows, 0) == []
    assert len(thin(rows)) == 400 and thin(rows)[-1] == rows[-1]
