"""Loading the policy, the reference and tokenizers: from an object, a local directory or a hub name.

Weights load with safetensors only (``use_safetensors=True``), and ``trust_remote_code`` stays off unless
the caller turns it on. A hub name works where the hub is reachable (or cached with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

ModelSpec = PreTrainedModel | str | os.PathLike[str]
TokenizerSpec = PreTrainedTokenizerBase | str | os.PathLike[str]

#: Set to 1 to see transformers' own loading output (weight-loading bars, load reports) again.
VERBOSE_LOADING_VARIABLE = "TEXTENV_VERBOSE_LOADING"


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Inside: transformers prints no progress bars (loading or writing weights) and no load reports (a
    new scalar head listed as MISSING, say), only errors; its settings are put back after.
    ``TEXTENV_VERBOSE_LOADING=1`` turns this off, for debugging a load."""
    if os.environ.get(VERBOSE_LOADING_VARIABLE, "") not in ("", "0"):
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_causal_lm(
    spec: ModelSpec,
    *,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Return a causal LM: ``spec`` itself if it is a model (a peft model with adapters and its
    :class:`textenv.lora.AdaptersOff` view included), else ``from_pretrained(spec)`` in ``dtype``.

    A path or hub name loads in float32 unless told otherwise, as trl loads its models: transformers 5
    otherwise loads a checkpoint in the dtype it was saved in (most hub models: bf16), and a policy saved in
    bf16 would then train bf16 weights, whose small Adam steps round away. A model object is used as it is.
    """
    from textenv.lora import AdaptersOff, is_peft_model

    model: Any
    if isinstance(spec, PreTrainedModel | AdaptersOff) or is_peft_model(spec):
        model = spec
    elif isinstance(spec, str | os.PathLike):
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(
                os.fspath(spec), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
            )
    else:
        raise TypeError(
            "a policy or reference must be a transformers PreTrainedModel, a local directory or a hub "
            f"name; got {type(spec).__name__}"
        )
    if device is not None and not isinstance(model, AdaptersOff):  # a view moves with its policy
        torch.nn.Module.to(model, device)  # in place: a shared policy stays the same object
    return model


def load_tokenizer(spec: TokenizerSpec, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Return a tokenizer: ``spec`` itself if it is one, else ``AutoTokenizer.from_pretrained(spec)``."""
    if isinstance(spec, PreTrainedTokenizerBase):
        return spec
    if isinstance(spec, str | os.PathLike):
        with quiet_loading():
            return AutoTokenizer.from_pretrained(os.fspath(spec), trust_remote_code=trust_remote_code)
    raise TypeError(
        "tokenizer must be a transformers tokenizer, a local directory or a hub name; "
        f"got {type(spec).__name__}"
    )


def tokenizer_source(model_spec: Any) -> str | None:
    """Where to look for a tokenizer when none was given: the model's own path or hub name."""
    if isinstance(model_spec, str | os.PathLike):
        return os.fspath(model_spec)
    name = getattr(getattr(model_spec, "config", None), "_name_or_path", "")
    return name or None


def frozen_copy(model: PreTrainedModel, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A deep copy in eval mode with gradients off: the reference of an RLHF run.

    ``dtype``: its floating-point parameters made in that dtype as they are copied (as
    :func:`cast_frozen_weights` would leave them), so that no full-precision copy is made first.
    """
    memo: dict[int, Any] = {}
    if dtype is not None:
        for name, parameter in model.named_parameters(remove_duplicate=False):
            if parameter.is_floating_point() and parameter.dtype != dtype and not _kept_in_fp32(model, name):
                memo[id(parameter)] = torch.nn.Parameter(parameter.detach().to(dtype), requires_grad=False)
    reference = copy.deepcopy(model, memo)
    reference.eval()
    reference.requires_grad_(False)
    return reference


#: ``frozen_dtype`` names and the dtype each holds the frozen weights in (``None``: as loaded).
FROZEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def frozen_dtype_name(value: Any) -> str | None:
    """``frozen_dtype`` checked and named as torch names it (``"bfloat16"``): None, a name of
    :data:`FROZEN_DTYPES` or one of those torch dtypes."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        names = {dtype: str(dtype).removeprefix("torch.") for dtype in FROZEN_DTYPES.values()}
        if value in names:
            return names[value]
    elif isinstance(value, str) and value in FROZEN_DTYPES:
        return str(FROZEN_DTYPES[value]).removeprefix("torch.")
    raise ValueError(
        f"frozen_dtype must be None or one of {', '.join(map(repr, FROZEN_DTYPES))} (or that torch dtype), "
        f"got {value!r}"
    )


def cast_frozen_weights(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Hold every frozen floating-point parameter of ``model`` (``requires_grad`` off) in ``dtype``, in
    place; trained parameters, buffers (rotary frequencies, say) and the modules a transformers model
    keeps in float32 (``_keep_in_fp32_modules``) stay as they are. Returns how many parameters changed.

    Under ``torch.autocast`` a float32 weight that does not train is cast again on every forward pass
    (autocast keeps cast copies only of trained weights): held in the autocast dtype it is read as it is,
    and takes half the memory. Outside autocast a model of bf16 weights runs in bf16 throughout.
    """
    changed = 0
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen or parameter.requires_grad or not parameter.is_floating_point():
            continue
        seen.add(id(parameter))
        if parameter.dtype == dtype or _kept_in_fp32(model, name):
            continue
        parameter.data = parameter.data.to(dtype)
        changed += 1
    return changed


def _kept_in_fp32(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is in a module the transformers model keeps in float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    return any(part in name.split(".") for part in keep)


def output_vocab_size(model: PreTrainedModel) -> int:
    """Number of logits the model produces per position, i.e. the size of the action space."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


class evaluating:
    """Context manager: the model in eval mode and autograd off, its previous mode restored after.

    The env shares the policy with the agent, which may be in train mode; log-probs must not depend on
    dropout, and the agent's mode must not change under it.

    Autograd is off through ``torch.inference_mode``, or through ``torch.no_grad`` where ``torch.autocast``
    is on for the models' device: autocast keeps no cast copy of a weight under inference mode, so every
    forward pass (every token of a rollout) would cast every weight again.
    """

    def __init__(self, *models: torch.nn.Module | None):
        self.models = [m for m in models if m is not None]
        self._modes: list[bool] = []
        self._grad: Any = None

    def __enter__(self) -> None:
        self._modes = [m.training for m in self.models]
        for m, mode in zip(self.models, self._modes, strict=True):
            if mode:  # switching modes walks every submodule: skip it for models already in eval mode
                m.eval()
        devices = {model_device(m).type for m in self.models}
        casting = any(torch.is_autocast_enabled(device) for device in devices)
        self._grad = torch.no_grad() if casting else torch.inference_mode()
        self._grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._grad.__exit__(*exc)
        for m, mode in zip(self.models, self._modes, strict=True):
            if mode:
                m.train()
