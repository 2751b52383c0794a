"""The linear reward model beside the transformer reward model on the default task, by number of comparisons.

Comparison groups as the task's build collects them (prompts of the task, 4 samples of its policy per prompt,
one corrupted in 30% of the groups, every pair labelled by the simulated labellers), at several sizes; for
each size the same pairs train

* the linear reward model ``r = wᵀφ`` (``textenv.linear_reward``), φ from the policy's own hidden states,
  mean-pooled over every layer (the default) and over the last layer only, ``C`` cross-validated;
* a transformer reward model (``textenv.reward_training``): the policy's trunk with a scalar head, the
  task's build settings (3 epochs, lr 1e-3);

and all are judged on the same held-out groups: the share of pairs each orders as the labellers did, and
as gold does (gold ties left out). The shipped reward model (trained on 9,000 groups of 6) is judged on
the same pairs as a reference.

    python benchmarks/linear_reward.py                       # sizes 250, 1000, 4000 groups
    python benchmarks/linear_reward.py --sizes 100 --heldout 100 --out /tmp/linear-rm

Writes ``results.json``, ``report.md`` and ``accuracy.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from textenv import tasks
from textenv.linear_reward import Encoder, fit_linear_reward
from textenv.models import load_causal_lm, load_tokenizer
from textenv.reward_training import PreferencePair, RewardTrainingConfig, score_texts, train_reward_model
from textenv.tasks.building import BuildConfig, gold_accuracy, make_preferences
from textenv.tasks.reviews.build import corrupt, utility

RESPONSES = 4  # samples per comparison group: 6 pairs each


def comparisons(groups: int, seed: int) -> list[PreferencePair]:
    task = tasks.load("reviews")
    policy = load_causal_lm(task.assets / "policy")
    tokenizer = load_tokenizer(task.assets / "policy")
    config = BuildConfig(comparison_groups=groups, responses_per_group=RESPONSES, seed=seed)
    pairs = make_preferences(policy, tokenizer, task.prompts(), config, utility, corrupt)
    # two samples of one prompt may be the same text: no comparison (the build drops them too)
    return [replace(p, group=f"{seed}-{p.group}") for p in pairs if p.chosen != p.rejected]


def judge(scores: np.ndarray, pairs: list[PreferencePair]) -> dict[str, float]:
    """Accuracy against the labels and against gold of scores of ``chosen + rejected`` texts."""
    n = len(pairs)
    first, second = scores[:n], scores[n:]
    gold_first = np.array([utility(p.prompt, p.chosen) for p in pairs])
    gold_second = np.array([utility(p.prompt, p.rejected) for p in pairs])
    return {
        "accuracy_vs_labels": float(np.mean(first > second)),
        "accuracy_vs_gold": gold_accuracy(first, second, gold_first, gold_second),
    }


def run(sizes: list[int], heldout_groups: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    task = tasks.load("reviews")
    policy_dir = task.assets / "policy"
    heldout = comparisons(heldout_groups, seed=1000)
    chosen = [p.prompt + p.chosen for p in heldout]
    rejected = [p.prompt + p.rejected for p in heldout]
    rows: list[dict[str, Any]] = []

    from textenv.rewards import ClassifierReward

    reward = ClassifierReward(task.assets / "reward_model")
    scores = np.asarray(reward.score([""] * (2 * len(heldout)), chosen + rejected))
    rows.append(
        {"model": "shipped reward model (9,000 groups of 6)", "groups": 9000, **judge(scores, heldout)}
    )
    encoders = {layers: Encoder(policy_dir, layers=layers) for layers in ("all", "last")}
    for size in sizes:
        pairs = comparisons(size, seed=size)
        for layers, encoder in encoders.items():
            cpu, start = time.process_time(), time.perf_counter()
            fitted = fit_linear_reward(pairs, encoder, eval_pairs=[])
            seconds = time.perf_counter() - start
            scores = np.asarray(fitted.model.score([""] * (2 * len(heldout)), chosen + rejected))
            rows.append(
                {
                    "model": f"linear, layers={layers}",
                    "groups": size,
                    "pairs": len(pairs),
                    "C": fitted.metrics["C"],
                    "train_accuracy": fitted.metrics["train/accuracy"],
                    "seconds": seconds,
                    "cpu_seconds": time.process_time() - cpu,
                    **judge(scores, heldout),
                }
            )
            print(rows[-1])
        cpu, start = time.process_time(), time.perf_counter()
        config = RewardTrainingConfig(epochs=3.0, learning_rate=1e-3, batch_size=96, eval_fraction=0.0)
        trained = train_reward_model(pairs, policy_dir, config=config, eval_pairs=[])
        seconds = time.perf_counter() - start
        scores = score_texts(trained.model, trained.tokenizer, chosen + rejected)
        rows.append(
            {
                "model": "transformer (policy trunk + scalar head)",
                "groups": size,
                "pairs": len(pairs),
                "train_accuracy": trained.metrics["train/accuracy"],
                "seconds": seconds,
                "cpu_seconds": time.process_time() - cpu,
                **judge(scores, heldout),
            }
        )
        print(rows[-1])
    return {
        "heldout_groups": heldout_groups,
        "heldout_pairs": len(heldout),
        "responses_per_group": RESPONSES,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "load_average": os.getloadavg(),
        "rows": rows,
    }


def report(results: dict[str, Any], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"Held out: {results['heldout_pairs']} pairs of {results['heldout_groups']} groups "
        f"({results['responses_per_group']} responses each). Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in results["load_average"]),
        "",
        "| reward model | groups (pairs) | accuracy vs labels | accuracy vs gold | C | fit s (CPU s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        pairs = (
            f"{row['groups']:,} ({row['pairs']:,})" if "pairs" in row else f"{row['groups']:,} groups of 6"
        )
        c = f"{row['C']:g}" if "C" in row else ""
        seconds = f"{row['seconds']:.0f} ({row['cpu_seconds']:.0f})" if "seconds" in row else ""
        lines.append(
            f"| {row['model']} | {pairs} | {row['accuracy_vs_labels']:.1%} | {row['accuracy_vs_gold']:.1%} "
            f"| {c} | {seconds} |"
        )
    text = "\n".join(lines) + "\n"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in results["rows"] if "pairs" in r):
        chosen = [r for r in results["rows"] if r["model"] == name]
        ax.plot(
            [r["groups"] for r in chosen], [r["accuracy_vs_gold"] for r in chosen], marker="o", label=name
        )
    for row in results["rows"]:
        if "pairs" not in row:
            ax.axhline(row["accuracy_vs_gold"], color="grey", linestyle="--", label=row["model"])
    ax.set_xscale("log")
    ax.set_xlabel("comparison groups (6 pairs each)")
    ax.set_ylabel("held-out accuracy against gold")
    ax.set_title("reward models on the default task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000], help="comparison groups")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out comparison groups")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/linear-reward"))
    parser.add_argument("--report-only", action="store_true", help="redo the report from results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    if args.report_only:
        results = json.loads(path.read_text(encoding="utf-8"))
    else:
        results = run(args.sizes, args.heldout)
        path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = report(results, args.out)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
