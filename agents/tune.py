"""``textenv-tune``: Bayesian search of an agent's settings on a task with Optuna.

Each trial trains the agent with settings drawn by Optuna's TPE sampler, for the task's budget of
response tokens, and is scored by the benchmark's own protocol (:mod:`agents.benchmark`): held-out
prompts, fixed evaluation seeds, the task's gold (or the proxy, ``--objective proxy``) at evenly spaced
points of the budget. A trial's value is the mean over those points (``--summary auc``, the default: high
early *and* at the end) or the last point's (``--summary final``). A trial whose final KL to the reference
passes the task's bar (10 nats) is marked infeasible, and TPE learns to avoid its region.

With several tasks (``--task sorting reviews``) a trial trains on each in turn with the same settings, and
its value is the mean over the tasks of their values on gold normalised as in the suite's report (0: the
starting policy's gold, 1: the task's best reachable), so that settings are chosen for the suite and not
for one task: settings tuned on one task alone can collapse on another. Its final KL is the largest of the
tasks'. ``best.json`` then holds the settings without a task or budget.

After every evaluation point the trial reports its value so far, and the pruner (median by default, or
Hyperband) stops it when it trails the trials before it at the same point.

The study is stored in a SQLite file (``OUT/study.db``): running the command again continues it until it
holds ``--trials`` finished trials, and several processes started on the same folder share it (SQLite
serialises their writes). A trial whose process was killed is marked failed when the next process starts,
and its settings are tried again. Beside the study: ``best.json`` (the best settings, named as the training
command's flags: ``textenv-train --config OUT/best.json``), ``trials.csv``, ``history.png`` and
``importances.png`` (Optuna's plots) and ``summary.md``.

    textenv-tune --agent reinforce --task reviews --trials 20
    textenv-tune --agent ppo --task sorting --trials 30 --params learning_rate num_minibatches
    textenv-tune --agent grpo --task sorting reviews --budget 30000 --enqueue
    textenv-tune --agent grpo --fix kl_in=loss --objective proxy --pruner hyperband --out runs/tune-grpo

Why gold and not the proxy: the proxy is the reward model the agent is trained on, and a setting that
exploits it faster (a higher learning rate, a smaller KL penalty) scores higher on it while the text gets
worse; a search on the proxy selects for over-optimisation (Gao et al., 2022). Gold is what the task
really wants, measured on prompts the agent never trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.db"
BEST_FILE = "best.json"
TASKS_PLOT = "tasks.png"
WORKERS = ".workers"
OBJECTIVES = ("gold", "proxy")
SUMMARIES = ("auc", "final")
PRUNERS = ("median", "hyperband", "none")
#: Errors that fail one trial (settings that do not fit together, a diverged run) and not the study.
FAILURES = (ValueError, RuntimeError)
#: A worker stops after this many failed trials in a row: the setup itself is wrong.
MAX_FAILURES_IN_A_ROW = 3
#: The curve's column each objective reads.
COLUMN = {"gold": "gold", "proxy": "rm_score"}


# ----------------------------------------------------------------------------- the search space
@dataclass(frozen=True)
class Param:
    """One setting's range: ``kind`` is ``"log"`` or ``"float"`` (``low``..``high``), ``"int"`` (``low``..
    ``high``) or ``"choice"`` (``choices``)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind == "log":
            return trial.suggest_float(name, self.low, self.high, log=True)
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_categorical(name, list(self.choices))

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one this range can draw."""
        if self.kind == "choice":
            return any(value == option and type(value) is type(option) for option in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high and (self.kind != "int" or float(value).is_integer())


def log(low: float, high: float) -> Param:
    return Param("log", low, high)


def uniform(low: float, high: float) -> Param:
    return Param("float", low, high)


def choice(*options: Any) -> Param:
    return Param("choice", choices=options)


_ROLLOUT = {"learning_rate": log(1e-5, 3e-3), "num_envs": choice(64, 128, 256)}
_PPO = _ROLLOUT | {
    "num_minibatches": choice(2, 4, 8, 16),
    "num_epochs": choice(1, 2, 4),
    "clip_range": uniform(0.1, 0.4),
    "vf_coef": log(0.01, 1.0),
    "lam": uniform(0.8, 1.0),
}
#: What each agent's search covers by default (powers of two keep every group and minibatch whole).
SPACES: dict[str, dict[str, Param]] = {
    "ppo": _PPO,
    "egreedy": _PPO | {"epsilon": log(1e-3, 0.2), "exploration": choice("uniform", "reference_top_k")},
    "grpo": _ROLLOUT
    | {
        "group_size": choice(2, 4, 8, 16),
        "minibatch_size": choice(4, 8, 16, 32, 64, 256),
        "num_epochs": choice(1, 2),
        "clip_range": uniform(0.1, 0.4),
        "scale_rewards": choice(True, False),
        "kl_in": choice("reward", "loss"),
    },
    "reinforce": _ROLLOUT
    | {
        "num_envs": choice(16, 32, 64, 128, 256),  # smaller rollouts: its default is 16 (see its docstring)
        "group_size": choice(2, 4, 8),
        "minibatch_size": choice(4, 8, 16, 32, 64, 256),
        "normalize_advantages": choice(True, False),
    },
}


def space_of(agent: str, params: list[str] | None, fixed: dict[str, Any]) -> dict[str, Param]:
    """The agent's space, cut to ``params`` if given, without the ``fixed`` settings."""
    space = SPACES[agent]
    if params:
        unknown = sorted(set(params) - set(space))
        if unknown:
            raise SystemExit(
                f"--params: {agent} has no searched setting {', '.join(unknown)}; its space is "
                f"{', '.join(space)} (fix any other setting with --fix)"
            )
        space = {k: v for k, v in space.items() if k in params}
    return {k: v for k, v in space.items() if k not in fixed}


# ----------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class Setup:
    """What every trial of a study shares. ``task`` is one task's name, or several joined by ``+``
    (``"sorting+reviews"``): each trial then trains on each in turn, with the same settings."""

    agent: str
    task: str
    objective: str = "gold"
    summary: str = "auc"
    budget: int | None = None  # None: the task's own
    budget_scale: float = 1.0
    eval_points: int = 5
    eval_episodes: int = 128
    holdout: float = 0.2
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if len(self.task_names) > 1 and self.objective != "gold":
            raise ValueError(
                f"a study on several tasks ({self.task}) scores gold: each task's is put on one scale, from "
                "its starting policy's (0) to its best reachable (1); proxies have no such common scale"
            )

    @property
    def task_names(self) -> list[str]:
        return self.task.split("+")

    def value(self, curve: list[dict[str, Any]]) -> float:
        """The trial's value from its evaluation points so far (the start, point 0, left out: it is the
        same for every trial)."""
        points = [p[COLUMN[self.objective]] for p in curve[1:]] or [curve[0][COLUMN[self.objective]]]
        return float(sum(points) / len(points)) if self.summary == "auc" else float(points[-1])

    def combined(self, curves: dict[str, list[dict[str, Any]]]) -> float:
        """The value of a trial from its curves on the study's tasks (so far): on one task, :meth:`value`;
        on several, the mean over tasks of :meth:`value` of the normalised gold (:func:`normalised_curve`),
        so that a task whose gold spans [-1, 1] weighs no more than one whose gold spans [0, 1]."""
        if len(self.task_names) == 1:
            return self.value(next(iter(curves.values())))
        values = [self.value(normalised_curve(name, curve)) for name, curve in curves.items()]
        return float(sum(values) / len(values))


def normalised_curve(task_name: str, curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``curve`` with gold put on the suite report's scale (:func:`agents.benchstats.normalised`): 0 at
    the curve's start (the starting policy, the same in every trial), 1 at the task's best reachable gold."""
    from agents.benchstats import normalised

    start = float(curve[0]["gold"])
    return [p | {"gold": normalised(task_name, float(p["gold"]), start)} for p in curve]


def run_trial(
    setup: Setup, settings: dict[str, Any], report: Callable[[int, float, float], None] | None = None
) -> dict[str, Any]:
    """Train the agent with ``settings`` by the benchmark's protocol, on each of the study's tasks in turn;
    ``report(step, value, kl)`` after each evaluation point (it may raise to stop the trial): ``step``
    counts the points of every task so far, the same in every trial. Returns the value and each task's
    curve (``curves``) and final point (``finals``)."""
    import torch
    import transformers

    from agents.benchmark import AgentSpec, Protocol, run_ours
    from agents.train import split_prompts
    from textenv import tasks

    if setup.threads:
        torch.set_num_threads(setup.threads)
    transformers.logging.set_verbosity_error()
    protocol = Protocol(
        budget_scale=setup.budget_scale,
        budget=setup.budget,
        eval_points=setup.eval_points,
        eval_episodes=setup.eval_episodes,
        holdout=setup.holdout,
    )
    curves: dict[str, list[dict[str, Any]]] = {}
    for index, name in enumerate(setup.task_names):
        task = tasks.load(name)
        train_prompts, eval_prompts = split_prompts(task.prompts(), setup.holdout)
        curve: list[dict[str, Any]] = []
        curves[name] = curve
        steps_before = index * setup.eval_points

        def on_point(
            point: dict[str, Any], curve: list[dict[str, Any]] = curve, before: int = steps_before
        ) -> None:
            curve.append(point)
            if report is not None and len(curve) > 1:
                report(before + len(curve) - 1, setup.combined(curves), float(point["kl"]))

        run_ours(
            AgentSpec(setup.agent, settings),
            task,
            setup.seed,
            protocol.budget_of(task),
            train_prompts,
            eval_prompts,
            protocol,
            on_point=on_point,
        )
    finals = {name: curve[-1] for name, curve in curves.items()}
    return {"value": setup.combined(curves), "curves": curves, "finals": finals}


class Objective:
    """Optuna's objective: draw settings, train, report, score; records the final figures on the trial."""

    def __init__(self, setup: Setup, space: dict[str, Param], fixed: dict[str, Any], worker: str):
        self.setup, self.space, self.fixed, self.worker = setup, space, fixed, worker

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from textenv.tasks.base import KL_BAR

        trial.set_user_attr("worker", self.worker)
        settings = {name: param.suggest(trial, name) for name, param in self.space.items()} | self.fixed

        last_kl = [0.0]
        baseline = bool(trial.user_attrs.get("queued"))  # a queued baseline runs to its end
        last_step = len(self.setup.task_names) * self.setup.eval_points  # all trained: nothing to save

        def report(step: int, value: float, kl: float) -> None:
            last_kl[0] = kl
            trial.report(value, step)
            if not baseline and step < last_step and trial.should_prune():
                raise optuna.TrialPruned(f"trailing at evaluation point {step}")

        try:
            result = run_trial(self.setup, settings, report)
        except optuna.TrialPruned:
            trial.set_constraint("kl_excess", last_kl[0] - KL_BAR)
            raise
        except FAILURES as error:  # the trial fails, the study goes on; say why in the study
            trial.set_user_attr("failed_because", f"{type(error).__name__}: {error}"[:500])
            raise
        finals = result["finals"]
        worst_kl = max(float(final["kl"]) for final in finals.values())
        trial.set_constraint("kl_excess", worst_kl - KL_BAR)  # feasible when <= 0 on every task
        several = len(finals) > 1
        for name, final in finals.items():  # final_gold, ...; on several tasks final_sorting_gold, ...
            for key in ("gold", "rm_score", "kl", "success_rate", "length"):
                if key in final and isinstance(final[key], int | float):
                    attr = f"final_{name}_{key}" if several else f"final_{key}"
                    trial.set_user_attr(attr, float(final[key]))
        if several:
            trial.set_user_attr("final_kl", worst_kl)
        cpu = sum(float(final["train_cpu_seconds"]) for final in finals.values())
        trial.set_user_attr("train_cpu_seconds", cpu)
        if not math.isfinite(result["value"]):
            raise ValueError(f"the trial's {self.setup.objective} is not a number: {result['value']}")
        return result["value"]


# ----------------------------------------------------------------------------- the study and its workers
@contextlib.contextmanager
def worker_lock(out: Path) -> Iterator[str]:
    """This process's id among the study's workers, held as an exclusive lock on ``OUT/.workers/ID`` for
    as long as it runs: the lock dies with the process, however it dies."""
    folder = out / WORKERS
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex[:12]
    path = folder / name
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield name
    finally:
        handle.close()
        path.unlink(missing_ok=True)


def worker_alive(out: Path, name: str) -> bool:
    """Whether the worker ``name`` still holds its lock."""
    path = out / WORKERS / name
    if not name or not path.exists():
        return False
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    path.unlink(missing_ok=True)
    return False


def recover_orphans(study: optuna.Study, out: Path) -> list[int]:
    """Mark failed the running trials whose worker is gone (killed), and queue their settings again.
    Returns the numbers of the trials recovered."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage  # Optuna's own storage object: its methods below are public API
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(out, str(trial.user_attrs.get("worker", ""))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "failed_because", "its worker process died")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker starting at the same time got there first
            continue
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        recovered.append(trial.number)
    return recovered


def make_pruner(name: str, before: int = 0) -> optuna.pruners.BasePruner:
    """The pruner ``name``; ``before``: the evaluation points of a trial before its last task's, which it
    does not judge (on several tasks a trial that trails on the first may lead on the next: judged on the
    first alone, a study would be tuned on it)."""
    import optuna

    if name == "median":  # wait for 4 trials, and for the last task's second point, before judging
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=before + 2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=before + 1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(out: Path, name: str, pruner: str, sampler_seed: int | None, before: int = 0) -> optuna.Study:
    import optuna

    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(out / STUDY_FILE).resolve()}",
        engine_kwargs={"connect_args": {"timeout": 60}},  # wait on another worker's write
    )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        pruner=make_pruner(pruner, before),
        load_if_exists=True,
    )
    # a seeded sampler starts from the study's length, so that a resumed study does not draw its first
    # trials' settings again; the trials' KL constraint reaches TPE through Trial.set_constraint
    seed = None if sampler_seed is None else sampler_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)
    return study


def queued_settings(agent: str, space: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a trial queued by ``--enqueue``: ``given`` on top of the agent's defaults, for the
    settings the study searches; each must lie in its range, so that TPE can learn from the trial."""
    from agents.train import agent_classes

    unknown = sorted(set(given) - set(space))
    if unknown:
        raise SystemExit(f"--enqueue {', '.join(unknown)}: not searched by this study ({', '.join(space)})")
    defaults = vars(agent_classes()[agent].Config())
    settings = {name: given.get(name, defaults[name]) for name in space}
    for name, value in settings.items():
        if not space[name].holds(value):
            where = space[name].choices or f"[{space[name].low:g}, {space[name].high:g}]"
            raise SystemExit(f"--enqueue: {name}={value!r} lies outside the study's range {where}")
    return settings


def finished(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def tune(
    setup: Setup,
    trials: int,
    out: Path,
    *,
    params: list[str] | None = None,
    fixed: dict[str, Any] | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    sampler_seed: int | None = None,
    progress: bool = True,
    enqueue: dict[str, Any] | None = None,
) -> optuna.Study:
    """Run (or continue) the study in ``out`` until it holds ``trials`` finished trials, then write
    ``best.json``, ``trials.csv``, the plots and ``summary.md``. Returns the study.

    ``enqueue`` (settings, ``{}`` for the agent's defaults) queues one trial with them before the search
    goes on (unless the study already holds a trial with the same settings): a baseline that shows what
    the search buys."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    fixed = dict(fixed or {})
    space = space_of(setup.agent, params, fixed)
    if not space:
        raise SystemExit("nothing to search: every setting of the space is fixed")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = (len(setup.task_names) - 1) * setup.eval_points  # points not judged (see make_pruner)
    study = open_study(out, study_name or f"{setup.agent}-{setup.task}", pruner, sampler_seed, before)
    check_setup(study, setup, fixed)
    if enqueue is not None:
        queued = queued_settings(setup.agent, space, enqueue)
        study.enqueue_trial(queued, user_attrs={"queued": True}, skip_if_exists=True)
        print("queued a trial with " + ", ".join(f"{k}={_short(v)}" for k, v in queued.items()))
    recovered = recover_orphans(study, out)
    if recovered:
        print(f"trials {', '.join(map(str, recovered))} lost their worker: marked failed, queued again")
    done = finished(study)
    print(f"{done} of {trials} trials finished in {out / STUDY_FILE}; {max(0, trials - done)} to go")
    bar = tqdm(
        total=trials, initial=min(done, trials), unit="trial", disable=not progress, dynamic_ncols=True
    )

    failures: list[str] = []

    def tick(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.n = min(finished(study), trials)
        bar.refresh()
        bar.write(describe_trial(trial, setup))
        write_outputs(study, setup, fixed, out, plots=False)
        if trial.state == TrialState.FAIL:
            failures.append(str(trial.user_attrs.get("failed_because", "unknown")))
            if len(failures) >= MAX_FAILURES_IN_A_ROW:
                study.stop()
        else:
            failures.clear()

    if done < trials:
        with worker_lock(out) as worker:
            study.optimize(
                Objective(setup, space, fixed, worker),
                callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED)), tick],
                catch=FAILURES,
                gc_after_trial=True,
            )
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            bar.close()
            raise SystemExit(
                f"{len(failures)} trials in a row failed; the last because {failures[-1]}. Check the "
                "fixed settings and the space (--fix, --params)"
            )
    bar.close()
    write_outputs(study, setup, fixed, out, plots=True)
    return study


def check_setup(study: optuna.Study, setup: Setup, fixed: dict[str, Any]) -> None:
    """Record what the study measures on its first run; refuse to continue it with another setup."""
    recorded = study.user_attrs.get("setup")
    mine = {"setup": vars(setup) | {"threads": None}, "fixed": fixed}
    if recorded is None:
        study.set_user_attr("setup", mine)
    elif recorded != json.loads(json.dumps(mine)):
        raise SystemExit(
            f"the study {study.study_name!r} was run with {recorded}; this command asks for {mine}. Use "
            "another --out (or --study-name) for another setup"
        )


def describe_trial(trial: optuna.trial.FrozenTrial, setup: Setup) -> str:
    settings = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    if trial.state.name == "COMPLETE":
        what = (
            f"{setup.objective} {trial.value:+.3f} (final gold {final_gold_text(trial, setup)}, "
            f"KL {trial.user_attrs.get('final_kl', math.nan):.2f})"
        )
    elif trial.state.name == "FAIL":
        what = f"failed ({trial.user_attrs.get('failed_because', 'unknown')})"
    else:
        what = trial.state.name.lower()
    return f"trial {trial.number}: {what}  [{settings}]"


def final_gold_text(trial: optuna.trial.FrozenTrial, setup: Setup) -> str:
    """The trial's final gold: one figure, or one per task (``sorting +0.52 / reviews +0.91``)."""
    attrs = trial.user_attrs
    if len(setup.task_names) == 1:
        gold = attrs.get("final_gold")
        return "" if gold is None else f"{gold:+.3f}"
    golds = [(name, attrs.get(f"final_{name}_gold")) for name in setup.task_names]
    if all(gold is None for _, gold in golds):
        return ""
    return " / ".join(f"{name} {math.nan if gold is None else gold:+.3f}" for name, gold in golds)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- outputs
def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial whose final KL is within the bar (None if there is none)."""
    from optuna.trial import TrialState

    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(v <= 0 for v in t.constraints.values()) and t.value is not None
    ]
    return max(feasible, key=lambda t: float(t.value or 0.0)) if feasible else None


def best_config(study: optuna.Study, setup: Setup, fixed: dict[str, Any]) -> dict[str, Any] | None:
    """The best trial's settings as the training command's ``--config`` file (a study on several tasks
    names none: the training command's ``--task`` and ``--timesteps`` choose)."""
    from textenv import tasks

    best = best_trial(study)
    if best is None:
        return None
    if len(setup.task_names) > 1:
        return {"agent": setup.agent, **fixed, **best.params}
    budget = int((setup.budget or tasks.load(setup.task).budget) * setup.budget_scale)
    return {"agent": setup.agent, "task": setup.task, "timesteps": budget, **fixed, **best.params}


def write_outputs(
    study: optuna.Study, setup: Setup, fixed: dict[str, Any], out: Path, plots: bool = True
) -> None:
    from textenv import atomic

    config = best_config(study, setup, fixed)
    if config is not None:
        atomic.write_json(out / BEST_FILE, config)
    frame = study.trials_dataframe()
    atomic.write_text(out / "trials.csv", frame.to_csv(index=False))
    if plots:
        draw_plots(study, out)
        if len(setup.task_names) > 1:
            draw_tasks(study, setup, out / TASKS_PLOT)
        atomic.write_text(out / "summary.md", summary_markdown(study, setup, config))


def draw_plots(study: optuna.Study, out: Path) -> None:
    """Optuna's optimisation history and parameter importances, as PNG (skipped while too few trials)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        if complete:
            _save(optuna.visualization.matplotlib.plot_optimization_history(study), out / "history.png")
        if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
            _save(optuna.visualization.matplotlib.plot_param_importances(study), out / "importances.png")


def draw_tasks(study: optuna.Study, setup: Setup, path: Path) -> None:
    """A study on several tasks: each complete trial's final gold on the first task against each other
    task's, coloured by its learning rate (or its value, when the rate is not searched); the best trial
    starred, queued ones (baselines) squared, those past the KL bar hollow. It shows what one task's gain
    costs on another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize
    from optuna.trial import TrialState

    names = setup.task_names
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(f"final_{name}_gold" in t.user_attrs for name in names)
    ]
    if not trials:
        return
    by_rate = all("learning_rate" in t.params for t in trials)
    colour = [float(t.params["learning_rate"] if by_rate else t.value or 0.0) for t in trials]
    norm = (
        LogNorm(min(colour), max(colour))
        if by_rate and min(colour) > 0
        else Normalize(min(colour), max(colour))
    )
    best = best_trial(study)
    panels = len(names) - 1
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 1, 4.5), squeeze=False)
    for ax, other in zip(axes[0], names[1:], strict=True):
        for trial, c in zip(trials, colour, strict=True):
            x, y = trial.user_attrs[f"final_{names[0]}_gold"], trial.user_attrs[f"final_{other}_gold"]
            feasible = all(v <= 0 for v in trial.constraints.values())
            marker = (
                "*"
                if best is not None and trial.number == best.number
                else "s"
                if trial.user_attrs.get("queued")
                else "o"
            )
            size = 220 if marker == "*" else 60
            rgba = plt.get_cmap("viridis")(norm(c))
            ax.scatter(
                x,
                y,
                s=size,
                marker=marker,
                facecolors=rgba if feasible else "none",
                edgecolors=rgba,
                linewidths=1.5,
            )
            ax.annotate(str(trial.number), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_xlabel(f"final gold on {names[0]}")
        ax.set_ylabel(f"final gold on {other}")
        ax.grid(alpha=0.3)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    figure.colorbar(mappable, ax=axes[0].tolist(), label="learning rate" if by_rate else "trial value")
    figure.suptitle(
        f"{setup.agent}: each trial's final gold per task (seed {setup.seed}); ★ best, ■ queued, hollow: KL "
        "past the bar",
        fontsize=9,
    )
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _save(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure
    figure.set_size_inches(8, 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA), or {} while too few trials vary."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few trials: "importances will be equal"
        try:
            return dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError):
            return {}


def summary_markdown(study: optuna.Study, setup: Setup, config: dict[str, Any] | None) -> str:
    from optuna.trial import TrialState

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    lines = [
        f"# Tuning {setup.agent} on {' and '.join(setup.task_names)}",
        "",
        f"Objective: {setup.objective} ({'mean over' if setup.summary == 'auc' else 'last of'} "
        f"{setup.eval_points} evaluation points of {setup.eval_episodes} held-out episodes"
        + (
            ", each task's gold normalised (0: the starting policy, 1: the best reachable) and averaged "
            "over the tasks; KL: the largest of the tasks'"
            if len(setup.task_names) > 1
            else ""
        )
        + f"), seed {setup.seed}; trials: "
        + ", ".join(f"{n} {k}" for k, n in counts.items() if n),
        "",
    ]
    best = best_trial(study)
    if best is not None and config is not None:
        a = best.user_attrs
        lines += [
            f"Best: trial {best.number}, value {best.value:+.4f}, final gold {final_gold_text(best, setup)}"
            + (f", proxy {a['final_rm_score']:+.3f}" if "final_rm_score" in a else "")
            + f", KL {a.get('final_kl', math.nan):.2f}.",
            "",
            "```json",
            json.dumps(config, indent=1),
            "```",
            "",
        ]
    found = importances(study)
    if found:
        lines += ["| setting | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in found.items()]
        lines.append("")
    lines += ["| trial | state | value | final gold | final KL | settings |", "|---|---|---|---|---|---|"]
    for t in study.get_trials(deepcopy=False):
        value = "" if t.value is None else f"{t.value:+.4f}"
        kl = t.user_attrs.get("final_kl")
        lines.append(
            f"| {t.number} | {t.state.name.lower()}{' (queued)' if t.user_attrs.get('queued') else ''} "
            f"| {value} | "
            f"{final_gold_text(t, setup)} | {'' if kl is None else f'{kl:.2f}'} | "
            + ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
            + " |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from agents.benchmark import OURS

    parser = argparse.ArgumentParser(
        prog="textenv-tune",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
    )
    parser.add_argument("--agent", choices=OURS, default="ppo", help="agent to tune (default ppo)")
    parser.add_argument(
        "--task",
        nargs="+",
        default=["reviews"],
        help="task of the suite (default reviews), or several: each trial trains on each, scored by their "
        "normalised gold",
    )
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default runs/tune-AGENT-TASK)")
    parser.add_argument("--study-name", default=None, help="name in the study file (default AGENT-TASK)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="gold", help="gold (default) or proxy")
    parser.add_argument("--summary", choices=SUMMARIES, default="auc", help="auc (default) or final")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="median (default), hyperband")
    parser.add_argument("--params", nargs="+", default=None, help="search only these settings")
    parser.add_argument(
        "--fix",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings held fixed (agent or env: kl_coef)",
    )
    parser.add_argument(
        "--enqueue",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="queue one trial with the agent's defaults, or these settings on top of them (a baseline; "
        "raise --trials by one to add it to a finished study)",
    )
    parser.add_argument("--budget", type=int, default=None, help="tokens per trial (default: the task's)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply the budget (default 1)")
    parser.add_argument("--eval-points", type=int, default=5, help="evaluations per trial (default 5)")
    parser.add_argument(
        "--eval-episodes", type=int, default=128, help="episodes per evaluation (default 128)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed of every trial (default 0)")
    parser.add_argument(
        "--sampler-seed",
        type=int,
        default=None,
        help="seed of TPE (default: random; leave it unset when several processes share a study)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_fixed(items: list[str], flag: str = "--fix") -> dict[str, Any]:
    from agents.train import _parse_value

    fixed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        fixed[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return fixed


def main(argv: list[str] | None = None) -> optuna.Study:
    args = build_parser().parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SystemExit("textenv-tune needs Optuna: pip install 'textenv[tune]'") from None
    from textenv import tasks

    names = [name for item in args.task for name in item.split("+") if name]
    for name in names:
        if name not in tasks.names():
            raise SystemExit(f"unknown task {name!r}; choose from {', '.join(tasks.names())}")
    if len(set(names)) != len(names) or not names:
        raise SystemExit(f"--task: each task once, got {' '.join(args.task)}")
    task = "+".join(names)
    if args.trials < 1:
        raise SystemExit(f"--trials must be >= 1, got {args.trials}")
    try:
        setup = Setup(
            agent=args.agent,
            task=task,
            objective=args.objective,
            summary=args.summary,
            budget=args.budget,
            budget_scale=args.budget_scale,
            eval_points=args.eval_points,
            eval_episodes=args.eval_episodes,
            seed=args.seed,
            threads=args.threads,
        )
    except ValueError as error:  # settings that do not go together (several tasks and the proxy)
        raise SystemExit(f"textenv-tune: {error}") from None
    out = args.out or Path("runs") / f"tune-{args.agent}-{task}"
    study = tune(
        setup,
        args.trials,
        out,
        params=args.params,
        fixed=parse_fixed(args.fix),
        study_name=args.study_name,
        pruner=args.pruner,
        sampler_seed=args.sampler_seed,
        progress=not args.no_progress,
        enqueue=None if args.enqueue is None else parse_fixed(args.enqueue, "--enqueue"),
    )
    best = best_trial(study)
    if best is None:
        print("no complete trial within the KL bar yet")
    else:
        print(f"best: trial {best.number}, {args.objective} {best.value:+.4f}; settings in {out / BEST_FILE}")
        where = " --task TASK" if len(names) > 1 else ""
        print(f"train with them: textenv-train --config {out / BEST_FILE}{where}")
    return study


def cli() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
