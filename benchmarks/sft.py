"""SFT on the default task: demonstrations of positive reviews, and what they do to the policy.

The demonstrations are texts of the task's own pretraining distribution (fresh draws of its corpus, not
the build's) whose gold is at least ``--min-gold`` (positive, grammatical reviews), split into the prompt
(``"hotel review :"``) and the response. ``textenv.sft.train_sft`` fine-tunes the task's policy on them; the
policy before and after is evaluated on the same held-out prompts and random numbers as every benchmark
(``agents.evaluation.evaluate``, 512 episodes), with the KL to the task's original policy (the env's
reference) and the perplexity on held-out pretraining text.

    python benchmarks/sft.py                     # 2,000 demonstrations, 3 epochs
    python benchmarks/sft.py --demos 200 --out /tmp/sft

Writes ``results.json`` and ``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from agents.benchmark import PERPLEXITY_SEED, PERPLEXITY_TEXTS
from agents.evaluation import evaluate
from agents.ptx import perplexity
from textenv import tasks
from textenv.models import load_causal_lm, load_tokenizer
from textenv.sft import Demonstration, SFTConfig, train_sft
from textenv.tasks.reviews import gold_score

DEMO_SEED = 777  # fresh draws of the corpus: neither the build's texts nor the perplexity's


def demonstrations(n: int, min_gold: float) -> list[Demonstration]:
    task = tasks.load("reviews")
    demos: list[Demonstration] = []
    draws = 0
    while len(demos) < n:
        for text in task.pretraining_texts(4 * n, seed=DEMO_SEED + draws):
            prompt, sep, response = text.partition(" :")
            if sep and gold_score(prompt + sep, response).utility >= min_gold:
                demos.append(Demonstration(prompt + sep, response))
        draws += 1
    return demos[:n]


def measure(policy: Any, tokenizer: Any, reference: Any, task: Any, heldout: list[str]) -> dict[str, float]:
    import gymnasium as gym

    env = gym.make_vec(
        "TextRLHF-v0",
        num_envs=256,
        vectorization_mode="vector_entry_point",
        task="reviews",
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        kl_coef=0.2,
        kl_target=None,
    )
    summary, _ = evaluate(policy, env, 512, task=task)
    summary["perplexity"] = perplexity(policy, tokenizer, heldout)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demos", type=int, default=2000, help="demonstrations to fine-tune on")
    parser.add_argument("--min-gold", type=float, default=0.5, help="the least gold of a demonstration")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sft"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = tasks.load("reviews")
    folder = task.assets / "policy"
    tokenizer = load_tokenizer(folder)
    reference = load_causal_lm(folder)
    heldout = task.pretraining_texts(PERPLEXITY_TEXTS, PERPLEXITY_SEED)
    demos = demonstrations(args.demos, args.min_gold)
    before = measure(load_causal_lm(folder), tokenizer, reference, task, heldout)
    cpu, start = time.process_time(), time.perf_counter()
    result = train_sft(
        demos, load_causal_lm(folder), tokenizer, config=SFTConfig(epochs=args.epochs), device="cpu"
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    after = measure(result.model, tokenizer, reference, task, heldout)
    results = {
        "demonstrations": len(demos),
        "min_gold": args.min_gold,
        "epochs": args.epochs,
        "metrics": result.metrics,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_average": os.getloadavg(),
        "before": before,
        "after": after,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    rows = [
        ("gold", "+.3f"),
        ("success_rate", ".1%"),
        ("grammatical_rate", ".1%"),
        ("kl", ".2f"),
        ("perplexity", ".3f"),
        ("distinct_2", ".3f"),
        ("length", ".1f"),
    ]
    lines = [
        f"{len(demos)} demonstrations (gold >= {args.min_gold}), {args.epochs:g} epochs: {seconds:.0f} s "
        f"({cpu_seconds:.0f} CPU s); held-out response loss {result.metrics['eval/loss_before']:.3f} -> "
        f"{result.metrics['eval/loss']:.3f}; load average at the end "
        + ", ".join(f"{x:.1f}" for x in results["load_average"]),
        "",
        "| 512 evaluation episodes | before SFT | after SFT |",
        "|---|---|---|",
    ]
    for key, fmt in rows:
        lines.append(f"| {key} | {format(before[key], fmt)} | {format(after[key], fmt)} |")
    text = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
