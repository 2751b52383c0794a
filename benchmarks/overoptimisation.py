"""Reward over-optimisation on the ``verbosity`` task: gold and proxy against the KL from the reference.

PPO (its default settings) trains on ``task="verbosity"`` with a *fixed* KL coefficient beta, once per
beta. Every iteration's rollout (the current policy's own samples) gives the proxy (the learned reward
model's mean score), gold (the task's utility: sentiment less a cost per word beyond 16) and the KL the
env charged. With a small beta the policy drifts far from the reference: the proxy keeps rising while
gold rises and then falls (Gao et al., 2023, "Scaling laws for reward model overoptimization"). A larger
beta stops it before the turn-over.

    python benchmarks/overoptimisation.py                         # betas 0.01 0.05 0.3, 150k tokens each
    python benchmarks/overoptimisation.py --betas 0.02 --timesteps 200000 --seeds 0 1
    python benchmarks/overoptimisation.py --from-json benchmarks/results/overoptimisation.json

Writes ``overoptimisation.md`` (per beta: the KL at which gold peaks, the peak, and the final gold, proxy,
KL and length), ``overoptimisation.json`` (every iteration) and ``overoptimisation.png`` (gold and proxy
against KL) to ``--out``. Gold's peak is read off a centred moving average over ``--smooth`` iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

KEYS = ("objective/scores", "gold/score", "objective/kl", "gold/mean_words", "gold/success_rate")


def run(beta: float, seed: int, timesteps: int, threads: int) -> dict[str, Any]:
    import torch
    import transformers

    from agents import PPO, evaluation
    from textenv import tasks

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    task = tasks.load("verbosity")
    agent = PPO(
        "TextRLHF-v0", seed=seed, env_kwargs={"task": "verbosity", "kl_coef": beta, "kl_target": None}
    )

    def on_iteration(agent_: Any, metrics: dict[str, float]) -> None:
        rollout = agent_.last_rollout
        metrics.update(evaluation.gold_metrics(task, rollout.prompts, rollout.responses))

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    agent.learn(timesteps, callback=on_iteration, progress_bar=True)
    return {
        "beta": beta,
        "seed": seed,
        "wall_seconds": time.perf_counter() - start_wall,
        "cpu_seconds": time.process_time() - start_cpu,
        "history": [{k: m[k] for k in (*KEYS, "charts/timesteps")} for m in agent.history],
    }


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (shorter windows at the ends)."""
    half = window // 2
    return np.array([values[max(0, i - half) : i + half + 1].mean() for i in range(len(values))])


def summarise(result: dict[str, Any], window: int) -> dict[str, float]:
    rows = result["history"]
    gold = smooth(np.array([r["gold/score"] for r in rows]), window)
    kl = smooth(np.array([r["objective/kl"] for r in rows]), window)
    proxy = smooth(np.array([r["objective/scores"] for r in rows]), window)
    words = smooth(np.array([r["gold/mean_words"] for r in rows]), window)
    peak = int(np.argmax(gold))
    return {
        "beta": result["beta"],
        "seed": result["seed"],
        "peak_gold": float(gold[peak]),
        "kl_at_peak": float(kl[peak]),
        "tokens_at_peak": float(rows[peak]["charts/timesteps"]),
        "final_gold": float(gold[-1]),
        "final_proxy": float(proxy[-1]),
        "final_kl": float(kl[-1]),
        "final_words": float(words[-1]),
        "start_gold": float(gold[0]),
        "start_proxy": float(proxy[0]),
        "wall_seconds": result["wall_seconds"],
    }


def report(results: list[dict[str, Any]], out: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = [summarise(r, window) for r in results]
    header = ["beta", "seed", "gold at start", "peak gold", "KL at the peak (nats)", "final gold"]
    header += ["final proxy", "final KL", "final words", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in rows:
        cells = [f"{s['beta']:g}", str(s["seed"]), f"{s['start_gold']:+.3f}", f"{s['peak_gold']:+.3f}"]
        cells += [f"{s['kl_at_peak']:.2f}", f"{s['final_gold']:+.3f}", f"{s['final_proxy']:+.3f}"]
        cells += [f"{s['final_kl']:.2f}", f"{s['final_words']:.1f}", f"{s['wall_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "overoptimisation.md").write_text(text, encoding="utf-8")
    (out / "overoptimisation.json").write_text(
        json.dumps({"runs": results, "summary": rows}), encoding="utf-8"
    )

    smallest = min(r["beta"] for r in results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    twin = ax.twinx()
    for r in (r for r in results if r["beta"] == smallest):
        h = r["history"]
        kl = smooth(np.array([m["objective/kl"] for m in h]), window)
        ax.plot(kl, smooth(np.array([m["gold/score"] for m in h]), window), color="C3", label="gold")
        twin.plot(kl, smooth(np.array([m["objective/scores"] for m in h]), window), color="C0", label="proxy")
    for s in (s for s in rows if s["beta"] == smallest):
        ax.axvline(s["kl_at_peak"], color="C3", ls=":", lw=1)
    ax.set_xlabel("KL from the reference (nats per response)")
    ax.set_ylabel("gold (sentiment less the verbosity cost)", color="C3")
    twin.set_ylabel("proxy: reward-model score", color="C0")
    ax.set_title(f"beta = {smallest:g}: the proxy keeps rising, gold turns over")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for i, beta in enumerate(sorted({r["beta"] for r in results})):
        for r in (r for r in results if r["beta"] == beta):
            h = r["history"]
            kl = smooth(np.array([m["objective/kl"] for m in h]), window)
            label = (
                f"beta {beta:g}"
                if r["seed"] == min(x["seed"] for x in results if x["beta"] == beta)
                else None
            )
            ax.plot(kl, smooth(np.array([m["gold/score"] for m in h]), window), color=f"C{i}", label=label)
    ax.set_xlabel("KL from the reference (nats per response)")
    ax.set_ylabel("gold")
    ax.set_title("gold against KL for each beta")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "overoptimisation.png", dpi=90)
    plt.close(fig)
    print(text)
    print(f"wrote overoptimisation.md, .json and .png to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.05, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--timesteps", type=int, default=150_000, help="response tokens per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smooth", type=int, default=5, help="iterations of the moving average")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--from-json", type=Path, help="redo the report of a saved overoptimisation.json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))["runs"]
    else:
        results = [
            run(beta, seed, args.timesteps, args.threads) for beta in args.betas for seed in args.seeds
        ]
    report(results, args.out, args.smooth)


if __name__ == "__main__":
    main()
