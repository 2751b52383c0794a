"""``textenv-bench``: compare RL algorithms on the task suite, over seeds, gold beside the proxy.

Every (task, agent, seed) trains in its own process for the task's budget of response tokens, several at
once (``--workers``, each with its share of the CPU threads). A finished run appends one JSON line to
``OUT/results.jsonl``: its settings, library versions, machine, the curve of evaluation points and the
final figures. Running the command again skips the runs already in the file, so a stopped benchmark
resumes where it stopped; a run cut off half-way starts again from its beginning. The report
(:mod:`agents.benchstats`) then writes Markdown tables and PNG plots beside the results file.

    textenv-bench                                 # every task x ppo, grpo, reinforce, egreedy x 5 seeds
    textenv-bench --tasks reviews sorting --agents ppo trl-grpo trl-rloo --seeds 3
    textenv-bench --agents "ppo:kl_coef=0.05,kl_target=none" "trl-rloo:learning_rate=1e-3"
    textenv-bench --report-only                                 # redo the tables and plots

An agent is a name (``ppo``, ``grpo``, ``reinforce``, ``egreedy``; ``trl-grpo``, ``trl-rloo`` with
``pip install textenv[peers]``) with optional settings after a colon: an agent's config fields, or for
ours the env's ``kl_coef``/``kl_target``/``kl_horizon``/``lora``/``frozen_dtype``; for trl, fields of
``GRPOConfig``/``RLOOConfig``.

The protocol, the same for every algorithm: a fixed-seed share (``--holdout``) of the task's prompts is
held out of training; at ``--eval-points`` evenly spaced points of the budget (and at the start) the
policy answers ``--eval-episodes`` of those held-out prompts, sampled at the env's temperature with fixed
seeds, and the task's gold, the proxy (the env's reward score) and the KL to the reference (the env's own
estimator, summed over the response) are recorded. Time is counted for training only (evaluations are
left out): process CPU seconds (robust on a shared machine) beside wall seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OURS = ("ppo", "grpo", "reinforce", "egreedy")
PEERS = ("trl-grpo", "trl-rloo")
AGENTS = OURS + PEERS
#: Settings of our agents that go to the env rather than to the agent's config.
ENV_SETTINGS = ("kl_coef", "kl_target", "kl_horizon", "lora", "frozen_dtype")
RESULTS = "results.jsonl"
EVAL_SEED = 12345
#: A results line keeps at most this many rows of a run's training metrics (evenly spaced, the last kept):
#: enough to plot β or the episode length over a run, without one row per rollout (a REINFORCE run of
#: 120k tokens has thousands).
HISTORY_ROWS = 400


# ----------------------------------------------------------------------------- what to run
@dataclass(frozen=True)
class AgentSpec:
    """An agent of the runner: a name and settings, written ``name`` or ``name:key=value,key=value``."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> AgentSpec:
        from agents.train import _parse_value

        name, _, rest = text.partition(":")
        name = name.strip()
        if name not in AGENTS:
            raise SystemExit(f"unknown agent {name!r}; choose from {', '.join(AGENTS)}")
        settings: dict[str, Any] = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"agent {text!r}: settings are key=value, got {item!r}")
            settings[key.strip()] = _parse_value(value.strip())
        return cls(name, settings)

    @property
    def label(self) -> str:
        """The spec written back in a canonical order (the key of its runs)."""
        if not self.settings:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_text(v)}" for k, v in sorted(self.settings.items()))

    @property
    def is_peer(self) -> bool:
        return self.name in PEERS


def _text(value: Any) -> str:
    return (
        "none"
        if value is None
        else str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if (isinstance(value, float))
        else str(value)
    )


@dataclass(frozen=True)
class Protocol:
    """What every run of one results file shares; resuming with another protocol is refused."""

    budget_scale: float = 1.0
    budget: int | None = None  # response tokens of every task; None: each task's own budget
    budgets: dict[str, int] | None = None  # per task, before ``budget``: {"sorting": 50_000}
    eval_points: int = 10
    eval_episodes: int = 256
    holdout: float = 0.2

    def budget_of(self, task: Any) -> int:
        tokens = (self.budgets or {}).get(task.name, self.budget if self.budget is not None else task.budget)
        return int(tokens * self.budget_scale)


@dataclass(frozen=True)
class Job:
    task: str
    agent: str  # an AgentSpec's label
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.agent}/seed{self.seed}"


# ----------------------------------------------------------------------------- one run (in its own process)
#: Every evaluation point also gives the policy's perplexity on this many held-out texts of the task's
#: pretraining corpus (drawn with this seed, not the build's): how far training moved it from pretraining.
PERPLEXITY_TEXTS = 1000
PERPLEXITY_SEED = 20_240


class Evaluator:
    """The protocol's evaluation points: time spent training is counted, time spent evaluating is not."""

    def __init__(self, task: Any, env: Any, episodes: int, budget: int, points: int):
        self.task, self.env, self.episodes = task, env, episodes
        self.targets = [round(budget * k / points) for k in range(points + 1)]
        self.curve: list[dict[str, Any]] = []
        self.train_cpu = self.train_wall = 0.0
        self._cpu = self._wall = 0.0
        # held-out pretraining text (fresh draws of the task's corpus): the alignment tax's perplexity
        self.heldout_text = task.pretraining_texts(PERPLEXITY_TEXTS, PERPLEXITY_SEED) if task.corpus else None

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.train_cpu += time.process_time() - cpu
            self.train_wall += time.perf_counter() - wall

    @property
    def next_target(self) -> int | None:
        return self.targets[len(self.curve)] if len(self.curve) < len(self.targets) else None

    def evaluate(self, policy: Any, timesteps: int, kl_coef: float) -> dict[str, Any]:
        from agents.evaluation import evaluate

        summary, _ = evaluate(policy, self.env, self.episodes, seed=EVAL_SEED, task=self.task)
        if self.heldout_text is not None:
            from agents.evaluation import actor_of
            from agents.ptx import perplexity

            lm = actor_of(policy).policy
            summary["perplexity"] = perplexity(lm, self.env.unwrapped.tokenizer, self.heldout_text)
        point = {
            "timesteps": int(timesteps),
            "train_cpu_seconds": self.train_cpu,
            "train_wall_seconds": self.train_wall,
            "kl_coef": float(kl_coef),
            **summary,
        }
        point["at_bar"] = self.task.meets_bar(summary)
        self.curve.append(point)
        return point


def versions(peer: bool) -> dict[str, str]:
    import gymnasium
    import numpy
    import torch
    import transformers

    found = {
        "python": platform.python_version(),
        "textenv": _package_version("textenv"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
    }
    if peer:
        found["trl"] = _package_version("trl")
    return found


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}


def run_one(job: Job, protocol: Protocol, threads: int) -> dict[str, Any]:
    """Train and evaluate one (task, agent, seed); returns the results line."""
    import torch
    import transformers

    from agents.train import split_prompts
    from textenv import tasks

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    task = tasks.load(job.task)
    spec = AgentSpec.parse(job.agent)
    train_prompts, eval_prompts = split_prompts(task.prompts(), protocol.holdout)
    budget = protocol.budget_of(task)
    load_start = os.getloadavg()
    started = time.time()
    if spec.is_peer:
        from agents.peers import run_trl

        outcome = run_trl(spec, task, job.seed, budget, train_prompts, eval_prompts, protocol)
    else:
        outcome = run_ours(spec, task, job.seed, budget, train_prompts, eval_prompts, protocol)
    curve = outcome["curve"]
    reached = next((p for p in curve if p["at_bar"]), None)
    return {
        "key": job.key,
        "task": job.task,
        "agent": job.agent,
        "algorithm": spec.name,
        "settings": spec.settings,
        "seed": job.seed,
        "protocol": asdict(protocol),
        "budget": budget,
        "bar": task.bar_text,
        "eval_prompts": len(eval_prompts),
        "train_prompts": len(dict.fromkeys(train_prompts)),
        "config": outcome["config"],
        "curve": curve,
        "final": curve[-1],
        "to_bar": None
        if reached is None
        else {k: reached[k] for k in ("timesteps", "train_cpu_seconds", "train_wall_seconds")},
        "history": [{k: float(f"{v:.5g}") for k, v in row.items()} for row in thin(outcome["history"])],
        "threads": threads,
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": versions(spec.is_peer),
        "machine": machine(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "started": started,
        "seconds": time.time() - started,
    }


def thin(rows: list[dict[str, float]], limit: int = HISTORY_ROWS) -> list[dict[str, float]]:
    """At most ``limit`` of ``rows``, evenly spaced, the first and the last among them."""
    if len(rows) <= limit:
        return list(rows)
    if limit < 2:
        return list(rows[-limit:]) if limit else []
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def run_ours(
    spec: AgentSpec,
    task: Any,
    seed: int,
    budget: int,
    train_prompts: list[str],
    eval_prompts: list[str],
    protocol: Protocol,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one of our agents for ``budget`` tokens, evaluating at the protocol's points.

    ``on_point(point)`` is called after each evaluation (the tuner reports to Optuna there, and stops a
    pruned trial by raising). Returns the curve, the agent's settings and a slim metric history.
    """
    from agents.base import DEFAULT_ENV_KWARGS
    from agents.evaluation import eval_env_like
    from agents.train import agent_classes

    env_settings = {k: v for k, v in spec.settings.items() if k in ENV_SETTINGS}
    config = {k: v for k, v in spec.settings.items() if k not in ENV_SETTINGS}
    env_kwargs = DEFAULT_ENV_KWARGS | {"task": task.name, "prompts": train_prompts} | env_settings
    agent = agent_classes()[spec.name]("TextRLHF-v0", seed=seed, env_kwargs=env_kwargs, **config)
    eval_env = eval_env_like(
        agent.env, agent.model.policy, min(256, protocol.eval_episodes), task, eval_prompts
    )
    evaluator = Evaluator(task, eval_env, protocol.eval_episodes, budget, protocol.eval_points)
    while (target := evaluator.next_target) is not None:
        if target > agent.num_timesteps:
            with evaluator.training():
                agent.learn(target - agent.num_timesteps)
        point = evaluator.evaluate(agent, agent.num_timesteps, agent.env.unwrapped.kl_coef)
        if on_point is not None:
            on_point(point)
    keep = (
        "charts/timesteps",
        "objective/scores",
        "objective/kl",
        "objective/kl_coef",
        "charts/episode_length",
    )
    saved = {k: v for k, v in vars(agent.config).items() if k != "env_kwargs"}
    return {
        "curve": evaluator.curve,
        "config": saved | {"env_kwargs": {k: v for k, v in env_kwargs.items() if k != "prompts"}},
        "history": [{k: m[k] for k in keep if k in m} for m in agent.history],
    }


def expected_config(spec: AgentSpec, task: str) -> dict[str, Any] | None:
    """The settings a run of ``spec`` on ``task`` records in its ``config`` today (the agent's defaults with
    the spec's settings on top), as JSON gives them back; None for trl's agents, whose settings go with
    the pinned trl version that every line records."""
    if spec.is_peer:
        return None
    from agents.base import DEFAULT_ENV_KWARGS
    from agents.train import agent_classes

    env_settings = {k: v for k, v in spec.settings.items() if k in ENV_SETTINGS}
    config = {k: v for k, v in spec.settings.items() if k not in ENV_SETTINGS}
    made = vars(agent_classes()[spec.name].Config(**config))
    saved = {k: v for k, v in made.items() if k != "env_kwargs"}
    env_kwargs = DEFAULT_ENV_KWARGS | {"task": task} | env_settings
    return json.loads(json.dumps(saved | {"env_kwargs": env_kwargs}))


def changed_settings(line: dict[str, Any], expected: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{setting: (recorded, today's)} for every setting of a results line that differs from today's."""
    recorded = line.get("config") or {}
    return {
        k: (recorded.get(k), expected.get(k))
        for k in sorted(set(recorded) | set(expected))
        if recorded.get(k) != expected.get(k)
    }


def set_aside_changed(results: ResultsFile, jobs: list[Job], rerun: bool) -> None:
    """Runs of ``jobs`` whose recorded settings are not those the same spec has today (the agent's
    defaults changed since) must not count as done: stop and say which, or with ``rerun`` move their lines
    to ``results-replaced.jsonl`` beside the results, so that they run again."""
    wanted = {job.key: job for job in jobs}
    expected: dict[tuple[str, str], dict[str, Any] | None] = {}
    stale: dict[str, dict[str, tuple[Any, Any]]] = {}
    for line in results.read():
        job = wanted.get(line.get("key", ""))
        if job is None:
            continue
        if (job.agent, job.task) not in expected:
            expected[job.agent, job.task] = expected_config(AgentSpec.parse(job.agent), job.task)
        today = expected[job.agent, job.task]
        if today is not None and (diff := changed_settings(line, today)):
            stale[job.key] = diff
    if not stale:
        return
    by_agent: dict[str, dict[str, tuple[Any, Any]]] = {}
    for key, diff in stale.items():
        by_agent.setdefault(key.split("/")[1], {}).update(diff)
    what = "; ".join(
        f"{agent}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        for agent, diff in by_agent.items()
    )
    if not rerun:
        raise SystemExit(
            f"{len(stale)} run(s) in {results.path} were made with other settings than their agents have "
            f"today ({what}). Run again with --rerun-changed to set them aside and run them anew, or use "
            "another --out"
        )
    aside = ResultsFile(results.path.with_name("results-replaced.jsonl"))
    keep = []
    for line in results.read():
        (aside.append(line) if line.get("key") in stale else keep.append(line))
    results.rewrite(keep)
    print(f"set aside {len(stale)} run(s) made with other settings ({what}) in {aside.path}")


# ----------------------------------------------------------------------------- the results file
class ResultsFile:
    """``results.jsonl``: one line per finished run, appended whole (one write, flushed and fsynced).

    A line cut short by a crash is dropped when the file is next opened (its run is simply not done)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows

    def repair(self) -> None:
        """Cut a last line that a crash left without its newline, so that the next append starts clean."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file by ``rows`` at once (a temporary file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, allow_nan=True) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, allow_nan=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` while running, so that two runners never share one results file."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"another textenv-bench is running on {out}; wait for it or use another --out"
            ) from None
        yield


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the runner dies (Linux), so that no orphan finishes a run
    that a new runner then does again; if the runner is already gone, exit now."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit("the runner that started this run is gone")


def launch(
    job: Job, protocol: Protocol, threads: int, out: Path, cpus: list[int] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Run ``job`` in a child process (pinned to ``cpus`` where the OS allows); returns (its results line
    or None, its log)."""
    with tempfile.TemporaryDirectory(prefix="textenv-bench-") as tmp:
        result = Path(tmp) / "result.json"
        payload = {
            "job": asdict(job),
            "protocol": asdict(protocol),
            "threads": threads,
            "out": str(result),
            "parent": os.getpid(),
            "cpus": cpus,
        }
        env = os.environ | {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        done = subprocess.run(
            [sys.executable, "-m", "agents.benchmark", "--child", json.dumps(payload)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0 or not result.is_file():
            return None, done.stdout
        return json.loads(result.read_text(encoding="utf-8")), done.stdout


def child(payload_text: str) -> None:
    payload = json.loads(payload_text)
    if sys.platform.startswith("linux"):
        die_with_parent(int(payload["parent"]))
    if payload.get("cpus") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, payload["cpus"])
    row = run_one(Job(**payload["job"]), Protocol(**payload["protocol"]), int(payload["threads"]))
    Path(payload["out"]).write_text(json.dumps(row, allow_nan=True), encoding="utf-8")


# ----------------------------------------------------------------------------- the command
def plan(tasks: list[str], agents: list[AgentSpec], seeds: list[int]) -> list[Job]:
    """Every (task, agent, seed), a seed's runs of every agent together: a benchmark stopped part-way holds
    the same seeds for every agent of a task, and a busy spell of the machine falls on all agents alike."""
    return [Job(t, a.label, s) for t in tasks for s in seeds for a in agents]


def same_protocol(saved: Any, protocol: Protocol) -> bool:
    """Whether a results line's protocol is ``protocol`` (a field the line predates takes its default)."""
    try:
        return isinstance(saved, dict) and Protocol(**saved) == protocol
    except TypeError:
        return False


def cpu_slots(workers: int, threads: int) -> queue.Queue[list[int] | None]:
    """One slot per worker: its own ``threads`` CPUs of those this process may use, while there are enough
    of them (no pinning otherwise, or where the OS has no affinity)."""
    slots: queue.Queue[list[int] | None] = queue.Queue()
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for i in range(max(1, workers)):
        share = usable[i * threads : (i + 1) * threads]
        slots.put(share if len(usable) >= workers * threads else None)
    return slots


def run_all(
    jobs: list[Job],
    protocol: Protocol,
    out: Path,
    workers: int = 1,
    threads: int | None = None,
    on_done: Callable[[Job, dict[str, Any] | None], None] | None = None,
    rerun_changed: bool = False,
) -> list[Job]:
    """Run the jobs not yet in ``out/results.jsonl``, ``workers`` at a time, each pinned to its own
    ``threads`` CPUs (default: the CPUs shared out between the workers); returns the failed ones. A run
    recorded with other settings than its agent has today stops the runner, or with ``rerun_changed`` is
    set aside and run again (:func:`set_aside_changed`)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    results = ResultsFile(out / RESULTS)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    with exclusive(out):
        results.repair()
        set_aside_changed(results, jobs, rerun_changed)
        done = set()
        for line in results.read():
            done.add(line["key"])
            if not same_protocol(line.get("protocol"), protocol):
                raise SystemExit(
                    f"{results.path} holds runs of another protocol ({line.get('protocol')}), not "
                    f"{asdict(protocol)}: use the same settings to resume, or another --out"
                )
        todo = [j for j in jobs if j.key not in done]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {results.path}; {len(todo)} to go")
        failed: list[Job] = []
        logs = out / "logs"
        with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(todo), unit="run") as bar:
            slots = cpu_slots(workers, threads)

            def pinned(job: Job) -> tuple[dict[str, Any] | None, str]:
                cpus = slots.get()
                try:
                    return launch(job, protocol, threads, out, cpus)
                finally:
                    slots.put(cpus)

            futures = {pool.submit(pinned, job): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                row, log = future.result()
                log_file = logs / (job.key.replace("/", "__").replace(":", "_") + ".log")
                if row is None:
                    failed.append(job)
                    logs.mkdir(exist_ok=True)
                    log_file.write_text(log, encoding="utf-8")
                    bar.write(f"FAILED {job.key} (log: {log_file}):\n" + "\n".join(log.splitlines()[-5:]))
                else:
                    results.append(row)
                    log_file.unlink(missing_ok=True)
                    f = row["final"]
                    bar.write(
                        f"{job.key}: gold {f['gold']:+.3f}, proxy {f['rm_score']:+.3f}, KL {f['kl']:.2f}, "
                        f"{f['train_cpu_seconds']:.0f} CPU s"
                    )
                bar.update()
                if on_done is not None:
                    on_done(job, row)
    return failed


def parse_budgets(items: list[str], task_names: list[str]) -> tuple[int | None, dict[str, int]]:
    """``--budget`` as (tokens for every task or None, {task: tokens})."""
    every: int | None = None
    per_task: dict[str, int] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            tokens = int(float(value))
        except ValueError:
            raise SystemExit(f"--budget takes TOKENS or TASK=TOKENS, got {item!r}") from None
        if tokens < 1:
            raise SystemExit(f"--budget must be >= 1 token, got {item!r}")
        if not sep:
            every = tokens
        elif name not in task_names:
            raise SystemExit(
                f"--budget {item!r}: {name!r} is not one of the tasks run ({', '.join(task_names)})"
            )
        else:
            per_task[name] = tokens
    return every, per_task


def build_parser() -> argparse.ArgumentParser:
    from textenv import tasks

    parser = argparse.ArgumentParser(
        prog="textenv-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=tasks.names(), help="tasks (default: all)")
    parser.add_argument(
        "--agents", nargs="+", default=list(OURS), help="agents: NAME or NAME:key=value,... (default: ours)"
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per (task, agent): 0..N-1 (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--budget",
        nargs="+",
        metavar="TOKENS|TASK=TOKENS",
        help="response tokens per run: one number for every task and/or TASK=N for one (default: each "
        "task's own budget)",
    )
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply the budgets (default 1)")
    parser.add_argument(
        "--eval-points", type=int, default=10, help="evaluations over the budget (default 10)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=256, help="episodes per evaluation (default 256)"
    )
    parser.add_argument("--holdout", type=float, default=0.2, help="share of prompts held out (default 0.2)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: CPUs / workers)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="runs recorded with other settings than their agents have today (changed defaults) are moved "
        "to results-replaced.jsonl and run again (default: stop and name them)",
    )
    parser.add_argument("--report-only", action="store_true", help="only redo the tables and plots")
    parser.add_argument("--no-report", action="store_true", help="run, but leave the report out")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default 2000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    from textenv import tasks

    unknown = [t for t in args.tasks if t not in tasks.names()]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; the suite has {', '.join(tasks.names())}")
    if not 0.0 < args.holdout < 1.0:
        raise SystemExit(f"--holdout must be in (0, 1), got {args.holdout}")
    if args.eval_points < 1 or args.eval_episodes < 1 or args.seeds < 1 or args.workers < 1:
        raise SystemExit("--eval-points, --eval-episodes, --seeds and --workers must be >= 1")
    every, per_task = parse_budgets(args.budget or [], args.tasks)
    failed: list[Job] = []
    if not args.report_only:
        specs = [AgentSpec.parse(a) for a in args.agents]
        if any(s.is_peer for s in specs) and _package_version("trl") == "not installed":
            raise SystemExit("the trl agents need trl: pip install 'textenv[peers]'")
        protocol = Protocol(
            budget_scale=args.budget_scale,
            budget=every,
            budgets=per_task or None,
            eval_points=args.eval_points,
            eval_episodes=args.eval_episodes,
            holdout=args.holdout,
        )
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        failed = run_all(
            plan(args.tasks, specs, seeds),
            protocol,
            args.out,
            args.workers,
            args.threads,
            rerun_changed=args.rerun_changed,
        )
        if failed:
            print(f"{len(failed)} run(s) failed; their logs are in {args.out / 'logs'}; run again to retry")
    if not args.no_report:
        from agents.benchstats import write_report

        for path in write_report(args.out, args.reps):
            print(f"wrote {path}")
    return 1 if failed else 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
