"""Callbacks in Stable-Baselines3's shape, for ``agent.learn(..., callback=...)``.

An agent's "step", for a callback, is one iteration (a rollout of one episode per sub-env and its update):
``_on_step`` runs after each, with the iteration's metrics in ``self.locals["metrics"]`` (a dict it may add
to: what it adds lands in ``agent.history``, the run folder's metrics and the loggers), and returning
``False`` stops training, as in SB3. ``self.model`` (also ``self.agent``), ``self.n_calls`` and
``self.num_timesteps`` mean what they mean there.

    from agents import PPO
    from agents.callbacks import CheckpointCallback, EvalCallback, StopTrainingOnThreshold

    agent = PPO("TextRLHF-v0")
    stop = StopTrainingOnThreshold("eval/gold", 0.9)      # judged on the evaluation, when one ran
    agent.learn(200_000, callback=[EvalCallback(eval_every=5, callback_after_eval=stop),
                                   CheckpointCallback(save_every=10, save_path="runs/ckpt")])

A plain function ``callback(agent, metrics) -> bool | None`` is still accepted, alone or in a list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gymnasium as gym

    from agents.base import Agent
    from textenv.tasks import Task


class BaseCallback:
    """What every callback is: override ``_on_step`` (and, if need be, ``_init_callback``,
    ``_on_training_start``, ``_on_training_end``)."""

    def __init__(self, verbose: int = 0):
        self.verbose = verbose
        self.model: Agent | None = None
        self.n_calls = 0
        self.num_timesteps = 0
        self.locals: dict[str, Any] = {}
        self.parent: BaseCallback | None = None

    @property
    def agent(self) -> Agent:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to an agent: call init_callback first")
        return self.model

    def init_callback(self, agent: Agent) -> None:
        self.model = agent
        self.num_timesteps = agent.num_timesteps
        self._init_callback()

    def on_training_start(self) -> None:
        self._on_training_start()

    def on_step(self, metrics: dict[str, float]) -> bool:
        """Called by ``learn`` after each iteration; False stops training."""
        self.n_calls += 1
        self.num_timesteps = self.agent.num_timesteps
        self.locals = {"metrics": metrics}
        return self._on_step() is not False

    def on_training_end(self) -> None:
        self._on_training_end()

    def _init_callback(self) -> None:
        pass

    def _on_training_start(self) -> None:
        pass

    def _on_step(self) -> bool | None:
        return True

    def _on_training_end(self) -> None:
        pass


class CallbackList(BaseCallback):
    """Several callbacks, called in order; training stops when any of them says so (the rest of that
    iteration's callbacks still run, so a checkpoint after a stop is still written)."""

    def __init__(self, callbacks: Sequence[BaseCallback]):
        super().__init__()
        self.callbacks = list(callbacks)

    def _init_callback(self) -> None:
        for callback in self.callbacks:
            callback.init_callback(self.agent)

    def _on_training_start(self) -> None:
        for callback in self.callbacks:
            callback.on_training_start()

    def _on_step(self) -> bool:
        results = [callback.on_step(self.locals["metrics"]) for callback in self.callbacks]
        return all(results)

    def _on_training_end(self) -> None:
        for callback in self.callbacks:
            callback.on_training_end()


class FunctionCallback(BaseCallback):
    """A plain ``function(agent, metrics) -> bool | None`` as a callback (returning False stops)."""

    def __init__(self, function: Callable[[Agent, dict[str, float]], bool | None]):
        super().__init__()
        self.function = function

    def _on_step(self) -> bool:
        return self.function(self.agent, self.locals["metrics"]) is not False


class EveryNIterations(BaseCallback):
    """Run ``callback`` every ``n`` iterations (counted by the agent, so a resumed run keeps the rhythm)."""

    def __init__(self, n: int, callback: BaseCallback):
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.n = n
        self.callback = callback

    def _init_callback(self) -> None:
        self.callback.init_callback(self.agent)

    def _on_training_start(self) -> None:
        self.callback.on_training_start()

    def _on_step(self) -> bool:
        if self.agent.iterations % self.n:
            return True
        return self.callback.on_step(self.locals["metrics"])

    def _on_training_end(self) -> None:
        self.callback.on_training_end()


class EvalCallback(BaseCallback):
    """Evaluate the policy every ``eval_every`` iterations on fixed-seed episodes (the same prompts and
    random numbers each time), and add the figures to that iteration's metrics as ``eval/...``:
    ``eval/rm_score`` (the proxy), ``eval/kl``, ``eval/length`` and, when there is a task to judge by,
    its gold (``eval/gold``, ``eval/success_rate`` and the task's own columns).

    Args:
        eval_every: iterations between evaluations (the first after iteration ``eval_every``).
        episodes: episodes per evaluation.
        eval_env: the env to play (default: one of the agent's task sharing its models, β fixed, see
            :func:`agents.evaluation.make_eval_env`).
        prompts: the evaluation's prompts (default: the task's, or the env's own).
        task: the task whose gold judges (default: the one the env plays; none: no gold columns).
        seed: seed of the evaluation's prompts and samples.
        callback_after_eval: a callback called after each evaluation (e.g. a stop on a threshold).
        callback_on_new_best: a callback called when ``eval/gold`` (``eval/rm_score`` without gold) is the
            best so far.
    """

    def __init__(
        self,
        eval_every: int = 10,
        episodes: int = 256,
        eval_env: gym.vector.VectorEnv | None = None,
        prompts: Sequence[str] | None = None,
        task: str | Task | None = None,
        seed: int = 12345,
        callback_after_eval: BaseCallback | None = None,
        callback_on_new_best: BaseCallback | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
        self.eval_every = eval_every
        self.episodes = episodes
        self.eval_env = eval_env
        self.prompts = list(prompts) if prompts is not None else None
        self.task = task
        self.seed = seed
        self.callback_after_eval = callback_after_eval
        self.callback_on_new_best = callback_on_new_best
        self.evaluations: list[dict[str, float]] = []
        self.best = -math.inf
        self.last: dict[str, float] = {}

    def _init_callback(self) -> None:
        from agents import evaluation

        if self.eval_env is None:
            self.eval_env = evaluation.make_eval_env(
                self.agent, num_envs=min(256, self.episodes), task=self.task, prompts=self.prompts
            )
        for child in (self.callback_after_eval, self.callback_on_new_best):
            if child is not None:
                child.parent = self
                child.init_callback(self.agent)

    def evaluate(self) -> dict[str, float]:
        """One evaluation now: the ``eval/...`` figures."""
        from agents import evaluation

        assert self.eval_env is not None
        summary, _ = evaluation.evaluate(
            self.agent, self.eval_env, self.episodes, seed=self.seed, task=self.task
        )
        return {evaluation.eval_metric_name(k): v for k, v in summary.items() if k != "n"}

    def _on_step(self) -> bool:
        if self.agent.iterations % self.eval_every:
            return True
        figures = self.evaluate()
        metrics = self.locals["metrics"]
        metrics.update(figures)
        self.last = figures
        self.evaluations.append({"charts/timesteps": float(self.agent.num_timesteps), **figures})
        keep_going = True
        if self.callback_after_eval is not None:
            keep_going = self.callback_after_eval.on_step(metrics)
        score = figures.get("eval/gold", figures["eval/rm_score"])
        if score > self.best:
            self.best = score
            if self.callback_on_new_best is not None:
                keep_going = self.callback_on_new_best.on_step(metrics) and keep_going
        return keep_going


class CheckpointCallback(BaseCallback):
    """Save the agent every ``save_every`` iterations: into ``save_path`` itself (each save replaces the
    last, atomically), or with ``keep_all=True`` into ``save_path/iteration-N``."""

    def __init__(self, save_every: int, save_path: str | Path, keep_all: bool = False, verbose: int = 0):
        super().__init__(verbose)
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
        self.save_every = save_every
        self.save_path = Path(save_path)
        self.keep_all = keep_all

    def _on_step(self) -> bool:
        if self.agent.iterations % self.save_every == 0:
            path = self.save_path / f"iteration-{self.agent.iterations}" if self.keep_all else self.save_path
            self.agent.save(path)
            if self.verbose:
                print(f"saved {path}")
        return True


class StopTrainingOnThreshold(BaseCallback):
    """Stop training when ``metric`` passes ``threshold`` (``mode="above"``: ``>=``; ``"below"``: ``<=``).

    Read from the iteration's metrics, so an ``eval/...`` metric is judged on the iterations an evaluation
    ran (put it after the :class:`EvalCallback`, or give it as its ``callback_after_eval``). An iteration
    that lacks the metric does not stop training.
    """

    def __init__(self, metric: str, threshold: float, mode: str = "above", verbose: int = 0):
        super().__init__(verbose)
        if mode not in ("above", "below"):
            raise ValueError(f"mode must be 'above' or 'below', got {mode!r}")
        self.metric = metric
        self.threshold = float(threshold)
        self.mode = mode
        self.stopped_at: int | None = None

    def _on_step(self) -> bool:
        value = self.locals["metrics"].get(self.metric)
        if value is None:
            return True
        passed = value >= self.threshold if self.mode == "above" else value <= self.threshold
        if passed:
            self.stopped_at = self.agent.iterations
            if self.verbose:
                print(f"stopping: {self.metric} = {value:.4g} passed {self.threshold:g} ({self.mode})")
        return not passed


CallbackLike = BaseCallback | Callable[..., Any] | Sequence[Any] | None


def make_callback(callback: CallbackLike) -> BaseCallback | None:
    """One callback of whatever ``learn`` was given: a :class:`BaseCallback`, a plain function, or a list
    of either."""
    if callback is None or isinstance(callback, BaseCallback):
        return callback
    if isinstance(callback, list | tuple):
        made = [make_callback(c) for c in callback]
        return CallbackList([c for c in made if c is not None])
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(
        f"callback must be a BaseCallback, a function (agent, metrics) or a list of them; "
        f"got {type(callback).__name__}"
    )


__all__ = [
    "BaseCallback",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "EveryNIterations",
    "FunctionCallback",
    "StopTrainingOnThreshold",
    "make_callback",
]
