"""The task suite of ``TextRLHF-v0``: one registry of offline tasks, each with a gold scorer.

    >>> import textenv.tasks
    >>> textenv.tasks.names()
    ['reviews', 'verbosity', 'sorting', 'treasure', 'requests']
    >>> task = textenv.tasks.load("sorting")
    >>> task.evaluate(["sort : 3 1 2 ="], [" 1 2 3"])["success_rate"]
    1.0
    >>> env = gymnasium.make("TextRLHF-v0", task="sorting")     # or make_vec(..., task="sorting")

Each task stresses one thing an RLHF algorithm must do and ships what it needs (a pretrained tiny policy,
its tokenizer, its prompts and, where the reward is learned, a reward model), built by one reproducible
command (``python -m textenv.tasks.NAME.build``) and listed with their sha256 in a manifest:

======================  ===========================================================================
``reviews`` (default)   write a positive review; learned reward model (the embedded default task)
``verbosity``           over-optimisation: the reward model learned from labellers who partly reward
                        length, while gold wants a concise positive review
``sorting``             verifiable, sparse reward: sort a list of numbers, right or wrong
``treasure``            exploration: a walk on a grid that must pass a far cell (rare for the reference)
``requests``            prompt-conditioned: a review of the sentiment and subject the prompt asks for
======================  ===========================================================================

Importing this package stays light (no torch). A task of your own is a :class:`Task` given to
:func:`register`.
"""

from __future__ import annotations

import importlib
from typing import Any

from textenv.tasks.base import AssetError, Task

DEFAULT_TASK_NAME = "reviews"

_BUILTIN: dict[str, str] = {
    "reviews": "textenv.tasks.reviews",
    "verbosity": "textenv.tasks.verbosity",
    "sorting": "textenv.tasks.sorting",
    "treasure": "textenv.tasks.treasure",
    "requests": "textenv.tasks.requests",
}
_REGISTERED: dict[str, Task] = {}


class _Unset:
    """Marker of a constructor argument that was not given (``None`` means something for ``policy``)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __deepcopy__(self, memo: dict[int, Any]) -> _Unset:
        return self


UNSET: Any = _Unset()


def names() -> list[str]:
    """Names of every task: the built-in suite, then any registered with :func:`register`."""
    return [*_BUILTIN, *(name for name in _REGISTERED if name not in _BUILTIN)]


def load(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ValueError: ``name`` is not a task; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"a task name must be a string, got {type(name).__name__}; the tasks are {names()}")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(names())}")
    task = importlib.import_module(_BUILTIN[name]).TASK
    assert isinstance(task, Task) and task.name == name
    return task


def register(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` known to :func:`load` and to ``gymnasium.make("TextRLHF-v0", task=task.name)``."""
    if not isinstance(task, Task):
        raise TypeError(f"register takes a textenv.tasks.Task, got {type(task).__name__}")
    if not replace and (task.name in _BUILTIN or task.name in _REGISTERED):
        raise ValueError(f"a task called {task.name!r} exists; pass replace=True to replace it")
    _REGISTERED[task.name] = task
    return task


def fill_env_arguments(task: str | None, arguments: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The env constructor's arguments with a task's defaults filled in; returns ``(task name, arguments)``.

    ``arguments`` holds the constructor's ``policy`` (``UNSET`` when not given), ``reference``,
    ``tokenizer``, ``reward_model``, ``prompts``, ``max_new_tokens`` and ``max_prompt_tokens`` (``None``
    when not given). Rules:

    - ``task=None`` and no ``policy``: the default task (``reviews``), today's ``gym.make("TextRLHF-v0")``;
    - ``task=None`` with a ``policy`` (``None`` included): no task; the caller gives everything;
    - ``task=NAME``: the task fills in every argument not given. With your own ``policy`` the task's
      tokenizer is not used (yours comes from your policy); with ``policy=None`` (an agent that is not a
      language model) the task's policy becomes the ``reference``.
    """
    arguments = dict(arguments)
    own_policy = arguments["policy"] is not UNSET
    if task is None:
        if own_policy:
            return None, arguments
        task = DEFAULT_TASK_NAME
    defaults = load(task).env_kwargs()
    if not own_policy:
        arguments["policy"] = defaults["policy"]
    elif arguments["policy"] is None and arguments.get("reference") is None:
        arguments["reference"] = defaults["policy"]
    for key, value in defaults.items():
        if key == "policy" or (key == "tokenizer" and arguments["policy"] is not None and own_policy):
            continue
        if arguments.get(key) is None:
            arguments[key] = value
    return task, arguments


__all__ = [
    "DEFAULT_TASK_NAME",
    "UNSET",
    "AssetError",
    "Task",
    "fill_env_arguments",
    "load",
    "names",
    "register",
]
