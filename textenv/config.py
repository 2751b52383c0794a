"""The settings of ``TextRLHF-v0``, written once: :class:`EnvConfig`, which checks itself, and what an env
tells an agent about its token layout, :class:`EnvConstants`.

Both env classes (one episode, or N batched) and the engine under them take an :class:`EnvConfig`;
``gymnasium.make("TextRLHF-v0", **settings)`` builds one from its keyword arguments. Every setting is
checked here, when the config is made, before any model is loaded or any state exists: a wrong type is a
``TypeError`` and a wrong value a ``ValueError``, each naming the setting and the value given.

Also here: the checks of what ``reset`` takes (seeds), shared by both env classes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from textenv.tasks import UNSET

KLPlacement = Literal["terminal", "per_token"]
KL_PLACEMENTS = ("terminal", "per_token")
RENDER_MODES = ("ansi",)
KL_ESTIMATOR_NAMES = ("k1", "k2", "k3")  # textenv.kl.KL_ESTIMATORS
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_MAX_PROMPT_TOKENS = 64


# ----------------------------------------------------------------------------- checks of single values
def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an int: a Python or numpy integer (not a bool, a float or a string), ``>= minimum``."""
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        kind = "an integer or None" if optional else "an integer"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {_shown(value)}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float (an int or float, not a bool or a string), ``>= minimum``/``> above``."""
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {_shown(value)}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if above is not None and number <= above:
        raise ValueError(f"{name} must be > {above}, got {number}")
    return number


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {_shown(value)}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str], *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices) + (" or None" if optional else "")
        raise ValueError(f"{name} must be one of {allowed}; got {_shown(value)}")
    return value


def check_seed(name: str, value: Any) -> int | None:
    """A seed of ``reset``: None or a non-negative integer (what ``numpy.random.SeedSequence`` takes)."""
    return check_int(name, value, minimum=0, optional=True)


def check_device(value: Any) -> Any:
    """``device``: None, a ``torch.device`` or its name; refused when that device is not available here."""
    if value is None:
        return None
    import torch

    if not isinstance(value, str | torch.device):
        raise TypeError(f"device must be a string, a torch.device or None, got {type(value).__name__}")
    try:
        device = torch.device(value)
    except RuntimeError as error:
        raise ValueError(f"device={value!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={value!r} but CUDA is not available on this machine; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={value!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={value!r} but MPS is not available on this machine; use device='cpu'")
    return value


def check_text(text: object, where: str) -> str:
    """``text`` if it is a string that UTF-8 can encode (a lone surrogate cannot), else a named error."""
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a string, got {type(text).__name__} {_shown(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} {_shown(text)} is not valid Unicode text: {error.reason} at character {error.start}"
        ) from None
    return text


def check_prompts(name: str, value: Any, *, allow_callable: bool = True) -> Any:
    """A prompt source: a list or tuple of strings (not one string), or a callable ``(np_random) -> str``."""
    kind = "a list of strings or a callable (np_random) -> str" if allow_callable else "a list of strings"
    if value is None or (allow_callable and callable(value)):
        return value
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be {kind}, not a single string ({_shown(value)}); wrap it in a list")
    if not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {_shown(value)}")
    for i, text in enumerate(value):
        check_text(text, f"{name}[{i}]")
    return value


# ----------------------------------------------------------------------------- the env's settings
@dataclass(frozen=True)
class EnvConfig:
    """Every setting of ``TextRLHF-v0`` (see :class:`textenv.TextRLHFEnv` for what each does).

    Made with keyword arguments (``EnvConfig(kl_coef=0.1, task="sorting")``) or by ``gymnasium.make``;
    checked at once. :meth:`resolved` fills in the task's models and prompts and the default lengths.
    """

    policy: Any = UNSET
    reference: Any = None
    tokenizer: Any = None
    reward_model: Any = None
    prompts: Sequence[str] | Callable[[np.random.Generator], str] | None = None
    max_new_tokens: int | None = None
    max_prompt_tokens: int | None = None
    temperature: float = 1.0
    kl_coef: float = 0.2
    kl_estimator: str = "k1"
    kl_placement: KLPlacement = "terminal"
    kl_target: float | None = None
    kl_horizon: float = 10_000
    device: Any = None
    lora: Any = None
    frozen_dtype: Any = None
    render_mode: str | None = None
    truncate_prompts: bool = False
    reward_label: str | int | None = None
    trust_remote_code: bool = False
    task: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # a frozen dataclass stores its normalised values this way
        for name in ("max_new_tokens", "max_prompt_tokens"):
            set_(self, name, check_int(name, getattr(self, name), minimum=1, optional=True))
        set_(self, "temperature", check_float("temperature", self.temperature, above=0.0))
        set_(self, "kl_coef", check_float("kl_coef", self.kl_coef, minimum=0.0))
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATOR_NAMES)
        check_choice("kl_placement", self.kl_placement, KL_PLACEMENTS)
        set_(self, "kl_target", check_float("kl_target", self.kl_target, above=0.0, optional=True))
        if self.kl_horizon is None:
            raise TypeError("kl_horizon must be a number (episodes over which beta adapts), got None")
        set_(self, "kl_horizon", check_float("kl_horizon", self.kl_horizon, above=0.0))
        check_device(self.device)
        if self.lora is not None:
            from textenv.lora import lora_settings

            lora_settings(self.lora)  # a wrong type or rank fails here, before any model loads
        from textenv.models import frozen_dtype_name

        set_(self, "frozen_dtype", frozen_dtype_name(self.frozen_dtype))
        check_choice("render_mode", self.render_mode, RENDER_MODES, optional=True)
        set_(self, "truncate_prompts", check_bool("truncate_prompts", self.truncate_prompts))
        set_(self, "trust_remote_code", check_bool("trust_remote_code", self.trust_remote_code))
        label = self.reward_label
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | numbers.Integral)):
            raise TypeError(f"reward_label must be a label name, a label index or None, got {_shown(label)}")
        if self.task is not None and not isinstance(self.task, str):
            raise TypeError(f"task must be a task name (a string) or None, got {_shown(self.task)}")
        check_prompts("prompts", self.prompts)

    @classmethod
    def from_kwargs(cls, config: EnvConfig | None = None, **settings: Any) -> EnvConfig:
        """``config`` (or the defaults) with ``settings`` changed; an unknown name is a ``TypeError``."""
        if config is not None and not isinstance(config, EnvConfig):
            raise TypeError(
                f"the first argument of the env is an EnvConfig (or nothing); got {type(config).__name__}. "
                "Pass the settings by name: policy=..., reward_model=..."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"TextRLHF-v0 has no setting {', '.join(map(repr, unknown))}; its settings are: "
                f"{', '.join(sorted(known))}"
            )
        return dataclasses.replace(config, **settings) if config is not None else cls(**settings)

    def resolved(self) -> EnvConfig:
        """The config the engine is built from: the task's models, prompts and lengths filled in (see
        :func:`textenv.tasks.fill_env_arguments`), the default lengths where none is set, ``task`` named."""
        from textenv.tasks import fill_env_arguments

        task, filled = fill_env_arguments(self.task, {name: getattr(self, name) for name in _TASK_FILLED})
        config = dataclasses.replace(self, task=task, **filled)
        if config.policy is UNSET:
            config = dataclasses.replace(config, policy=None)
        return dataclasses.replace(
            config,
            max_new_tokens=config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            max_prompt_tokens=config.max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS,
        )


_TASK_FILLED = (
    "policy",
    "reference",
    "tokenizer",
    "reward_model",
    "prompts",
    "max_new_tokens",
    "max_prompt_tokens",
)


@dataclass(frozen=True)
class EnvConstants:
    """What a ``TextRLHF-v0`` env tells an agent about its episodes (``env.unwrapped.constants``).

    The observation's columns ``[0, prompt_width)`` hold the left-padded prompt and the response starts
    at column ``prompt_width``; an episode has at most ``max_new_tokens`` response tokens.
    """

    num_envs: int
    prompt_width: int
    max_new_tokens: int
    temperature: float
    vocab_size: int
    eos_token_id: int | None
    pad_token_id: int

    @property
    def filler_token_id(self) -> int:
        """A token that is not EOS: what a sampler feeds a slot whose episode has already ended."""
        if self.pad_token_id != self.eos_token_id:
            return self.pad_token_id
        return (self.pad_token_id + 1) % self.vocab_size


def check_options(options: Any, allowed: Sequence[str]) -> dict[str, Any]:
    """``reset``'s ``options``: None or a dict whose keys are among ``allowed``; returns a copy."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__} {_shown(options)}")
    unknown = sorted(map(str, set(options) - set(allowed)))
    if unknown:
        raise ValueError(
            f"options has unknown key(s) {', '.join(map(repr, unknown))}; reset takes "
            f"{', '.join(map(repr, allowed))}"
        )
    prompt = options.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"options['prompt'] must be a string, got {type(prompt).__name__} {_shown(prompt)}")
    return dict(options)
