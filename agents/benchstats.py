"""The benchmark's statistics, tables and plots, as the field reports them (Agarwal et al., 2021).

From ``results.jsonl`` (:mod:`agents.benchmark`): per task, the final gold, proxy and KL of each agent
as the interquartile mean (IQM) over seeds with a 95% stratified-bootstrap confidence interval, and the
response tokens and CPU seconds each run needed to reach the task's bar; learning curves (IQM and 95%
band at every evaluation point); across tasks, a performance profile of normalised gold and the
probability that each agent improves on each other. The intervals, IQM, profiles and probabilities are
``rliable``'s. Writes ``report.md``, ``curves.png``, ``profile.png`` and ``improvement.png``.

Normalised gold puts tasks on one scale: ``(gold - gold at the start) / (best reachable gold - gold at
the start)``, 0 for the reference policy, 1 for the best a response can do.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Bootstrap replications. rliable's default is 50,000; its bootstrap (arch's) takes ~1.5 ms a replication,
#: so a full suite's report takes minutes at 2,000 already. ``textenv-bench --reps`` changes it.
REPS = 2000
SEED = 0
METRICS = (("gold", "gold", "{:+.3f}"), ("rm_score", "proxy (RM score)", "{:+.3f}"), ("kl", "KL", "{:.2f}"))


def load(out: Path) -> list[dict[str, Any]]:
    from agents.benchmark import RESULTS, ResultsFile

    return ResultsFile(Path(out) / RESULTS).read()


def _order(rows: list[dict[str, Any]], key: str) -> list[str]:
    return list(dict.fromkeys(r[key] for r in rows))


def by_task(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{task: {agent: runs sorted by seed}}`` in the order of the suite and of first appearance."""
    from textenv import tasks

    names = tasks.names()
    ordered = sorted(_order(rows, "task"), key=lambda t: names.index(t) if t in names else len(names))
    return {
        t: {
            a: sorted((r for r in rows if r["task"] == t and r["agent"] == a), key=lambda r: r["seed"])
            for a in _order([r for r in rows if r["task"] == t], "agent")
        }
        for t in ordered
    }


def _estimates(
    scores: dict[str, Any], func: Callable[..., Any], reps: int, random_state: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """rliable's stratified bootstrap, without arch's warning that rliable passes it a RandomState."""
    from rliable import library as rly

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(scores, func, reps=reps, random_state=random_state)


def iqm_ci(values: np.ndarray, reps: int = REPS) -> tuple[float, float, float]:
    """IQM of ``values`` (runs,) or (runs, tasks) with its 95% stratified-bootstrap interval."""
    from rliable import metrics

    scores = np.asarray(values, dtype=float)
    scores = scores[:, None] if scores.ndim == 1 else scores
    if scores.shape[0] < 2:
        point = float(metrics.aggregate_iqm(scores))
        return point, float("nan"), float("nan")
    points, intervals = _estimates(
        {"x": scores},
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        reps=reps,
        random_state=np.random.RandomState(SEED),
    )
    return float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0])


def curve_iqm(runs: list[dict[str, Any]], key: str, reps: int = REPS) -> tuple[np.ndarray, ...]:
    """x (mean timesteps), IQM, low, high at every evaluation point shared by all ``runs``."""
    from rliable import metrics

    n = min(len(r["curve"]) for r in runs)
    x = np.array([np.mean([r["curve"][i]["timesteps"] for r in runs]) for i in range(n)])
    y = np.array([[r["curve"][i][key] for i in range(n)] for r in runs])  # (runs, points)
    if len(runs) < 2:
        return x, y[0], y[0], y[0]
    points, intervals = _estimates(
        {"x": y[:, None, :]},
        lambda s: np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])]),
        reps=reps,
        random_state=np.random.RandomState(SEED),
    )
    return x, points["x"], intervals["x"][0], intervals["x"][1]


def start_gold(runs: dict[str, list[dict[str, Any]]]) -> float:
    """Gold of the starting policy on a task: the mean of every run's first evaluation."""
    return float(np.mean([r["curve"][0]["gold"] for group in runs.values() for r in group]))


def normalised(task_name: str, gold: float, start: float) -> float:
    from textenv import tasks

    best = tasks.load(task_name).best_gold
    return (gold - start) / (best - start) if best > start else float("nan")


def to_bar_text(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    """Median over runs of ``to_bar[key]`` (a run that never reached the bar counts as infinitely slow),
    with how many reached it; "not reached" when half or more did not."""
    values = sorted(r["to_bar"][key] if r["to_bar"] else float("inf") for r in runs)
    reached = sum(v != float("inf") for v in values)
    median = statistics.median(values) if values else float("inf")
    shown = fmt.format(median) if median != float("inf") else "not reached"
    return f"{shown} ({reached}/{len(values)})"


def _interval(point: float, low: float, high: float, fmt: str) -> str:
    if np.isnan(low):
        return fmt.format(point)
    return f"{fmt.format(point)} [{fmt.format(low)}, {fmt.format(high)}]"


def task_table(task_name: str, runs: dict[str, list[dict[str, Any]]], reps: int = REPS) -> list[str]:
    from textenv import tasks

    task = tasks.load(task_name)
    budget = max(r["budget"] for group in runs.values() for r in group)
    lines = [
        f"### {task_name}",
        "",
        f"{task.summary}. Budget {budget:,} response tokens; bar: {task.bar_text}; gold of the starting "
        f"policy {start_gold(runs):+.3f}, best reachable {task.best_gold:+.1f}.",
        "",
        "| agent | runs | final gold, IQM [95% CI] | final proxy | final KL | success | tokens to bar "
        "| CPU s to bar | wall s to bar | training CPU s | training wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, group in runs.items():
        cells = [agent, str(len(group))]
        for key, _, fmt in METRICS:
            cells.append(_interval(*iqm_ci(np.array([r["final"][key] for r in group]), reps), fmt))
        cells.append(f"{statistics.fmean(r['final']['success_rate'] for r in group):.1%}")
        cells.append(to_bar_text(group, "timesteps", "{:,.0f}"))
        cells.append(to_bar_text(group, "train_cpu_seconds", "{:.0f}"))
        cells.append(to_bar_text(group, "train_wall_seconds", "{:.0f}"))
        cells.append(f"{statistics.median(r['final']['train_cpu_seconds'] for r in group):.0f}")
        cells.append(f"{statistics.median(r['final']['train_wall_seconds'] for r in group):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def score_matrix(
    grouped: dict[str, dict[str, list[dict[str, Any]]]], value: Callable[[str, dict[str, Any], float], float]
) -> dict[str, np.ndarray]:
    """``{agent: (runs, tasks)}`` of ``value(task, run, start gold)`` over the tasks every agent ran, the
    runs cut to the fewest any (task, agent) has."""
    agents = [a for a in _order([{"agent": a} for t in grouped.values() for a in t], "agent")]
    shared = [t for t, runs in grouped.items() if all(a in runs for a in agents)]
    if not shared:
        return {}
    n = min(len(grouped[t][a]) for t in shared for a in agents)
    return {
        a: np.array([[value(t, grouped[t][a][i], start_gold(grouped[t])) for t in shared] for i in range(n)])
        for a in agents
    }


def final_normalised_gold(grouped: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, np.ndarray]:
    return score_matrix(grouped, lambda t, r, start: normalised(t, r["final"]["gold"], start))


def improvement_table(scores: dict[str, np.ndarray], reps: int = REPS) -> tuple[list[str], np.ndarray]:
    """P(X > Y) of normalised final gold (rliable's probability of improvement, averaged over tasks)
    for every ordered pair, with 95% stratified-bootstrap intervals."""
    from rliable import metrics

    agents = list(scores)
    matrix = np.full((len(agents), len(agents)), np.nan)
    lines = ["| P(row > column) | " + " | ".join(agents) + " |", "|---|" + "---|" * len(agents)]
    for i, x in enumerate(agents):
        cells = []
        for j, y in enumerate(agents):
            if i == j:
                cells.append("")
                continue
            points, intervals = _estimates(
                {"p": (scores[x], scores[y])},
                metrics.probability_of_improvement,
                reps=reps,
                random_state=np.random.RandomState(SEED),
            )
            p, (low, high) = (
                float(points["p"]),
                intervals["p"][:, 0] if intervals["p"].ndim > 1 else intervals["p"],
            )
            matrix[i, j] = p
            cells.append(f"{p:.2f} [{float(low):.2f}, {float(high):.2f}]")
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines, matrix


def legend_label(agent: str, width: int = 40) -> str:
    """An agent's name for a legend or an axis: a long ``name:key=value,...`` broken over lines at commas."""
    if len(agent) <= width:
        return agent
    name, _, rest = agent.partition(":")
    lines = [name + ":"]
    for item in rest.split(","):
        if len(lines[-1]) + len(item) + 2 > width and not lines[-1].endswith(":"):  # room for the comma
            lines[-1] += ","
            lines.append(item)
        else:
            lines[-1] += ("" if lines[-1].endswith(":") else ",") + item
    return "\n".join(lines)


def legend_columns(labels: list[str], width_in: float, fontsize: float = 8.0, most: int = 5) -> int:
    """How many columns of a figure legend fit across ``width_in`` inches: a column is as wide as the
    longest line of any label (about 0.55 em a character) plus the marker and the padding."""
    longest = max((len(line) for label in labels for line in label.splitlines()), default=1)
    column_in = longest * 0.55 * fontsize / 72 + 0.7
    return max(1, min(len(labels), most, int(width_in // column_in)))


def plot_curves(grouped: dict[str, dict[str, list[dict[str, Any]]]], path: Path, reps: int = REPS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(grouped), 3, figsize=(13, 2.8 * len(grouped) + 0.8), squeeze=False, layout="constrained"
    )
    colors: dict[str, str] = {}  # one colour per agent in every panel, one legend for the figure
    for runs in grouped.values():
        for agent in runs:
            colors.setdefault(agent, f"C{len(colors) % 10}")
    for row, (task_name, runs) in enumerate(grouped.items()):
        for col, (key, title, _) in enumerate(METRICS):
            ax = axes[row, col]
            for agent, group in runs.items():
                x, y, low, high = curve_iqm(group, key, reps)
                ax.plot(x, y, color=colors[agent], marker="o", ms=2.5, lw=1.3)
                ax.fill_between(x, low, high, color=colors[agent], alpha=0.15)
            ax.set_title(f"{task_name}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == len(grouped) - 1:
                ax.set_xlabel("response tokens")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ms=3, lw=1.3) for c in colors.values()]
    labels = [legend_label(a) for a in colors]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=legend_columns(labels, fig.get_figwidth()),
        fontsize=8,
    )
    fig.suptitle("held-out evaluations: IQM over seeds and 95% stratified-bootstrap band", fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_profile(scores: dict[str, np.ndarray], path: Path, reps: int = REPS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    taus = np.linspace(-0.25, 1.0, 101)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        profiles, bands = rly.create_performance_profile(scores, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {a: f"C{i}" for i, a in enumerate(scores)}
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=bands, colors=colors, xlabel=r"normalised gold $\tau$", ax=ax
    )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[a], lw=2) for a in scores]
    ax.legend(handles, [legend_label(a) for a in scores], fontsize=8, loc="lower left")
    ax.set_title("performance profile: share of runs (all tasks) with normalised final gold > τ", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_improvement(agents: list[str], matrix: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(agents) + 2.5, 1.0 * len(agents) + 1.5))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
    for i in range(len(agents)):
        for j in range(len(agents)):
            if i != j:
                shade = "white" if abs(matrix[i, j] - 0.5) > 0.3 else "black"  # readable on dark cells
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8, color=shade)
    names = [legend_label(a, width=28) for a in agents]
    ax.set_xticks(range(len(agents)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(agents)), names, fontsize=8)
    ax.set_title("P(row's normalised final gold > column's), all tasks", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(
    rows: list[dict[str, Any]], reps: int = REPS
) -> tuple[str, dict[str, np.ndarray], np.ndarray | None]:
    grouped = by_task(rows)
    first = rows[0]
    lines = [
        "## Benchmark results",
        "",
        f"{len(rows)} runs; {first['protocol']['eval_episodes']} held-out episodes per evaluation "
        f"({first['protocol']['holdout']:.0%} of each task's prompts held out), "
        f"{first['protocol']['eval_points']} evaluations per run. IQM over seeds with 95% "
        f"stratified-bootstrap intervals ({reps} replications, rliable). "
        '"To bar": the median over runs of the first evaluation that meets the task\'s bar (a run that '
        "never does counts as slowest), with how many runs reached it. "
        "CPU and wall seconds are training only (process CPU time sums the threads).",
        "",
    ]
    for task_name, runs in grouped.items():
        lines += task_table(task_name, runs, reps)
    scores = final_normalised_gold(grouped)
    matrix = None
    if len(scores) > 1:
        lines += [
            "### All tasks",
            "",
            "Normalised final gold (0: the starting policy, 1: the best reachable):",
            "",
        ]
        lines += ["| agent | IQM [95% CI] | mean |", "|---|---|---|"]
        for agent, s in scores.items():
            point, low, high = iqm_ci(s, reps)
            lines.append(f"| {agent} | {_interval(point, low, high, '{:.3f}')} | {float(np.mean(s)):.3f} |")
        table, matrix = improvement_table(scores, reps)
        lines += [
            "",
            "Probability of improvement (normalised final gold, averaged over tasks):",
            "",
            *table,
            "",
        ]
    return "\n".join(lines) + "\n", scores, matrix


def write_report(out: Path, reps: int = REPS) -> list[Path]:
    """Write ``report.md`` and the plots beside ``out/results.jsonl``; returns the paths written."""
    out = Path(out)
    rows = load(out)
    if not rows:
        raise SystemExit(f"no finished runs in {out}")
    text, scores, matrix = markdown(rows, reps)
    written = [out / "report.md"]
    written[0].write_text(text, encoding="utf-8")
    written.append(plot_curves(by_task(rows), out / "curves.png", reps))
    if len(scores) > 1 and matrix is not None:
        written.append(plot_profile(scores, out / "profile.png", reps))
        written.append(plot_improvement(list(scores), matrix, out / "improvement.png"))
    return written
