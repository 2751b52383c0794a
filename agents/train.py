"""The main job: train an agent on any task, model and reward, evaluate it as it goes, and show what
changed.

    python -m agents.train                   # PPO on the default task, 100k tokens
    python -m agents.train --agent reinforce --seed 1 --timesteps 200000 --run-dir runs/rf1
    python -m agents.train --task sorting             # another task of the suite: textenv.tasks.names()
    python -m agents.train --policy path/to/lm --reward-model my_rewards:score --prompts prompts.txt
    python -m agents.train --config run.yaml --learning-rate 3e-4   # settings from a file; flags win
    python -m agents.train --resume runs/rf1 --timesteps 300000   # continue a run to a new total
    python -m agents.train --help                       # every setting of every agent
    torchrun --nproc_per_node 2 -m agents.train         # data-parallel: 2 processes share the batch
    python -m agents.train --lora 8 --gradient-checkpointing true --mixed-precision bf16 --device cuda \
        --frozen-dtype bfloat16                         # the frozen base held in bf16

The parts: ``--task`` (a task of the suite, which fills in whatever is not given), ``--policy``,
``--reference``, ``--tokenizer`` (a local directory or a hub name), ``--reward-model`` (a directory, a hub
name, or ``module:function`` / ``file.py:function`` for a Python callable ``(prompts, responses) ->
scores``) and ``--prompts`` (a text file of one prompt per line, or a JSON list). A policy of your own
without ``--task`` needs ``--reward-model`` and ``--prompts``.

It prints a line per iteration under a progress bar, evaluates the policy every ``--eval-every``
iterations on fixed-seed prompts (gold and proxy), then prints a before/after table (RM score, KL, and
gold, success rate and the task's own columns when the task has gold) and sample responses, and writes a
run folder, updated as training goes: ``config.json``, ``metrics.jsonl`` / ``metrics.csv`` (one row per
iteration), ``curves.png``, ``summary.json``, ``samples.md``, ``checkpoint/`` (a saved agent; its
``policy/`` loads as a plain transformers model) and, with ``--report-to tensorboard``, ``tensorboard/``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents import distributed
from agents.callbacks import BaseCallback

AGENT_NAMES = ("ppo", "grpo", "reinforce", "egreedy")
#: Settings of the env a flag can give (``None``: the task's or the env's default).
ENV_OPTIONS = (
    "kl_coef",
    "kl_target",
    "kl_horizon",
    "kl_estimator",
    "kl_placement",
    "max_new_tokens",
    "max_prompt_tokens",
    "temperature",
    "lora",
    "frozen_dtype",
)
#: The run's parts: what the env is made of (recorded in config.json; a resumed run keeps them).
PART_OPTIONS = ("task", "policy", "reference", "tokenizer", "reward_model", "prompts", "holdout")


def agent_classes() -> dict[str, Any]:
    from agents import GRPO, PPO, REINFORCE, EpsilonGreedyPPO

    return {"ppo": PPO, "grpo": GRPO, "reinforce": REINFORCE, "egreedy": EpsilonGreedyPPO}


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
    parser.add_argument("--timesteps", type=int, default=None, help="total response tokens (default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default 0)")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default runs/AGENT-TASK-sSEED-TIME)"
    )
    parser.add_argument("--resume", type=Path, default=None, help="continue the run saved in this folder")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a JSON or YAML file of settings, named as the flags (learning_rate: 3e-4); flags given on "
        "the command line override it",
    )
    parser.add_argument("--device", default=None, help="torch device of the models (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no line per iteration")
    parts = parser.add_argument_group("the run's parts (a task fills in what is not given)")
    parts.add_argument(
        "--task",
        choices=task_names(),
        default=None,
        help="task of the suite (default: reviews, unless --policy)",
    )
    parts.add_argument("--policy", default=None, help="causal LM to train: a local directory or a hub name")
    parts.add_argument("--reference", default=None, help="reference LM of the KL (default: a frozen policy)")
    parts.add_argument("--tokenizer", default=None, help="tokenizer (default: the policy's)")
    parts.add_argument(
        "--reward-model",
        default=None,
        help="a reward model's directory or hub name, or module:function / file.py:function for a Python "
        "callable (prompts, responses) -> scores",
    )
    parts.add_argument(
        "--prompts", type=Path, default=None, help="prompts file: one per line (.txt) or a JSON list (.json)"
    )
    parts.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="share of the prompts kept out of training and used for evaluation (default 0: evaluate on "
        "fixed-seed draws of the training prompts)",
    )
    watch = parser.add_argument_group("evaluation, logging and checkpoints")
    watch.add_argument(
        "--eval-every",
        type=int,
        default=10,
        help="evaluate every N iterations during training (0: never; default 10)",
    )
    watch.add_argument(
        "--eval-every-episodes",
        type=int,
        default=256,
        help="episodes of each evaluation during training (default 256)",
    )
    watch.add_argument(
        "--eval-episodes", type=int, default=512, help="episodes of the before/after table (default 512)"
    )
    watch.add_argument(
        "--samples", type=int, default=6, help="sample responses to show before and after (default 6)"
    )
    watch.add_argument(
        "--save-every", type=int, default=25, help="checkpoint every N iterations (0: end only; default 25)"
    )
    watch.add_argument(
        "--stop-when",
        default=None,
        metavar="METRIC>=VALUE",
        help="stop once a metric passes a threshold, e.g. 'eval/gold>=0.9' or 'objective/kl<=2'",
    )
    watch.add_argument(
        "--report-to",
        default="none",
        help="where metrics go besides the run folder: none (default), tensorboard, wandb, or both "
        "(tensorboard,wandb)",
    )
    watch.add_argument(
        "--wandb-project", default="textenv", help="W&B project (with --report-to wandb; default textenv)"
    )
    env = parser.add_argument_group("environment (default: the task's, or the env's)")
    env.add_argument("--kl-coef", type=float, help="initial beta (default 0.2)")
    env.add_argument("--kl-target", type=_parse_value, help="adaptive-beta KL target in nats, or none (6)")
    env.add_argument("--kl-horizon", type=float, help="adaptive-beta horizon in episodes (10000)")
    env.add_argument("--kl-estimator", choices=("k1", "k2", "k3"), help="per-token KL estimator (k1)")
    env.add_argument("--kl-placement", choices=("terminal", "per_token"), help="where the KL is paid")
    env.add_argument("--max-new-tokens", type=int, help="response length limit (the task's, or 32)")
    env.add_argument("--max-prompt-tokens", type=int, help="prompt length limit (the task's, or 64)")
    env.add_argument("--temperature", type=float, help="sampling temperature of the policy (1.0)")
    env.add_argument(
        "--lora",
        type=int,
        metavar="RANK",
        help="train LoRA adapters of this rank (peft) instead of the whole policy; the reference is the "
        "policy with its adapters off (one copy of the weights). Adapters want a larger --learning-rate "
        "than the default 1e-4 (1e-3 on the default task). Default: full fine-tuning",
    )
    env.add_argument(
        "--frozen-dtype",
        choices=("float32", "bfloat16", "float16"),
        help="hold the weights that never train (the reference; with --lora the policy's base) in this "
        "dtype: half the memory, and no cast of them on every pass under --mixed-precision. Default: as "
        "loaded",
    )
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--config FILE``'s settings as defaults that the flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    settings = read_config_file(args.config)
    dests = {action.dest for action in parser._actions} - {"help", "config", "resume"}
    unknown = sorted(k for k in settings if k not in dests)
    if unknown:
        raise SystemExit(
            f"{args.config}: no setting {', '.join(unknown)}; settings are named as the flags "
            "(learning_rate or learning-rate for --learning-rate); see --help"
        )
    parser.set_defaults(**settings)
    return parser.parse_args(argv)


def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON or YAML file of settings: a mapping of flag names (``-`` or ``_``) to values."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SystemExit(f"cannot read --config {path}: {error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SystemExit(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: a JSON list of strings (``.json``), or one prompt per line (blank lines
    skipped; the line's end is not part of the prompt)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"cannot read --prompts {path}: {error}") from None
    if path.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise SystemExit(f"{path} must hold a JSON list of strings")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"{path} holds no prompts")
    return prompts


def split_prompts(prompts: list[str], holdout: float) -> tuple[list[str], list[str]]:
    """``(training prompts, held-out prompts)``: a fixed-seed share ``holdout`` of the distinct prompts
    held out (at least one, and at least one left to train on)."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < 2:
        raise SystemExit(f"--holdout needs at least two distinct prompts, got {len(distinct)}")
    order = np.random.default_rng(0).permutation(len(distinct))
    held = min(len(distinct) - 1, max(1, round(holdout * len(distinct))))
    held_out = {distinct[i] for i in order[:held]}
    return [p for p in prompts if p not in held_out], [p for p in distinct if p in held_out]


def parse_threshold(text: str) -> tuple[str, float, str]:
    """``"eval/gold>=0.9"`` as ``("eval/gold", 0.9, "above")``."""
    for sign, mode in ((">=", "above"), ("<=", "below")):
        if sign in text:
            metric, _, value = text.partition(sign)
            try:
                return metric.strip(), float(value), mode
            except ValueError:
                break
    raise SystemExit(f"--stop-when takes METRIC>=VALUE or METRIC<=VALUE, got {text!r}")


def _print(text: str) -> None:
    tqdm.write(text)
    sys.stdout.flush()


def task_names() -> list[str]:
    from textenv import tasks

    return tasks.names()


def _iteration_line(m: dict[str, float]) -> str:
    line = (
        f"it {int(m['charts/iteration']):>4}  tok {int(m['charts/timesteps']):>8,}  "
        f"score {m['objective/scores']:+.2f}  kl {m['objective/kl']:5.2f}  "
        f"beta {m['objective/kl_coef']:.3f}  "
    )
    if "gold/score" in m:
        line += f"gold {m['gold/score']:+.2f}  success {m['gold/success_rate']:4.0%}  "
    line += (
        f"len {m['charts/episode_length']:4.1f}  "
        f"({m['charts/rollout_seconds'] + m['charts/update_seconds']:.1f}s)"
    )
    if "eval/rm_score" in m:
        line += f"  | eval: score {m['eval/rm_score']:+.2f}  kl {m['eval/kl']:.2f}"
        if "eval/gold" in m:
            line += f"  gold {m['eval/gold']:+.2f}  success {m['eval/success_rate']:4.0%}"
    return line


def _samples(rows: list[dict[str, Any]], n: int) -> list[str]:
    lines = []
    for r in rows[:n]:
        gold = f" | gold {r['gold']:+.2f}" if "gold" in r else ""
        lines.append(f"[RM {r['score']:+.2f}{gold}] {r['prompt']}{r['response']}")
    return lines


def newest_checkpoint(run_dir: Path, say: Any = _print) -> Path:
    """The run's newest checkpoint that passes its check (``checkpoint/``, or ``checkpoint.prev/`` when a
    save was killed between its two renames); says which (through ``say``, unless None), and why any other
    was skipped."""
    from textenv.atomic import complete_versions

    say = say or (lambda text: None)
    good, errors = complete_versions(run_dir / "checkpoint")
    for error in errors:
        say(f"skipping a checkpoint that fails its check: {error}")
    if not good:
        reason = "; ".join(map(str, errors)) or f"{run_dir / 'checkpoint'} does not exist"
        raise SystemExit(f"{run_dir} has no complete checkpoint to resume from: {reason}")

    def iterations(folder: Path) -> int:
        return int(json.loads((folder / "state.json").read_text(encoding="utf-8"))["iterations"])

    best = max(good, key=iterations)
    say(f"resuming from {best} (iteration {iterations(best)}, the newest complete checkpoint)")
    return best


class RolloutGold(BaseCallback):
    """Adds the task's gold of each training rollout to its metrics (``gold/score``, ...)."""

    def __init__(self, task: Any):
        super().__init__()
        self.task = task

    def _on_step(self) -> bool:
        from agents import evaluation

        rollout = self.agent.last_rollout
        assert rollout is not None  # learn sets it before the callbacks run
        gold = evaluation.gold_metrics(self.task, rollout.prompts, rollout.responses)
        if self.agent.world_size > 1:  # every rank runs this callback: the mean over all their episodes
            gold = distributed.reduce_metrics(gold)
        self.locals["metrics"].update(gold)
        return True


def env_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str] | None, dict[str, Any]]:
    """What the env is made with, all JSON (a ``module:function`` reward stays a string, imported by the
    env), the held-out evaluation prompts (None: the training prompts), and the parts as given."""
    from agents.base import DEFAULT_ENV_KWARGS
    from textenv import tasks
    from textenv.rewards import is_import_spec, load_import_spec

    parts = {k: getattr(args, k) for k in PART_OPTIONS}
    if parts["prompts"] is not None:
        parts["prompts"] = str(parts["prompts"])
    task = args.task
    if task is None and args.policy is None:
        task = tasks.DEFAULT_TASK_NAME
    if task is None and (args.reward_model is None or args.prompts is None):
        raise SystemExit(
            "--policy without --task needs --reward-model and --prompts (or --task NAME to take the "
            "missing parts from a task of the suite)"
        )
    kwargs: dict[str, Any] = dict(DEFAULT_ENV_KWARGS)
    kwargs.update({k: getattr(args, k) for k in ENV_OPTIONS if getattr(args, k) is not None})
    if task is not None:
        kwargs["task"] = task
    for key in ("policy", "reference", "tokenizer", "reward_model"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.device is not None:
        kwargs["device"] = args.device
    reward = args.reward_model
    if reward is not None and is_import_spec(reward):
        try:
            load_import_spec(reward)  # a missing module or name is named now, before any model loads
        except ValueError as error:
            raise SystemExit(f"--reward-model {error}") from None
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    eval_prompts = None
    if args.holdout:
        if not 0.0 < args.holdout < 1.0:
            raise SystemExit(f"--holdout must be in (0, 1), got {args.holdout}")
        if prompts is None:
            prompts = tasks.load(task).prompts() if task is not None else []
        prompts, eval_prompts = split_prompts(prompts, args.holdout)
    if prompts is not None:
        kwargs["prompts"] = prompts
    return kwargs, eval_prompts, parts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command; returns the before/after summary (an empty dict on the ranks other than 0 of a
    data-parallel run, which train but neither evaluate nor write)."""
    args = parse_args(argv)
    launched = distributed.launched_world_size() > 1 and not distributed.active()
    try:
        args.device = distributed.init_from_environment(args.device)
        return _main(args, argv)
    finally:
        if launched:
            distributed.shutdown()


def _main(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    given = vars(args)
    lead = distributed.rank() == 0  # rank 0 evaluates, prints and writes; every rank trains
    from agents import evaluation
    from agents.callbacks import CheckpointCallback, EvalCallback, StopTrainingOnThreshold
    from agents.reporting import RunLogger, parse_report_to
    from textenv import atomic
    from textenv.lora import is_peft_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        parse_report_to(args.report_to)
    except ValueError as error:
        raise SystemExit(f"--report-to: {error}") from None
    stop = parse_threshold(args.stop_when) if args.stop_when else None

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

    command = ["python", "-m", "agents.train", *(argv if argv is not None else sys.argv[1:])]
    saved: dict[str, Any] = {}
    if args.resume is not None:
        fixed = [k for k in (*ENV_OPTIONS, *PART_OPTIONS, "seed", "run_dir") if given.get(k) is not None]
        if fixed:
            flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise SystemExit(f"--resume continues a run as it was made: drop {flags}")
        run_dir = args.resume
        distributed.barrier()  # no rank reads the run folder while rank 0 may still be writing it
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        name = saved["agent"]
        if args.agent not in (None, name):
            raise SystemExit(f"{run_dir} is a {name} run; drop --agent or start a new run")
        seed = saved["seed"]
        parts = saved.get("parts", {"task": saved.get("task", "reviews")})
        eval_prompts = saved.get("eval_prompts")
        timesteps = args.timesteps if args.timesteps is not None else saved["timesteps"]
        checkpoint = newest_checkpoint(run_dir, say=_print if lead else None)
        if args.device is not None:  # the same run on another device
            state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
            overrides["env_kwargs"] = state["config"]["env_kwargs"] | {"device": args.device}
        agent = classes[name].load(checkpoint, "TextRLHF-v0", **overrides)
        before = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["before"]
        before_rows = json.loads((run_dir / "samples_before.json").read_text(encoding="utf-8"))
        if lead:
            _print(f"resuming {name} from {run_dir} at {agent.num_timesteps:,} timesteps")
    else:
        name = args.agent or "ppo"
        seed = 0 if args.seed is None else args.seed
        timesteps = 100_000 if args.timesteps is None else args.timesteps
        env_kwargs, eval_prompts, parts = env_settings(args)
        label = env_kwargs.get("task") or "custom"
        run_dir = args.run_dir or Path("runs") / f"{name}-{label}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's name, on every rank
        if (run_dir / "config.json").exists():
            raise SystemExit(f"{run_dir} already holds a run: pass --resume {run_dir} or another --run-dir")
        distributed.barrier()  # every rank has looked before rank 0 writes
        agent = classes[name]("TextRLHF-v0", seed=seed, env_kwargs=env_kwargs, **overrides)
        if lead:
            run_dir.mkdir(parents=True, exist_ok=True)
    spec = evaluation.find_task(agent)
    config = {
        "agent": name,
        # names the run for loggers that keep runs apart (W&B), the same when it is resumed
        "run_id": saved.get("run_id") or f"{run_dir.name}-{secrets.token_hex(4)}",
        "task": spec.name if spec is not None else None,
        "parts": parts,
        "eval_prompts": eval_prompts,
        "seed": seed,
        "timesteps": timesteps,
        "config": dict(vars(agent.config)),
        "command": saved["command"] if args.resume is not None else command,
        "resumed_with": [*saved.get("resumed_with", []), command] if args.resume is not None else [],
        "processes": agent.world_size,
    }
    if not lead:  # the other ranks of a data-parallel run: train, with the callbacks that reduce over ranks
        agent.learn(
            max(0, timesteps - agent.num_timesteps),
            callback=[RolloutGold(spec)] if spec is not None else None,
        )
        return {}
    atomic.write_json(run_dir / "config.json", config)

    columns = evaluation.summary_columns(spec)
    eval_env = evaluation.make_eval_env(agent, num_envs=min(256, args.eval_episodes), prompts=eval_prompts)
    policy = agent.model.policy
    where = f"task {spec.name}" if spec is not None else "your own parts (no gold)"
    trained = sum(p.numel() for p in agent.trainable_parameters())
    _print(
        f"{type(agent).__name__} on TextRLHF-v0, {where}: "
        f"{sum(p.numel() for p in policy.parameters()):,}-parameter policy"
        f"{f' ({trained:,} trained)' if is_peft_model(policy) else ''}, "
        f"{agent.config.num_envs} episodes per iteration"
        f"{f' over {agent.world_size} processes' if agent.world_size > 1 else ''}, {timesteps:,} timesteps, "
        f"run folder {run_dir}"
    )
    if args.resume is None:
        before, before_rows = evaluation.evaluate(agent, eval_env, args.eval_episodes)
        atomic.write_json(run_dir / "samples_before.json", before_rows[: args.samples])
        atomic.write_json(run_dir / "summary.json", {"before": before})

    callbacks: list[Any] = []
    if spec is not None:
        callbacks.append(RolloutGold(spec))
    if args.eval_every:
        callbacks.append(
            EvalCallback(args.eval_every, episodes=args.eval_every_episodes, prompts=eval_prompts)
        )
    stopper = StopTrainingOnThreshold(*stop) if stop is not None else None
    if stopper is not None:
        callbacks.append(stopper)
    callbacks.append(
        RunLogger(
            run_dir,
            report_to=args.report_to,
            title=f"{name} on {spec.name if spec is not None else 'your own parts'}, seed {seed}",
            plot_every=0 if args.eval_every else 10,
            config=config,
            wandb_project=args.wandb_project,
            run_id=config["run_id"],
            print_line=None if args.quiet else lambda m: _print(_iteration_line(m)),
        )
    )
    if args.save_every:
        callbacks.append(CheckpointCallback(args.save_every, run_dir / "checkpoint"))

    start = time.perf_counter()
    remaining = max(0, timesteps - agent.num_timesteps)
    agent.learn(remaining, callback=callbacks, progress_bar=True)
    train_seconds = time.perf_counter() - start
    agent.save(run_dir / "checkpoint")
    if stopper is not None and stopper.stopped_at is not None:
        _print(f"stopped at iteration {stopper.stopped_at}: {args.stop_when}")

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
    atomic.write_text(run_dir / "samples.md", "\n".join(samples) + "\n")

    print(
        f"\ntrained {agent.num_timesteps:,} timesteps in {train_seconds:.0f}s; "
        f"{args.eval_episodes} evaluation episodes{' on held-out prompts' if eval_prompts else ''}:"
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
