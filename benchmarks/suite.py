"""Does the task suite tell RL algorithms apart? Every agent on every task, over seeds, gold beside the proxy.

Each agent trains with its default settings (and the agents' default adaptive KL: beta 0.2, target 6
nats) for its task's documented budget (``textenv.tasks.load(name).budget`` response tokens). The policy
itself (epsilon-greedy without its exploration) then answers ``--eval-episodes`` fixed-seed prompts of
the task at the env's temperature, also after 20% and 50% of the budget; gold, success rate, reward-model
score and KL are recorded at each of these points, and the training rollouts' gold at every iteration.

    python benchmarks/suite.py                               # 5 tasks x 3 agents x 5 seeds
    python benchmarks/suite.py --tasks sorting treasure --agents ppo reinforce --seeds 0 1 2
    python benchmarks/suite.py --report-only                 # redo tables and plots from the run files

Every (task, agent, seed) runs in its own process and, when it finishes, writes one JSON file under
``OUT/runs/`` (written to a temporary name, then renamed, so a file is whole or absent); a re-run skips
the runs whose file exists, so a stopped benchmark resumes where it stopped. ``--workers`` runs several
at once, each with ``--threads`` torch threads.

The report (``OUT/suite.md``, ``OUT/suite.png``, ``OUT/summary.json``) gives per task and agent the final
gold as the mean over seeds with a 95% Student-t confidence interval (with 5 seeds a bootstrap interval
is too narrow; ``scipy.stats.t``), the gold after 20% of the budget, the success rate, the proxy and KL,
and each run's training wall and process CPU time (CPU time survives a loaded machine). It then checks
the suite's bars: on how many tasks two agents' intervals do not overlap, and whether any task has every
agent within 5% of the best reachable gold after 20% of its budget (progress ``(gold - reference) /
(best - reference) >= 0.95``: saturation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

AGENTS = ("ppo", "reinforce", "egreedy")
FRACTIONS = (0.2, 0.5, 1.0)  # evaluation points, as shares of the budget
SATURATION = 0.95  # progress at 20% of the budget at which an agent counts as saturated


# ----------------------------------------------------------------------------- one run (a child process)
def run_one(
    task_name: str, agent_name: str, seed: int, eval_episodes: int, threads: int, budget_scale: float = 1.0
) -> dict[str, Any]:
    """Train one agent on one task with one seed (or, for ``"reference"``, only evaluate the start)."""
    import torch
    import transformers

    from agents import evaluation
    from agents.base import DEFAULT_ENV_KWARGS
    from agents.train import agent_classes
    from textenv import tasks

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    task = tasks.load(task_name)
    cls = agent_classes()["ppo" if agent_name == "reference" else agent_name]
    agent = cls("TextRLHF-v0", seed=seed, env_kwargs=DEFAULT_ENV_KWARGS | {"task": task_name})
    eval_env = evaluation.make_eval_env(agent, num_envs=min(256, eval_episodes))
    load_start = os.getloadavg()
    points = []
    wall = cpu = 0.0
    fractions = (0.0,) if agent_name == "reference" else FRACTIONS
    budget = int(task.budget * budget_scale)

    def on_iteration(agent_: Any, metrics: dict[str, float]) -> None:
        rollout = agent_.last_rollout
        metrics.update(evaluation.gold_metrics(task, rollout.prompts, rollout.responses))

    for fraction in fractions:
        remaining = int(fraction * budget) - agent.num_timesteps
        if remaining > 0:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            agent.learn(remaining, callback=on_iteration)
            wall += time.perf_counter() - start_wall
            cpu += time.process_time() - start_cpu
        summary, _ = evaluation.evaluate(agent, eval_env, eval_episodes)
        points.append({"fraction": fraction, "timesteps": agent.num_timesteps, **summary})
    return {
        "task": task_name,
        "agent": agent_name,
        "seed": seed,
        "budget": budget,
        "eval_episodes": eval_episodes,
        "points": points,
        "final": points[-1],
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
        "threads": threads,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "config": {k: v for k, v in vars(agent.config).items()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": platform.machine(),
        "history": agent.history,
    }


def _run_file(out: Path, task: str, agent: str, seed: int) -> Path:
    return out / "runs" / f"{task}-{agent}-s{seed}.json"


def child(args: argparse.Namespace) -> None:
    task, agent, seed = args.run[0], args.run[1], int(args.run[2])
    result = run_one(task, agent, seed, args.eval_episodes, args.threads, args.budget_scale)
    path = _run_file(args.out, task, agent, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, path)  # atomic: the file is whole or absent


# ----------------------------------------------------------------------------- statistics and report
def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t confidence interval of the mean of ``values``."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out/runs``, in the registry's order of tasks, then agents, then seeds."""
    from textenv import tasks

    runs = [json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*.json")]
    task_order = {name: i for i, name in enumerate(tasks.names())}
    agent_order = {name: i for i, name in enumerate(("reference", *AGENTS))}
    return sorted(
        runs,
        key=lambda r: (
            task_order.get(r["task"], len(task_order)),
            r["task"],
            agent_order.get(r["agent"], len(agent_order)),
            r["agent"],
            r["seed"],
        ),
    )


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and agent: intervals, progress at 20%, times; the separation and saturation checks."""
    from textenv import tasks

    report: dict[str, Any] = {}
    for task_name in dict.fromkeys(r["task"] for r in runs):
        task = tasks.load(task_name)
        reference = next((r for r in runs if r["task"] == task_name and r["agent"] == "reference"), None)
        ref_gold = reference["final"]["gold"] if reference else None
        agents: dict[str, Any] = {}
        for agent in dict.fromkeys(
            r["agent"] for r in runs if r["task"] == task_name and r["agent"] != "reference"
        ):
            group = [r for r in runs if r["task"] == task_name and r["agent"] == agent]
            finals = [r["final"]["gold"] for r in group]
            at20 = [next(p["gold"] for p in r["points"] if p["fraction"] == FRACTIONS[0]) for r in group]
            mean, low, high = t_interval(finals)
            entry = {
                "seeds": [r["seed"] for r in group],
                "gold": finals,
                "gold_mean": mean,
                "gold_ci": [low, high],
                "gold_at_20": at20,
                "gold_at_20_mean": statistics.fmean(at20),
                "success_rate_mean": statistics.fmean(r["final"]["success_rate"] for r in group),
                "rm_score_mean": statistics.fmean(r["final"]["rm_score"] for r in group),
                "kl_mean": statistics.fmean(r["final"]["kl"] for r in group),
                "wall_seconds": [r["train_wall_seconds"] for r in group],
                "cpu_seconds": [r["train_cpu_seconds"] for r in group],
            }
            if ref_gold is not None and task.best_gold > ref_gold:
                entry["progress_at_20"] = (entry["gold_at_20_mean"] - ref_gold) / (task.best_gold - ref_gold)
            agents[agent] = entry
        names = list(agents)
        separated = [
            (a, b)
            for i, a in enumerate(names)
            for b in names[i + 1 :]
            if agents[a]["gold_ci"][0] > agents[b]["gold_ci"][1]
            or agents[b]["gold_ci"][0] > agents[a]["gold_ci"][1]
        ]
        progress = [e.get("progress_at_20") for e in agents.values()]
        report[task_name] = {
            "budget": max(r["budget"] for r in runs if r["task"] == task_name),
            "best_gold": task.best_gold,
            "reference": reference["final"] if reference else None,
            "agents": agents,
            "separated_pairs": separated,
            "saturated": bool(progress) and all(p is not None and p >= SATURATION for p in progress),
        }
    return report


HEADER = (
    "| agent | final gold, mean [95% CI] | gold at 20% | progress at 20% | success | RM score | KL "
    "| wall s (median / max) | CPU s (median) |"
)


def _row(agent: str, e: dict[str, Any]) -> str:
    low, high = e["gold_ci"]
    progress = f"{e['progress_at_20']:.0%}" if "progress_at_20" in e else ""
    walls, cpus = e["wall_seconds"], e["cpu_seconds"]
    cells = [
        f"{agent} (n={len(e['seeds'])})",
        f"{e['gold_mean']:+.3f} [{low:+.3f}, {high:+.3f}]",
        f"{e['gold_at_20_mean']:+.3f}",
        progress,
        f"{e['success_rate_mean']:.1%}",
        f"{e['rm_score_mean']:+.3f}",
        f"{e['kl_mean']:.2f}",
        f"{statistics.median(walls):.0f} / {max(walls):.0f}",
        f"{statistics.median(cpus):.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for task_name, t in report.items():
        ref = t["reference"]
        ref_text = (
            f"reference gold {ref['gold']:+.3f}, success {ref['success_rate']:.1%}" if ref else "no reference"
        )
        lines += [
            f"### {task_name}",
            "",
            f"Budget {t['budget']:,} tokens; best reachable gold {t['best_gold']:+.1f}; {ref_text}.",
            "",
            HEADER,
            "|---|---|---|---|---|---|---|---|---|",
            *(_row(agent, e) for agent, e in t["agents"].items()),
        ]
        pairs = ", ".join(f"{a} vs {b}" for a, b in t["separated_pairs"]) or "none"
        saturated = "yes" if t["saturated"] else "no"
        lines += [
            "",
            f"Intervals that do not overlap: {pairs}. Saturated at 20% of the budget: {saturated}.",
            "",
        ]
    separating = [name for name, t in report.items() if t["separated_pairs"]]
    saturated_tasks = [name for name, t in report.items() if t["saturated"]]
    walls = [w for t in report.values() for e in t["agents"].values() for w in e["wall_seconds"]]
    lines += [
        "### The suite's bars",
        "",
        f"- tasks where two agents' 95% intervals of final gold do not overlap: {len(separating)} "
        f"({', '.join(separating) or 'none'}; the bar: at least 2)",
        "- tasks where every agent is within 5% of the best reachable gold after 20% of the budget: "
        f"{', '.join(saturated_tasks) or 'none'} (the bar: none)",
    ]
    if walls:
        lines.append(f"- longest run (training wall time): {max(walls):.0f} s (the bar: 300 s)")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    """Rows: tasks; columns: gold, proxy (RM score), KL of the training rollouts against tokens (mean and
    min-max band over seeds), with the evaluation points (mean over seeds) as markers on the gold panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    task_names = list(dict.fromkeys(r["task"] for r in runs))
    panels = (
        ("gold/score", "gold"),
        ("objective/scores", "proxy: reward score"),
        ("objective/kl", "KL (nats)"),
    )
    fig, axes = plt.subplots(len(task_names), 3, figsize=(13, 2.9 * len(task_names)), squeeze=False)
    colours = {"ppo": "C0", "reinforce": "C1", "egreedy": "C2"}
    for row, task_name in enumerate(task_names):
        for col, (key, title) in enumerate(panels):
            ax = axes[row, col]
            for agent in dict.fromkeys(r["agent"] for r in runs if r["task"] == task_name):
                group = [r for r in runs if r["task"] == task_name and r["agent"] == agent]
                if agent == "reference":
                    if key == "gold/score":
                        ax.axhline(group[0]["final"]["gold"], color="grey", ls=":", lw=1, label="reference")
                    continue
                n = min(len(r["history"]) for r in group)
                x = np.array([m["charts/timesteps"] for m in group[0]["history"][:n]])
                y = np.array([[m[key] for m in r["history"][:n]] for r in group])
                colour = colours.get(agent)
                ax.plot(x, y.mean(0), color=colour, label=agent)
                ax.fill_between(x, y.min(0), y.max(0), color=colour, alpha=0.15)
                if key == "gold/score":
                    for fraction in FRACTIONS:
                        pts = [p for r in group for p in r["points"] if p["fraction"] == fraction]
                        ax.plot(
                            statistics.fmean(p["timesteps"] for p in pts),
                            statistics.fmean(p["gold"] for p in pts),
                            "o",
                            color=colour,
                            ms=4,
                        )
            ax.set_title(f"{task_name}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == len(task_names) - 1:
                ax.set_xlabel("response tokens")
        axes[row, 0].legend(fontsize=7)
    fig.suptitle("training rollouts (mean, min-max over seeds); dots: evaluations of the policy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report_all(out: Path) -> None:
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"no finished runs in {out / 'runs'}")
    report = analyse(runs)
    text = markdown(report)
    (out / "suite.md").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(runs, out / "suite.png")
    print(text)
    print(f"wrote {out / 'suite.md'}, {out / 'summary.json'}, {out / 'suite.png'}")


# ----------------------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> None:
    from textenv import tasks

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=tasks.names(), choices=tasks.names())
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval-episodes", type=int, default=512, help="episodes of each evaluation point")
    parser.add_argument("--workers", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/suite"), help="results folder")
    parser.add_argument("--report-only", action="store_true", help="only redo the report from the run files")
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every task's budget (for a quick smoke run)"
    )
    parser.add_argument("--run", nargs=3, metavar=("TASK", "AGENT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        child(args)
        return
    if not args.report_only:
        jobs = [(t, "reference", 0) for t in args.tasks]
        jobs += [(t, a, s) for t in args.tasks for a in args.agents for s in args.seeds]
        todo = [j for j in jobs if not _run_file(args.out, *j).is_file()]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; {len(todo)} to go", flush=True)
        (args.out / "logs").mkdir(parents=True, exist_ok=True)
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        def launch(job: tuple[str, str, int]) -> int:
            task, agent, seed = job
            log = args.out / "logs" / f"{task}-{agent}-s{seed}.log"
            command = [sys.executable, __file__, "--run", task, agent, str(seed), "--out", str(args.out)]
            command += ["--eval-episodes", str(args.eval_episodes), "--threads", str(args.threads)]
            command += ["--budget-scale", str(args.budget_scale)]
            with log.open("w") as handle:
                return subprocess.run(
                    command, stdout=handle, stderr=subprocess.STDOUT, check=False
                ).returncode

        failed = []
        with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(todo), unit="run") as bar:
            for job, code in zip(todo, pool.map(launch, todo), strict=True):
                bar.update()
                bar.set_postfix_str(f"{job[0]} {job[1]} s{job[2]}")
                if code != 0:
                    failed.append(job)
        if failed:
            print(f"{len(failed)} run(s) failed (see {args.out / 'logs'}): {failed}", flush=True)
    report_all(args.out)


if __name__ == "__main__":
    main()
