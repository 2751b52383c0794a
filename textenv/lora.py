"""LoRA policies (peft) whose reference is the same weights with the adapters switched off.

RLHF keeps two models that start equal: the policy it trains and the frozen reference of the KL. With LoRA
(Hu et al., 2021) the policy is the base model plus small trainable adapters and the base stays frozen, so
the base model *is* the reference: :class:`AdaptersOff` reads it by running the policy with its adapters
switched off (peft's ``disable_adapter``). One copy of the weights serves both, and the env's KL is the
same as against a separate frozen copy of the base (tested to 1e-5).

``gymnasium.make("TextRLHF-v0", lora=8)`` (a rank, or a dict of ``peft.LoraConfig`` arguments) wraps the
policy and, unless a ``reference=`` is given, makes the reference this view. A policy that is already a
peft model gets the same reference. peft is an optional dependency: ``pip install 'textenv[lora]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

#: LoRA's settings unless told otherwise: rank 8, alpha 16, every linear layer but the output head, no
#: dropout (the PPO ratio compares like with like; the env scores in eval mode anyway).
DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
}


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError(
            "LoRA needs peft, which is not installed: pip install 'textenv[lora]' (or pip install peft)"
        ) from None
    return peft


def is_peft_model(model: Any) -> bool:
    """True for a peft model (a policy with adapters), without importing peft when it is not loaded."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def lora_settings(spec: Any) -> dict[str, Any]:
    """``peft.LoraConfig`` arguments from a rank (``8``) or a dict (``{"r": 16, "target_modules":
    ["c_attn"]}``), :data:`DEFAULT_LORA` filling in the rest; checked, with clear errors."""
    if isinstance(spec, bool) or not isinstance(spec, int | dict):
        raise TypeError(
            f"lora must be a rank (an int) or a dict of peft.LoraConfig arguments, got {spec!r:.80}"
        )
    settings = dict(DEFAULT_LORA) | ({"r": spec} if isinstance(spec, int) else dict(spec))
    if "lora_alpha" not in (spec if isinstance(spec, dict) else {}):
        settings["lora_alpha"] = 2 * settings["r"]
    rank = settings["r"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"the LoRA rank must be an int >= 1, got {rank!r}")
    return settings


def add_lora(model: nn.Module, spec: Any) -> Any:
    """``model`` (a transformers causal LM) with LoRA adapters (:func:`lora_settings` of ``spec``): a peft
    model whose base weights are frozen and whose adapters start at zero (the policy starts as the base)."""
    peft = _peft()
    settings = lora_settings(spec)
    from transformers.pytorch_utils import Conv1D

    if "fan_in_fan_out" not in settings and any(isinstance(m, Conv1D) for m in model.modules()):
        settings["fan_in_fan_out"] = True  # GPT-2's layers store their weights transposed
    config = peft.LoraConfig(task_type="CAUSAL_LM", **settings)
    try:
        with warnings.catch_warnings():  # peft's deprecation notices about transformers' API, not ours
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(
            f"cannot add LoRA adapters to {type(model).__name__} with {settings}: {error}. Name the layers "
            "with lora={'r': 8, 'target_modules': [...]}"
        ) from None


class AdaptersOff(nn.Module):
    """The base model of a peft ``policy``, read through the policy with its adapters switched off.

    It owns no weights: ``parameters()`` are the policy's (so that code asking where it lives finds the
    policy's device), and ``requires_grad_``, ``train`` and ``eval`` leave the policy alone, so an env can
    freeze "its reference" without freezing the adapters it trains. Every other attribute (``config``,
    ``get_output_embeddings``, ...) is the policy's. Calls are the policy's forward inside
    ``policy.disable_adapter()``.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        if not is_peft_model(policy):
            raise TypeError(f"AdaptersOff reads a peft model with adapters, got {type(policy).__name__}")
        self.__dict__["_policy"] = policy  # not a submodule: the reference view must not own the policy

    @property
    def policy(self) -> Any:
        return self.__dict__["_policy"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.policy.parameters(recurse)

    def requires_grad_(self, requires_grad: bool = True) -> AdaptersOff:
        return self  # the base weights are frozen by peft already; the adapters are the policy's to train

    def train(self, mode: bool = True) -> AdaptersOff:
        self.training = mode
        return self

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_policy"], name)

    def __repr__(self) -> str:
        return f"AdaptersOff({type(self.policy).__name__} of {type(self.policy.get_base_model()).__name__})"


def base_forward_signature(model: Any) -> Any:
    """The forward whose signature tells what a model accepts: the base model's for peft models and
    their :class:`AdaptersOff` views (their own forwards take ``**kwargs``)."""
    inner = model.policy if isinstance(model, AdaptersOff) else model
    if is_peft_model(inner):
        return inner.get_base_model().forward
    return model.forward
