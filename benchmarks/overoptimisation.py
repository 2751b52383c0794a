"""Reward over-optimisation (Gao et al., 2023) on the ``verbosity`` task: gold and proxy against the KL.

PPO trains on ``verbosity`` with a *fixed* KL coefficient beta from 0 up, over seeds, and once with the
adaptive controller (the agents' default: beta 0.2 to start, target 6 nats), all through the benchmark
runner (``agents.benchmark``: its processes, results file, resume and held-out evaluations). The proxy
(the learned reward model, which labellers taught to like length) keeps rising as the policy drifts from
the reference; gold (sentiment less a cost per word beyond 16) rises, peaks and falls. The plot shows both
against the KL, every evaluation of every run, with gold's peak and the beta the adaptive controller
settles on marked.

    python benchmarks/overoptimisation.py                   # betas 0 .. 1 x 3 seeds, 2 at once
    python benchmarks/overoptimisation.py --betas 0 0.1 --seeds 2 --budget-scale 0.2 --out /tmp/overopt
    python benchmarks/overoptimisation.py --report-only

Writes ``results.jsonl``, ``overoptimisation.md`` and ``overoptimisation.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from agents import benchmark, benchstats
from agents.benchmark import AgentSpec, Protocol

TASK = "verbosity"
ADAPTIVE = "ppo"


def fixed(beta: float) -> AgentSpec:
    return AgentSpec("ppo", {"kl_coef": beta, "kl_target": None})


def beta_of(row: dict[str, Any]) -> float | None:
    """The fixed beta of a run, None for the adaptive controller."""
    return None if row["agent"] == ADAPTIVE else float(row["settings"]["kl_coef"])


def point_iqm(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """IQM over seeds at every evaluation point."""
    from rliable import metrics

    n = min(len(r["curve"]) for r in runs)
    values = np.array([[r["curve"][i][key] for i in range(n)] for r in runs])
    return np.array([metrics.aggregate_iqm(values[:, i]) for i in range(n)])


def report(out: Path, reps: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = benchstats.load(out)
    if not rows:
        raise SystemExit(f"no finished runs in {out}")
    groups: dict[float | None, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(beta_of(row), []).append(row)
    betas = sorted(b for b in groups if b is not None)
    lines = [
        "| beta | runs | final gold, IQM [95% CI] | final proxy | final KL | best gold along training | "
        "KL there |",
        "|---|---|---|---|---|---|---|",
    ]
    peak = (-np.inf, 0.0, 0.0)  # gold, KL, beta of the best evaluation point (IQM over seeds)
    for beta in [*betas, None]:
        if beta not in groups:
            continue
        runs = groups[beta]
        gold, kl = point_iqm(runs, "gold"), point_iqm(runs, "kl")
        best = int(np.argmax(gold))
        if beta is not None and gold[best] > peak[0]:
            peak = (float(gold[best]), float(kl[best]), beta)
        name = f"{beta:g}" if beta is not None else "adaptive (target 6)"
        cells = [name, str(len(runs))]
        for key, fmt in (("gold", "{:+.3f}"), ("rm_score", "{:+.3f}"), ("kl", "{:.2f}")):
            p, low, high = benchstats.iqm_ci(np.array([r["final"][key] for r in runs]), reps)
            cells.append(f"{fmt.format(p)} [{fmt.format(low)}, {fmt.format(high)}]")
        cells += [f"{gold[best]:+.3f}", f"{kl[best]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    adaptive = groups.get(None)
    settled = statistics.median(r["final"]["kl_coef"] for r in adaptive) if adaptive else None
    text += f"\nGold peaks at {peak[0]:+.3f} (KL {peak[1]:.2f} nats, fixed beta {peak[2]:g}).\n"
    if settled is not None:
        text += (
            f"The adaptive controller settles at beta {settled:.3f} (median over seeds, end of training).\n"
        )

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(betas))))
    for ax, key, title in ((axes[0], "gold", "gold"), (axes[1], "rm_score", "proxy (reward-model score)")):
        for colour, beta in zip(colours, betas, strict=True):
            runs = groups[beta]
            for r in runs:
                ax.plot([p["kl"] for p in r["curve"]], [p[key] for p in r["curve"]], color=colour, alpha=0.25)
            ax.plot(
                point_iqm(runs, "kl"), point_iqm(runs, key), "o-", color=colour, ms=3, label=f"beta {beta:g}"
            )
        if adaptive:
            ax.plot(point_iqm(adaptive, "kl"), point_iqm(adaptive, key), "s--", color="C3", ms=3,
                    label=f"adaptive: beta settles at {settled:.3f}")  # fmt: skip
        if key == "gold":
            ax.plot(peak[1], peak[0], "*", color="k", ms=14, label=f"gold's peak (beta {peak[2]:g})")
            ax.axvline(peak[1], color="k", ls=":", lw=1)
        ax.set_xlabel("KL from the reference (nats per response, held-out evaluations)")
        ax.set_title(f"{TASK}: {title} against KL (IQM over seeds; faint: single runs)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "overoptimisation.png", dpi=90)
    plt.close(fig)
    (out / "overoptimisation.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per beta (default 3)")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overoptimisation"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        specs = [fixed(b) for b in args.betas] + [AgentSpec(ADAPTIVE)]
        jobs = benchmark.plan([TASK], specs, list(range(args.seeds)))
        failed = benchmark.run_all(jobs, Protocol(budget_scale=args.budget_scale), args.out, args.workers)
        if failed:
            raise SystemExit(f"{len(failed)} run(s) failed; see {args.out / 'logs'}; run again to retry")
    print(report(args.out, args.reps))
    print(f"wrote {args.out / 'overoptimisation.md'} and {args.out / 'overoptimisation.png'}")


if __name__ == "__main__":
    main()
