"""Evaluation on a task of the suite: the reward (the proxy), the KL and the task's gold, side by side.

An evaluation plays fixed-seed rollouts on a *separate* vector env that shares the policy, reference and
reward model with the training env but keeps beta fixed, so that evaluating changes neither the training
env's adaptive KL coefficient nor the agent's random streams. Gold comes from the task
(:func:`textenv.tasks.load`): its ``evaluate`` gives ``gold``, ``success_rate`` and its own columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from transformers import PreTrainedModel

from agents.base import Agent, make_env
from agents.policy import ActorCritic
from agents.rollout import collect
from textenv import tasks
from textenv.tasks import Task
from textenv.tasks.reviews.gold import distinct_n

#: Columns of every before/after table: metric key, header, format (the task's own columns follow).
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rm_score", "RM score", "{:+.3f}"),
    ("gold", "gold", "{:+.3f}"),
    ("success_rate", "success rate", "{:.1%}"),
    ("kl", "KL (nats)", "{:.2f}"),
)


#: The columns of a run without gold (an env of your own parts that plays no task).
NO_GOLD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rm_score", "RM score", "{:+.3f}"),
    ("kl", "KL (nats)", "{:.2f}"),
    ("length", "tokens", "{:.1f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
)


def task_of(agent_or_env: Agent | gym.vector.VectorEnv, task: str | Task | None = None) -> Task:
    """The task to judge by: ``task`` if given, else the one the (agent's) env plays."""
    found = find_task(agent_or_env, task)
    if found is None:
        raise ValueError(
            "this env plays no task of textenv.tasks, so there is no gold to evaluate with; make it with "
            "task=NAME, or pass task= here"
        )
    return found


def find_task(agent_or_env: Agent | gym.vector.VectorEnv, task: str | Task | None = None) -> Task | None:
    """``task`` if given, else the task the (agent's) env plays, else None (no gold to judge by)."""
    if isinstance(task, Task):
        return task
    if task is None:
        env = agent_or_env.env if isinstance(agent_or_env, Agent) else agent_or_env
        task = getattr(env.unwrapped, "task", None)
    return None if task is None else tasks.load(task)


def summary_columns(task: Task | None) -> tuple[tuple[str, str, str], ...]:
    """The before/after table's columns for ``task`` (None: an env without gold)."""
    if task is None:
        return NO_GOLD_COLUMNS
    shared = {key for key, _, _ in SUMMARY_COLUMNS}
    return SUMMARY_COLUMNS + tuple(c for c in task.columns if c[0] not in shared)


def make_eval_env(
    agent: Agent,
    num_envs: int = 256,
    task: str | Task | None = None,
    prompts: list[str] | None = None,
) -> gym.vector.VectorEnv:
    """A vector env sharing ``agent``'s models, with beta fixed at its current value: the agent's task
    (or ``task``) with its prompts, or, for an env that plays no task, that env's own prompts. ``prompts``
    replaces either (held-out prompts, say)."""
    return eval_env_like(agent.env, agent.model.policy, num_envs, find_task(agent, task), prompts)


def eval_env_like(
    env: gym.Env | gym.vector.VectorEnv,
    policy: PreTrainedModel,
    num_envs: int = 256,
    task: Task | None = None,
    prompts: list[str] | None = None,
) -> gym.vector.VectorEnv:
    """A vector env with ``env``'s reference, tokenizer, reward model, lengths, temperature and KL estimator
    (the very objects, not copies), beta fixed at ``env``'s current value, and ``policy`` as the policy
    (``env``'s own, or one trained elsewhere from the same start). Prompts: ``prompts``, else ``task``'s,
    else ``env``'s."""
    engine: Any = getattr(env.unwrapped, "engine", None)
    if engine is None:
        raise TypeError(f"{type(env.unwrapped).__name__} is not a TextRLHF-v0 env")
    if prompts is None:
        prompts = task.prompts() if task is not None else engine.config.prompts
    return make_env(
        num_envs=num_envs,
        task=task.name if task is not None else None,
        policy=policy,
        reference=engine.reference,
        tokenizer=engine.tokenizer,
        reward_model=engine.reward_model,
        prompts=prompts,
        max_new_tokens=engine.max_new_tokens,
        max_prompt_tokens=engine.max_prompt_tokens,
        temperature=engine.temperature,
        kl_estimator=engine.config.kl_estimator,
        kl_coef=engine.kl_coef,
        kl_target=None,
    )


def actor_of(agent: Agent | ActorCritic | PreTrainedModel) -> ActorCritic:
    """What samples for an evaluation: the agent's model, or a bare LM wrapped without a value head."""
    if isinstance(agent, Agent):
        return agent.model
    if isinstance(agent, ActorCritic):
        return agent
    return ActorCritic(agent, critic="none")


def evaluate(
    agent: Agent | ActorCritic | PreTrainedModel,
    env: gym.vector.VectorEnv,
    episodes: int = 512,
    seed: int = 12345,
    task: str | Task | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Play ``episodes`` (rounded up to whole rollouts) with the agent's policy on ``env``.

    ``agent`` may also be a bare causal LM (a policy trained elsewhere, e.g. by trl): it must be the policy
    ``env`` was made with, since the env scores the KL with its own policy.

    Returns the summary (RM score, KL, mean length in tokens, distinct-2, and the task's ``evaluate``:
    gold, success rate and its own columns) and one row per episode (prompt, response, score, kl, and
    gold when there is a task). An env that plays no task (and no ``task=``) is judged without gold. The
    same ``seed`` gives the same prompts and the same random numbers, so before/after comparisons differ
    by the policy only.
    """
    spec = find_task(env, task)
    model = actor_of(agent)
    if env.unwrapped.policy is not model.policy:  # type: ignore[attr-defined]
        raise ValueError("evaluate needs the env made with this policy (make_eval_env does that)")
    generator = torch.Generator(next(model.policy.parameters()).device).manual_seed(seed)
    rounds = -(-episodes // env.num_envs)
    prompts: list[str] = []
    responses: list[str] = []
    scores: list[float] = []
    kls: list[float] = []
    lengths: list[float] = []
    for r in range(rounds):
        rollout = collect(env, model, generator=generator, seed=seed + r * env.num_envs)
        prompts += rollout.prompts
        responses += rollout.responses
        scores += rollout.scores.tolist()
        kls += rollout.kl.tolist()
        lengths += rollout.lengths.tolist()
    summary = {
        "rm_score": float(np.mean(scores)),
        "kl": float(np.mean(kls)),
        "length": float(np.mean(lengths)),
        "distinct_2": distinct_n(responses, 2),
    }
    rows: list[dict[str, Any]] = [
        {"prompt": p, "response": y, "score": s, "kl": k}
        for p, y, s, k in zip(prompts, responses, scores, kls, strict=True)
    ]
    if spec is not None:
        summary.update(spec.evaluate(prompts, responses))
        for row, g in zip(rows, spec.gold(prompts, responses), strict=True):
            row["gold"] = g
    return summary, rows


def eval_metric_name(key: str) -> str:
    """The metric name of a key of :func:`evaluate`'s summary during training: ``eval/<key>``, with a
    task's ``gold_x`` column as ``eval/x`` (``gold_sentiment`` is ``eval/sentiment``)."""
    return "eval/" + (key if key == "gold" else key.removeprefix("gold_"))


def metric_name(key: str) -> str:
    """The per-iteration metric name of a key of a task's ``evaluate``: ``gold`` is ``gold/score``,
    ``gold_sentiment`` is ``gold/sentiment``, any other ``key`` is ``gold/key``."""
    return "gold/score" if key == "gold" else "gold/" + key.removeprefix("gold_")


def gold_metrics(task: Task, prompts: list[str], responses: list[str]) -> dict[str, float]:
    """``gold/...`` metrics of a batch of episodes (for the per-iteration log)."""
    return {metric_name(k): v for k, v in task.evaluate(prompts, responses).items() if k != "n"}


def format_summary(
    before: dict[str, float],
    after: dict[str, float],
    columns: tuple[tuple[str, str, str], ...] = SUMMARY_COLUMNS,
) -> str:
    """The before/after table as aligned text."""
    width = max(len(h) for _, h, _ in columns)
    lines = [f"{'':<{width}}  {'before':>9}  {'after':>9}"]
    for key, header, fmt in columns:
        lines.append(f"{header:<{width}}  {_shown(fmt, before[key]):>9}  {_shown(fmt, after[key]):>9}")
    return "\n".join(lines)


def _shown(fmt: str, value: float) -> str:
    """``value`` in ``fmt``, with a value that rounds to zero shown as zero (a KL of -1e-7: "0.00")."""
    text = fmt.format(value)
    return fmt.format(0.0) if not text.strip("+-0.%") else text


def plot_curves(
    histories: dict[str, list[dict[str, float]]], path: str | Path, title: str = "", band: bool = False
) -> Path:
    """Learning curves against timesteps: RM score, gold, success rate, KL (without gold: RM score,
    length, KL), the training rollouts' as lines and the evaluations' (``eval/...``) as dashed lines with
    markers.

    ``histories`` maps a label to metric rows (one per iteration, with ``charts/timesteps``). With
    ``band=True`` labels of the form ``"name/seed"`` are averaged per name with a min-max band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # (training rollouts' metric, evaluation's metric, title); a run without gold draws length instead
    panels: tuple[tuple[str, str, str], ...] = (
        ("objective/scores", "eval/rm_score", "RM score (proxy)"),
        ("gold/score", "eval/gold", "gold"),
        ("gold/success_rate", "eval/success_rate", "gold success rate"),
        ("objective/kl", "eval/kl", "KL to reference (nats)"),
    )
    if not any("gold/score" in r or "eval/gold" in r for rows in histories.values() for r in rows):
        panels = (
            panels[0],
            ("charts/episode_length", "eval/length", "response length (tokens)"),
            panels[3],
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    groups: dict[str, list[list[dict[str, float]]]] = {}
    for label, rows in histories.items():
        groups.setdefault(label.split("/")[0] if band else label, []).append(rows)
    for ax, (train_key, eval_key, name) in zip(axes, panels, strict=True):
        for label, runs in groups.items():
            color = None
            for key, style in ((train_key, "-"), (eval_key, "o--")):
                kept = [[r for r in rows if key in r] for rows in runs]
                kept = [rows for rows in kept if rows]
                if not kept:
                    continue
                n = min(len(rows) for rows in kept)
                x = np.array([r["charts/timesteps"] for r in kept[0][:n]])
                y = np.array([[r[key] for r in rows[:n]] for rows in kept])  # (runs, n)
                suffix = " (eval)" if key == eval_key else ""
                line = ax.plot(x, y.mean(0), style, label=label + suffix, color=color, markersize=3)[0]
                color = line.get_color()
                if len(kept) > 1:
                    ax.fill_between(x, y.min(0), y.max(0), alpha=0.2, color=color)
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
