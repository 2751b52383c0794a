"""The main job: train an agent on a task of the suite (the default review task unless told) and show
what changed.

    python -m agents.train                   # PPO, 100k tokens, run folder runs/ppo-reviews-s0-<time>
    python -m agents.train --agent reinforce --seed 1 --timesteps 200000 --run-dir runs/rf1
    python -m agents.train --task sorting             # another task: textenv.tasks.names()
    python -m agents.train --resume runs/rf1 --timesteps 300000   # continue a run to a new total
    python -m agents.train --help                       # every setting of every agent

It prints a line per iteration under a progress bar, then a before/after table (RM score, gold, success
rate, KL and the task's own columns) and sample responses, and writes a run folder:
``config.json``, ``metrics.jsonl`` / ``metrics.csv`` (one row per iteration), ``curves.png``,
``summary.json``, ``samples.md`` and ``checkpoint/`` (a saved agent; its ``policy/`` loads as a plain
transformers model).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

AGENT_NAMES = ("ppo", "reinforce", "egreedy")
ENV_OPTIONS = ("kl_coef", "kl_target", "kl_horizon", "kl_estimator", "kl_placement")


def agent_classes() -> dict[str, Any]:
    from agents import PPO, REINFORCE, EpsilonGreedyPPO

    return {"ppo": PPO, "reinforce": REINFORCE, "egreedy": EpsilonGreedyPPO}


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agents.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agent", choices=AGENT_NAMES, default=None, help="learner (default: ppo)")
    parser.add_argument(
        "--task", choices=task_names(), default=None, help="task of the suite (default: reviews)"
    )
    parser.add_argument("--timesteps", type=int, default=None, help="total response tokens (default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default 0)")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default runs/AGENT-sSEED-TIME)"
    )
    parser.add_argument("--resume", type=Path, default=None, help="continue the run saved in this folder")
    parser.add_argument("--eval-episodes", type=int, default=512, help="episodes of the before/after table")
    parser.add_argument("--samples", type=int, default=6, help="sample responses to show before and after")
    parser.add_argument(
        "--save-every", type=int, default=25, help="checkpoint every N iterations (0: end only)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no line per iteration")
    env = parser.add_argument_group("environment (the task's env)")
    env.add_argument("--kl-coef", type=float, help="initial beta (default 0.2)")
    env.add_argument("--kl-target", type=_parse_value, help="adaptive-beta KL target in nats, or none (6)")
    env.add_argument("--kl-horizon", type=float, help="adaptive-beta horizon in episodes (10000)")
    env.add_argument("--kl-estimator", choices=("k1", "k2", "k3"), help="per-token KL estimator (k1)")
    env.add_argument("--kl-placement", choices=("terminal", "per_token"), help="where the KL is paid")
    group = parser.add_argument_group("agent settings (each applies to the agents that have it)")
    defaults: dict[str, dict[str, Any]] = {}  # field -> {agent: default}
    helps: dict[str, str] = {}
    for name, cls in agent_classes().items():
        for f in fields(cls.Config):
            if f.name != "env_kwargs":
                defaults.setdefault(f.name, {})[name] = f.default if f.default is not MISSING else None
                helps.setdefault(f.name, f.metadata.get("help", ""))
    for field_name, by_agent in defaults.items():
        if len(set(map(repr, by_agent.values()))) == 1:
            default = f"default {next(iter(by_agent.values()))!r}"
        else:
            default = "default " + ", ".join(f"{v!r} for {a}" for a, v in by_agent.items())
        who = "" if len(by_agent) == len(AGENT_NAMES) else f" [{', '.join(by_agent)}]"
        group.add_argument(
            "--" + field_name.replace("_", "-"),
            dest=field_name,
            type=_parse_value,
            default=argparse.SUPPRESS,
            help=f"{helps[field_name]} ({default}){who}",
        )
    return parser


def _print(text: str) -> None:
    tqdm.write(text)
    sys.stdout.flush()


def task_names() -> list[str]:
    from textenv import tasks

    return tasks.names()


def _iteration_line(m: dict[str, float]) -> str:
    return (
        f"it {int(m['charts/iteration']):>4}  tok {int(m['charts/timesteps']):>8,}  "
        f"score {m['objective/scores']:+.2f}  kl {m['objective/kl']:5.2f}  "
        f"beta {m['objective/kl_coef']:.3f}  "
        f"gold {m['gold/score']:+.2f}  success {m['gold/success_rate']:4.0%}  "
        f"len {m['charts/episode_length']:4.1f}  "
        f"({m['charts/rollout_seconds'] + m['charts/update_seconds']:.1f}s)"
    )


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _samples(rows: list[dict[str, Any]], n: int) -> list[str]:
    return [f"[RM {r['score']:+.2f} | gold {r['gold']:+.2f}] {r['prompt']}{r['response']}" for r in rows[:n]]


def newest_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint that passes its check (``checkpoint/``, or ``checkpoint.prev/`` when a
    save was killed between its two renames); says which, and why any other was skipped."""
    from textenv.atomic import complete_versions

    good, errors = complete_versions(run_dir / "checkpoint")
    for error in errors:
        _print(f"skipping a checkpoint that fails its check: {error}")
    if not good:
        reason = "; ".join(map(str, errors)) or f"{run_dir / 'checkpoint'} does not exist"
        raise SystemExit(f"{run_dir} has no complete checkpoint to resume from: {reason}")

    def iterations(folder: Path) -> int:
        return int(json.loads((folder / "state.json").read_text(encoding="utf-8"))["iterations"])

    best = max(good, key=iterations)
    _print(f"resuming from {best} (iteration {iterations(best)}, the newest complete checkpoint)")
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    given = vars(args)
    import transformers

    from agents import evaluation
    from agents.base import DEFAULT_ENV_KWARGS
    from textenv import atomic

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)

    classes = agent_classes()
    agent_fields = {f.name for cls in classes.values() for f in fields(cls.Config)}
    overrides = {k: v for k, v in given.items() if k in agent_fields}
    chosen = args.agent
    if args.resume is not None:
        chosen = json.loads((args.resume / "config.json").read_text(encoding="utf-8"))["agent"]
    own = {f.name for f in fields(classes[chosen or "ppo"].Config)}
    stray = sorted(set(overrides) - own)
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        raise SystemExit(f"{flags} does not apply to {chosen or 'ppo'}; see --help for each agent's settings")
    env_overrides = {k: given[k] for k in ENV_OPTIONS if given.get(k) is not None}

    command = ["python", "-m", "agents.train", *(argv if argv is not None else sys.argv[1:])]
    saved: dict[str, Any] = {}
    if args.resume is not None:
        if env_overrides or args.seed is not None or args.run_dir is not None or args.task is not None:
            raise SystemExit(
                "--resume continues a run as it was made: drop --seed, --run-dir, --task and --kl-* options"
            )
        run_dir = args.resume
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        name = saved["agent"]
        if args.agent not in (None, name):
            raise SystemExit(f"{run_dir} is a {name} run; drop --agent or start a new run")
        seed = saved["seed"]
        task = saved.get("task", "reviews")
        timesteps = args.timesteps if args.timesteps is not None else saved["timesteps"]
        agent = classes[name].load(newest_checkpoint(run_dir), "TextRLHF-v0", **overrides)
        before = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["before"]
        before_rows = json.loads((run_dir / "samples_before.json").read_text(encoding="utf-8"))
        # keep the metrics of the iterations the checkpoint has, drop any logged after it
        history = agent.history
        _print(f"resuming {name} from {run_dir} at {agent.num_timesteps:,} timesteps")
    else:
        name = args.agent or "ppo"
        task = args.task or "reviews"
        seed = 0 if args.seed is None else args.seed
        timesteps = 100_000 if args.timesteps is None else args.timesteps
        run_dir = args.run_dir or Path("runs") / f"{name}-{task}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "config.json").exists():
            raise SystemExit(f"{run_dir} already holds a run: pass --resume {run_dir} or another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        env_kwargs = DEFAULT_ENV_KWARGS | env_overrides | {"task": task}
        agent = classes[name]("TextRLHF-v0", seed=seed, env_kwargs=env_kwargs, **overrides)
        history = agent.history
    config = {
        "agent": name,
        "task": task,
        "seed": seed,
        "timesteps": timesteps,
        "config": dict(vars(agent.config)),
        "command": saved["command"] if args.resume is not None else command,
        "resumed_with": [*saved.get("resumed_with", []), command] if args.resume is not None else [],
    }
    atomic.write_json(run_dir / "config.json", config)

    spec = evaluation.task_of(agent)
    columns = evaluation.summary_columns(spec)
    eval_env = evaluation.make_eval_env(agent, num_envs=min(256, args.eval_episodes))
    policy = agent.model.policy
    _print(
        f"{type(agent).__name__} on TextRLHF-v0, task {spec.name}: "
        f"{sum(p.numel() for p in policy.parameters()):,}"
        f"-parameter policy, {agent.constants.num_envs} episodes per iteration, {timesteps:,} timesteps, "
        f"run folder {run_dir}"
    )
    if args.resume is None:
        before, before_rows = evaluation.evaluate(agent, eval_env, args.eval_episodes)
        atomic.write_json(run_dir / "samples_before.json", before_rows[: args.samples])
        atomic.write_json(run_dir / "summary.json", {"before": before})

    metrics_path = run_dir / "metrics.jsonl"
    atomic.write_text(metrics_path, "".join(json.dumps(row) + "\n" for row in history))
    start = time.perf_counter()

    def on_iteration(agent_: Any, metrics: dict[str, float]) -> None:
        rollout = agent_.last_rollout
        metrics.update(evaluation.gold_metrics(spec, rollout.prompts, rollout.responses))
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if not args.quiet:
            _print(_iteration_line(metrics))
        if args.save_every and agent_.iterations % args.save_every == 0:
            agent_.save(run_dir / "checkpoint")

    remaining = max(0, timesteps - agent.num_timesteps)
    agent.learn(remaining, callback=on_iteration, progress_bar=True)
    train_seconds = time.perf_counter() - start
    agent.save(run_dir / "checkpoint")
    write_csv(agent.history, run_dir / "metrics.csv")
    evaluation.plot_curves(
        {name: agent.history}, run_dir / "curves.png", title=f"{name} on {spec.name}, seed {seed}"
    )

    after, after_rows = evaluation.evaluate(agent, eval_env, args.eval_episodes)
    summary = {
        "before": before,
        "after": after,
        "train_seconds": train_seconds,
        "timesteps": agent.num_timesteps,
    }
    atomic.write_json(run_dir / "summary.json", summary)
    samples = [
        "## before",
        *_samples(before_rows, args.samples),
        "",
        "## after",
        *_samples(after_rows, args.samples),
    ]
    (run_dir / "samples.md").write_text("\n".join(samples) + "\n", encoding="utf-8")

    print(
        f"\ntrained {agent.num_timesteps:,} timesteps in {train_seconds:.0f}s; "
        f"{args.eval_episodes} evaluation episodes:"
    )
    print(evaluation.format_summary(before, after, columns))
    print("\nsamples before training:")
    print("\n".join("  " + s for s in _samples(before_rows, args.samples)))
    print("samples after training:")
    print("\n".join("  " + s for s in _samples(after_rows, args.samples)))
    print(f"\nrun folder: {run_dir} (metrics.jsonl, metrics.csv, curves.png, summary.json, checkpoint/)")
    return summary


def cli() -> None:
    """Entry point of the ``textenv-train`` script (``main`` returns the summary; a script must not)."""
    main()


if __name__ == "__main__":
    cli()
