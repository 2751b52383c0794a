"""Do the agents learn? PPO, REINFORCE and epsilon-greedy PPO on the default review task.

Every agent trains with its default settings for the same token budget, once per seed. After training,
the policy itself (no exploration) answers ``--eval-episodes`` fixed-seed prompts, scored by the reward
model, the KL to the reference and the gold scorer. The table gives mean +- standard deviation over seeds;
``learning.json`` keeps every run and curve, ``learning.png`` plots the curves (mean and min-max band).

The bar for PPO: gold positive rate from the reference's level to >= 90%, with grammatical rate >= 90% and
KL <= 10 nats, within 15 minutes of training on 2 cores. "to bar" is the first iteration whose rollout
meets the three thresholds (tokens, seconds).

    python benchmarks/learning.py [--agents ppo reinforce egreedy] [--seeds 0 1 2] [--timesteps 150000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from agents import evaluation
from agents.train import agent_classes
from textenv import tasks

BAR = {"positive_rate": 0.9, "grammatical_rate": 0.9, "kl": 10.0, "seconds": 15 * 60}
TASK = tasks.load("reviews")
COLUMNS = (
    *(column for column in evaluation.summary_columns(TASK) if column[0] != "mean_words"),
    ("train_seconds", "wall time (s)", "{:.0f}"),
)


def run(name: str, seed: int, timesteps: int, eval_episodes: int) -> dict[str, Any]:
    agent = agent_classes()[name]("TextRLHF-v0", seed=seed)
    eval_env = evaluation.make_eval_env(agent, num_envs=min(256, eval_episodes))
    start = time.perf_counter()
    reached: dict[str, float] = {}

    def on_iteration(agent_: Any, metrics: dict[str, float]) -> None:
        rollout = agent_.last_rollout
        metrics.update(evaluation.gold_metrics(TASK, rollout.prompts, rollout.responses))
        metrics["charts/wall_seconds"] = time.perf_counter() - start
        if not reached and (
            metrics["gold/positive_rate"] >= BAR["positive_rate"]
            and metrics["gold/grammatical_rate"] >= BAR["grammatical_rate"]
            and metrics["objective/kl"] <= BAR["kl"]
        ):
            reached.update(tokens=metrics["charts/timesteps"], seconds=metrics["charts/wall_seconds"])

    agent.learn(timesteps, callback=on_iteration, progress_bar=True)
    train_seconds = time.perf_counter() - start
    final, _ = evaluation.evaluate(agent, eval_env, eval_episodes)
    return {
        "agent": name,
        "seed": seed,
        "final": {**final, "train_seconds": train_seconds},
        "to_bar": reached or None,
        "history": agent.history,
    }


def mean_std(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values)).lstrip('+')}"


def table(runs: list[dict[str, Any]], reference: dict[str, float]) -> str:
    header = "| agent | " + " | ".join(h for _, h, _ in COLUMNS) + " | to bar: tokens / s | runs at bar |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    ref_cells = " | ".join(fmt.format(reference[k]) if k in reference else "" for k, _, fmt in COLUMNS)
    lines.append(f"| reference (before) | {ref_cells} | | |")
    for name in dict.fromkeys(r["agent"] for r in runs):
        group = [r for r in runs if r["agent"] == name]
        cells = " | ".join(mean_std([r["final"][k] for r in group], fmt) for k, _, fmt in COLUMNS)
        hits = [r["to_bar"] for r in group if r["to_bar"]]
        to_bar = "never"
        if hits:
            tokens, seconds = (statistics.mean(h[k] for h in hits) for k in ("tokens", "seconds"))
            to_bar = f"{tokens:,.0f} / {seconds:.0f}"
        lines.append(f"| {name} (n={len(group)}) | {cells} | {to_bar} | {len(hits)}/{len(group)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", nargs="+", default=["ppo", "reinforce", "egreedy"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=150_000, help="token budget of every run")
    parser.add_argument("--eval-episodes", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for json/png")
    parser.add_argument("--from-json", type=Path, help="redo the table and plot of a saved learning.json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        report(saved["runs"], saved["reference"], saved["args"], args.out)
        return
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args.out.mkdir(parents=True, exist_ok=True)

    probe = agent_classes()["ppo"]("TextRLHF-v0", seed=0)
    eval_env = evaluation.make_eval_env(probe, num_envs=min(256, args.eval_episodes))
    reference, _ = evaluation.evaluate(probe, eval_env, args.eval_episodes)
    del probe
    runs = []
    for name in args.agents:
        for seed in args.seeds:
            result = run(name, seed, args.timesteps, args.eval_episodes)
            runs.append(result)
            f = result["final"]
            print(
                f"{name} seed {seed}: positive {f['positive_rate']:.1%}, "
                f"grammatical {f['grammatical_rate']:.1%}, KL {f['kl']:.2f}, {f['train_seconds']:.0f}s; "
                f"to bar: {result['to_bar']}",
                flush=True,
            )

    report(runs, reference, vars(args) | {"out": str(args.out)}, args.out)


def report(
    runs: list[dict[str, Any]], reference: dict[str, float], settings: dict[str, Any], out: Path
) -> None:
    """Print the table and the bar check; write learning.md, learning.json and learning.png to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    text = table(runs, reference)
    bar_lines = []
    for r in runs:
        if r["agent"] != "ppo":
            continue
        f = r["final"]
        ok = (
            f["positive_rate"] >= BAR["positive_rate"]
            and f["grammatical_rate"] >= BAR["grammatical_rate"]
            and f["kl"] <= BAR["kl"]
            and f["train_seconds"] <= BAR["seconds"]
        )
        bar_lines.append(f"PPO seed {r['seed']}: {'meets' if ok else 'misses'} the bar after training")
    seeds = settings["seeds"]
    print(
        f"\n{len(seeds)} seeds, {settings['timesteps']:,} tokens each, "
        f"{settings['eval_episodes']} evaluation episodes, {settings['threads']} threads\n"
    )
    print(text)
    print("\n".join(bar_lines))
    (out / "learning.md").write_text(text + "\n", encoding="utf-8")
    (out / "learning.json").write_text(
        json.dumps({"reference": reference, "runs": runs, "args": settings}), encoding="utf-8"
    )
    curves = {f"{r['agent']}/{r['seed']}": r["history"] for r in runs}
    title = f"default task, {len(seeds)} seeds (mean, min-max); training rollouts (egreedy: of mu)"
    path = evaluation.plot_curves(curves, out / "learning.png", title=title, band=True)
    print(f"\nwrote {out / 'learning.md'}, {out / 'learning.json'}, {path}")


if __name__ == "__main__":
    main()
