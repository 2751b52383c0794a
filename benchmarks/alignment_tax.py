"""The alignment tax of PPO and what PPO-ptx buys back, at equal gold, from a ``textenv-bench`` results file.

InstructGPT's PPO-ptx mixes the pretraining LM loss into PPO's so that the policy keeps more of what it was
before RLHF. Here the policy's distance from pretraining is read off every evaluation point of the runner
(``agents.benchmark``): its perplexity on held-out pretraining text (fresh draws of the task's corpus), the
distinct-2 of its responses, their length in tokens, and the KL. Since the mix also slows the reward down,
runs are compared **at equal gold**: along each run's curve, every figure is interpolated linearly at the
first point where gold reaches each level, between the two evaluations that bracket it. The untrained
policy (every run's first point) is the reference row.

    textenv-bench --tasks reviews --agents ppo ppo:ptx_coef=0.1 ppo:ptx_coef=0.3 ppo:ptx_coef=1 \\
        --seeds 3 --eval-points 12 --workers 2 --out benchmarks/results/alignment-tax
    python benchmarks/alignment_tax.py --results benchmarks/results/alignment-tax

Writes ``alignment-tax.md`` and ``alignment-tax.png`` beside the results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

KEYS = ("perplexity", "distinct_2", "length", "kl", "timesteps")
LEVELS = (0.5, 0.7, 0.85)


def at_gold(curve: list[dict[str, Any]], level: float) -> dict[str, float] | None:
    """Every figure of ``KEYS`` where gold first reaches ``level`` (linear between the bracketing points);
    None if it never does."""
    for before, after in itertools.pairwise(curve):
        if before["gold"] < level <= after["gold"]:
            share = (level - before["gold"]) / (after["gold"] - before["gold"])
            return {k: before[k] + share * (after[k] - before[k]) for k in KEYS}
    if curve and curve[0]["gold"] >= level:
        return {k: float(curve[0][k]) for k in KEYS}
    return None


def coef_of(row: dict[str, Any]) -> float:
    return float(row.get("settings", {}).get("ptx_coef", 0.0) or 0.0)


def spread(values: list[float], fmt: str) -> str:
    """Mean and, over several seeds, the range."""
    if not values:
        return "n/a"
    mean = format(statistics.fmean(values), fmt)
    return mean if len(values) == 1 else f"{mean} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def report(rows: list[dict[str, Any]], out: Path) -> str:
    runs: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        if "perplexity" in row["curve"][0]:
            runs.setdefault(coef_of(row), []).append(row)
    if not runs:
        raise SystemExit("no run in the results has perplexity at its evaluation points")
    first = next(iter(runs.values()))[0]["curve"][0]
    lines = [
        f"Reference (the untrained policy): gold {first['gold']:+.3f}, perplexity {first['perplexity']:.3f}, "
        f"distinct-2 {first['distinct_2']:.3f}, length {first['length']:.1f} tokens.",
        "",
        "At equal gold (mean over seeds [range]; a run counts at a level once its gold reaches it):",
        "",
        "| gold | ptx_coef | seeds there | perplexity | distinct-2 | length | KL | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in LEVELS:
        for coef in sorted(runs):
            found = [p for p in (at_gold(r["curve"], level) for r in runs[coef]) if p is not None]
            cells = [
                spread([p["perplexity"] for p in found], ".3f"),
                spread([p["distinct_2"] for p in found], ".3f"),
                spread([p["length"] for p in found], ".1f"),
                spread([p["kl"] for p in found], ".2f"),
                spread([p["timesteps"] / 1000 for p in found], ".0f") + ("k" if found else ""),
            ]
            lines.append(
                f"| {level:+.2f} | {coef:g} | {len(found)}/{len(runs[coef])} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "At the end of the budget:",
        "",
        "| ptx_coef | seeds | gold | perplexity | distinct-2 | length | KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for coef in sorted(runs):
        finals = [r["curve"][-1] for r in runs[coef]]
        cells = [
            spread([f[key] for f in finals], fmt)
            for key, fmt in (
                ("gold", "+.3f"),
                ("perplexity", ".3f"),
                ("distinct_2", ".3f"),
                ("length", ".1f"),
            )
        ]
        cells.append(spread([f["kl"] for f in finals], ".2f"))
        lines.append(f"| {coef:g} | {len(finals)} | " + " | ".join(cells) + " |")
    plot(runs, first, out / "alignment-tax.png")
    return "\n".join(lines) + "\n"


def plot(runs: dict[float, list[dict[str, Any]]], reference: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    colours = plt.get_cmap("viridis")
    for i, coef in enumerate(sorted(runs)):
        colour = colours(i / max(1, len(runs) - 1))
        for j, run in enumerate(runs[coef]):
            curve = run["curve"]
            gold = [p["gold"] for p in curve]
            for ax, key in zip(axes, ("perplexity", "distinct_2", "length"), strict=True):
                ax.plot(gold, [p[key] for p in curve], color=colour, alpha=0.8, marker=".",
                        label=f"ptx_coef {coef:g}" if j == 0 else None)  # fmt: skip
    for ax, key, name in zip(
        axes,
        ("perplexity", "distinct_2", "length"),
        ("perplexity on held-out pretraining text", "distinct-2", "response length (tokens)"),
        strict=True,
    ):
        ax.axhline(reference[key], color="grey", linestyle="--", label="reference")
        ax.set_xlabel("gold")
        ax.set_title(name)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "PPO on the default task: the alignment tax against gold, with and without the pretraining mix"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/alignment-tax"))
    args = parser.parse_args()
    rows = [json.loads(x) for x in (args.results / "results.jsonl").read_text().splitlines() if x.strip()]
    text = report(rows, args.results)
    (args.results / "alignment-tax.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
