"""Evaluation on the default review task: the reward model, the KL and the gold scorer, side by side.

An evaluation plays fixed-seed rollouts on a *separate* vector env that shares the policy, reference and
reward model with the training env but keeps beta fixed, so that evaluating changes neither the training
env's adaptive KL coefficient nor the agent's random streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.base import Agent, make_env
from agents.rollout import collect
from textenv.tasks import reviews

#: Columns of the before/after table: metric key, header, format.
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rm_score", "RM score", "{:+.3f}"),
    ("gold_sentiment", "gold sentiment", "{:+.3f}"),
    ("positive_rate", "positive rate", "{:.1%}"),
    ("grammatical_rate", "grammatical rate", "{:.1%}"),
    ("kl", "KL (nats)", "{:.2f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("mean_words", "words", "{:.1f}"),
)


def make_eval_env(agent: Agent, num_envs: int = 256) -> gym.vector.VectorEnv:
    """A vector env on the default task sharing ``agent``'s models, with beta fixed at its current value."""
    train = agent.env.unwrapped
    return make_env(
        num_envs=num_envs,
        policy=agent.model.policy,
        reference=train.reference,  # type: ignore[attr-defined]
        tokenizer=train.tokenizer,  # type: ignore[attr-defined]
        reward_model=train.reward_model,  # type: ignore[attr-defined]
        prompts=reviews.load_prompts(),
        kl_coef=train.kl_coef,  # type: ignore[attr-defined]
        kl_target=None,
        **reviews.ENV_DEFAULTS,
    )


def evaluate(
    agent: Agent, env: gym.vector.VectorEnv, episodes: int = 512, seed: int = 12345
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Play ``episodes`` (rounded up to whole rollouts) with the agent's policy on ``env``.

    Returns the summary (RM score, KL, gold sentiment, positive, grammatical, distinct-2, words) and one
    row per episode (prompt, response, score, kl, gold, grammatical). The same ``seed`` gives the same
    prompts and the same random numbers, so before/after comparisons differ by the policy only.
    """
    generator = torch.Generator(agent.device).manual_seed(seed)
    rounds = -(-episodes // env.num_envs)
    prompts: list[str] = []
    responses: list[str] = []
    scores: list[float] = []
    kls: list[float] = []
    for r in range(rounds):
        rollout = collect(env, agent.model, generator=generator, seed=seed + r * env.num_envs)
        prompts += rollout.prompts
        responses += rollout.responses
        scores += rollout.scores.tolist()
        kls += rollout.kl.tolist()
    golds = [reviews.gold_score(p, y) for p, y in zip(prompts, responses, strict=True)]  # parsed once
    summary = {
        "rm_score": float(np.mean(scores)),
        "kl": float(np.mean(kls)),
        **reviews.summarize(golds, responses),
    }
    rows = [
        {"prompt": p, "response": y, "score": s, "kl": k, "gold": g.sentiment, "grammatical": g.grammatical}
        for p, y, s, k, g in zip(prompts, responses, scores, kls, golds, strict=True)
    ]
    return summary, rows


def gold_metrics(prompts: list[str], responses: list[str]) -> dict[str, float]:
    """``gold/...`` metrics of a batch of episodes (for the per-iteration log)."""
    gold = reviews.evaluate(prompts, responses)
    return {
        "gold/sentiment": gold["gold_sentiment"],
        "gold/positive_rate": gold["positive_rate"],
        "gold/grammatical_rate": gold["grammatical_rate"],
        "gold/distinct_2": gold["distinct_2"],
    }


def format_summary(before: dict[str, float], after: dict[str, float]) -> str:
    """The before/after table as aligned text."""
    width = max(len(h) for _, h, _ in SUMMARY_COLUMNS)
    lines = [f"{'':<{width}}  {'before':>9}  {'after':>9}"]
    for key, header, fmt in SUMMARY_COLUMNS:
        lines.append(f"{header:<{width}}  {fmt.format(before[key]):>9}  {fmt.format(after[key]):>9}")
    return "\n".join(lines)


def plot_curves(
    histories: dict[str, list[dict[str, float]]], path: str | Path, title: str = "", band: bool = False
) -> Path:
    """Learning curves against timesteps: RM score, gold positive rate and grammatical rate, KL.

    ``histories`` maps a label to metric rows (one per iteration, with ``charts/timesteps``). With
    ``band=True`` labels of the form ``"name/seed"`` are averaged per name with a min-max band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = (
        ("objective/scores", "RM score"),
        ("gold/positive_rate", "gold positive rate"),
        ("gold/grammatical_rate", "gold grammatical rate"),
        ("objective/kl", "KL to reference (nats)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    groups: dict[str, list[list[dict[str, float]]]] = {}
    for label, rows in histories.items():
        groups.setdefault(label.split("/")[0] if band else label, []).append(rows)
    for ax, (key, name) in zip(axes, panels, strict=True):
        for label, runs in groups.items():
            runs = [[r for r in rows if key in r] for rows in runs]
            runs = [rows for rows in runs if rows]
            if not runs:
                continue
            n = min(len(rows) for rows in runs)
            x = np.array([r["charts/timesteps"] for r in runs[0][:n]])
            y = np.array([[r[key] for r in rows[:n]] for rows in runs])  # (runs, n)
            line = ax.plot(x, y.mean(0), label=label)[0]
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.2, color=line.get_color())
        ax.set_title(name)
        ax.set_xlabel("timesteps (tokens)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
