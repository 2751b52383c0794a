"""Reward models as plug-ins.

Every reward model meets one protocol, :class:`RewardModel`: ``score(prompts, responses)`` takes two
equal-length lists of strings and returns one float per pair. The environment calls it once per step with
every episode that ended on that step. Adapters turn common things into that protocol:

- :class:`CallableReward`: a plain Python function ``fn(prompts, responses) -> sequence of float``.
- :class:`ClassifierReward`: a transformers sequence classifier (object, local directory or hub name),
  reading text through *its own* tokenizer. With ``num_labels == 1`` the score is the logit; otherwise it is
  the probability of a label you name (``label="POSITIVE"``).
- :class:`PipelineReward`: a transformers ``text-classification`` pipeline and a label.

:func:`as_reward_model` picks the adapter from what it is given.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pipelines import Pipeline

from textenv.atomic import MANIFEST, verify_manifest
from textenv.errors import RewardModelError
from textenv.linear_reward import LinearReward, is_linear_reward_dir
from textenv.models import evaluating, load_tokenizer, model_device, quiet_loading

TextInputs = Literal["prompt+response", "response", "pair"]


@runtime_checkable
class RewardModel(Protocol):
    """Anything with a batched ``score(prompts, responses) -> sequence of float``."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]: ...


class CallableReward:
    """Wrap ``fn(prompts, responses) -> sequence of float`` (one float per pair)."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]):
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]:
        return self.fn(list(prompts), list(responses))

    def __repr__(self) -> str:
        return f"CallableReward({getattr(self.fn, '__qualname__', self.fn)!r})"


def _texts(prompts: Sequence[str], responses: Sequence[str], inputs: TextInputs) -> Any:
    if inputs == "prompt+response":
        return [p + r for p, r in zip(prompts, responses, strict=True)]
    if inputs == "response":
        return list(responses)
    if inputs == "pair":
        return list(prompts), list(responses)
    raise ValueError(f"inputs must be 'prompt+response', 'response' or 'pair', got {inputs!r}")


def _label_index(id2label: dict[int, str], label: str | int) -> int:
    if isinstance(label, int):
        if label not in id2label:
            raise ValueError(f"label index {label} is not among the model's labels {id2label}")
        return label
    for index, name in id2label.items():
        if name == label:
            return int(index)
    for index, name in id2label.items():
        if name.lower() == label.lower():
            return int(index)
    raise ValueError(f"label {label!r} is not among the model's labels {sorted(id2label.values())}")


def position_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The most tokens ``model`` can read: its config's position limit and its tokenizer's
    ``model_max_length`` (tokenizers without a limit report a huge number), whichever is smaller."""
    config = model.config.get_text_config()
    limits = [getattr(config, name, None) for name in ("n_positions", "max_position_embeddings")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else None


class ClassifierReward:
    """A transformers sequence classifier as a reward model.

    Args:
        model: an ``AutoModelForSequenceClassification`` object, a local directory or a hub name.
        tokenizer: the classifier's tokenizer (object, directory or hub name); by default it is loaded from
            where the model came from. The policy's tokenizer is never used: text is re-tokenised.
        label: for ``num_labels > 1``, the label whose probability is the score (name, e.g. ``"POSITIVE"``,
            or index). Ignored when ``num_labels == 1``, where the score is the raw logit.
        inputs: what the classifier reads: ``"prompt+response"`` (the concatenated text, default),
            ``"response"`` alone, or ``"pair"`` (prompt and response as a text pair).
        batch_size: texts per forward pass (1 when the model's config has no ``pad_token_id``, which
            GPT-2-style classifiers need to find the last token of a padded text).
        max_length: truncate inputs to this many tokens (default: the most the classifier can read, the
            smaller of its config's position limit and its tokenizer's ``model_max_length``; a larger value
            is cut to that limit). Text past it is not read, as with any truncation.
        device: where to run (default: where the model already is; CPU for a loaded one).
        trust_remote_code: passed to ``from_pretrained``; off unless you turn it on.
    """

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        *,
        label: str | int | None = None,
        inputs: TextInputs = "prompt+response",
        batch_size: int = 64,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ):
        classifier: PreTrainedModel
        if isinstance(model, str | os.PathLike):
            source: Any = os.fspath(model)
            if os.path.isfile(os.path.join(source, MANIFEST)):
                verify_manifest(source)  # a folder saved by textenv: refuse a truncated or altered file
            with quiet_loading():
                classifier, info = AutoModelForSequenceClassification.from_pretrained(
                    source,
                    use_safetensors=True,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                )
            if info.get("missing_keys"):
                warnings.warn(
                    f"{source} has no weights for {', '.join(sorted(info['missing_keys'])[:3])}: they were "
                    "initialised at random, so its scores are noise. Is it a reward model (a sequence "
                    "classifier), or a causal LM? Train one with textenv.reward_training.",
                    stacklevel=2,
                )
        elif isinstance(model, PreTrainedModel):
            classifier = model
            source = model.config._name_or_path or None
        else:
            raise TypeError(
                "ClassifierReward needs a sequence-classification model, a local directory or a hub "
                f"name; got {type(model).__name__}"
            )
        if tokenizer is None:
            if not source:
                raise ValueError(
                    "ClassifierReward: the model object does not say where it came from; "
                    "pass its tokenizer with tokenizer=..."
                )
            tokenizer = source
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        if device is not None:
            torch.nn.Module.to(classifier, device)
        self.model = classifier
        self.inputs: TextInputs = inputs
        _texts([], [], inputs)  # validates `inputs`
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        limit = position_limit(classifier, self.tokenizer)
        self.max_length = (
            limit if max_length is None else max_length if limit is None else min(max_length, limit)
        )
        config = classifier.config
        num_labels = int(config.num_labels or 1)
        if num_labels == 1:
            self.label_index: int | None = None
        else:
            if label is None:
                raise ValueError(
                    f"the classifier has {num_labels} labels {sorted((config.id2label or {}).values())}; "
                    "name the one whose probability is the reward with label=..."
                )
            id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
            self.label_index = _label_index(id2label, label)
        # Decoder classifiers (GPT-2 style) find the last token through config.pad_token_id and refuse
        # batches of more than one text without it: such a model scores one text per forward pass.
        self.pad_token_id = config.pad_token_id

    def _encode(self, texts: Any) -> list[dict[str, list[int]]]:
        kwargs: dict[str, Any] = {}
        if self.max_length is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        if isinstance(texts, tuple):
            encoded = self.tokenizer(texts[0], texts[1], **kwargs)
        else:
            encoded = self.tokenizer(texts, **kwargs)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{k: encoded[k][i] for k in keys} for i in range(len(encoded["input_ids"]))]

    def _batches(self, rows: list[dict[str, list[int]]]) -> list[list[int]]:
        if self.pad_token_id is None:
            return [[i] for i in range(len(rows))]  # one text per forward: no padding to get wrong
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            padded = []
            for r in rows:
                pad = [fill if fill is not None else 0] * (width - len(r[key]))
                padded.append(pad + r[key] if left else r[key] + pad)
            out[key] = torch.tensor(padded, dtype=torch.long)
        if "attention_mask" not in out:
            mask = [[1] * len(r["input_ids"]) for r in rows]
            out["attention_mask"] = torch.tensor(
                [[0] * (width - len(m)) + m if left else m + [0] * (width - len(m)) for m in mask]
            )
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]:
        rows = self._encode(_texts(prompts, responses, self.inputs))
        scores = np.empty(len(rows), dtype=np.float64)
        device = model_device(self.model)
        with evaluating(self.model):
            for batch in self._batches(rows):
                inputs = {k: v.to(device) for k, v in self._collate([rows[i] for i in batch]).items()}
                logits = self.model(**inputs).logits.float()  # (B, num_labels)
                # a reward head (one label) gives its raw logit, a classifier its label's probability
                values = logits[:, 0] if self.label_index is None else logits.softmax(-1)[:, self.label_index]
                scores[batch] = values.cpu().numpy()
        return scores.tolist()

    def __repr__(self) -> str:
        return (
            f"ClassifierReward({type(self.model).__name__}, label_index={self.label_index}, "
            f"inputs={self.inputs!r})"
        )


class PipelineReward:
    """A transformers ``text-classification`` pipeline as a reward model.

    The score is the pipeline's score for ``label`` (by default the only label, when there is one), after
    the pipeline's own ``function_to_apply`` (softmax for several labels, sigmoid for one; pass
    ``function_to_apply="none"`` in ``pipeline_kwargs`` for raw logits).
    """

    def __init__(
        self,
        pipe: Pipeline,
        label: str | None = None,
        *,
        inputs: TextInputs = "prompt+response",
        batch_size: int = 64,
        pipeline_kwargs: dict[str, Any] | None = None,
    ):
        if not isinstance(pipe, Pipeline):
            raise TypeError(f"PipelineReward needs a transformers Pipeline, got {type(pipe).__name__}")
        self.pipe = pipe
        self.label = label
        self.inputs: TextInputs = inputs
        _texts([], [], inputs)
        self.batch_size = batch_size
        self.pipeline_kwargs = dict(pipeline_kwargs or {})

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]:
        texts = _texts(prompts, responses, self.inputs)
        if isinstance(texts, tuple):
            texts = [{"text": p, "text_pair": r} for p, r in zip(*texts, strict=True)]
        outputs = self.pipe(texts, top_k=None, batch_size=self.batch_size, **self.pipeline_kwargs)
        scores = []
        for per_text in outputs:
            by_label = {d["label"]: d["score"] for d in per_text}
            if self.label is None:
                if len(by_label) != 1:
                    raise ValueError(
                        f"the pipeline returns labels {sorted(by_label)}; name one with label=..."
                    )
                scores.append(next(iter(by_label.values())))
            elif self.label in by_label:
                scores.append(by_label[self.label])
            else:
                raise ValueError(f"label {self.label!r} not among the pipeline's labels {sorted(by_label)}")
        return scores

    def __repr__(self) -> str:
        return f"PipelineReward({type(self.pipe).__name__}, label={self.label!r})"


def as_reward_model(
    spec: Any,
    *,
    label: str | int | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> RewardModel:
    """Turn ``spec`` into a :class:`RewardModel`.

    ``spec`` may be a reward model already (anything with ``score``), a transformers ``Pipeline``, a
    sequence-classification model object, a local directory or hub name of one, the folder of a linear
    reward model (:class:`textenv.linear_reward.LinearReward`), a plain callable
    ``(prompts, responses) -> sequence of float``, or the import path of any of these as a string,
    ``"package.module:name"`` or ``"path/to/file.py:name"`` (a class there is called with no arguments).
    ``label`` names the scored label of multi-label classifiers and pipelines.
    """
    if isinstance(spec, Pipeline):
        return PipelineReward(spec, label=None if label is None else str(label))
    if isinstance(spec, str) and is_import_spec(spec):
        found = load_import_spec(spec)
        return as_reward_model(found() if isinstance(found, type) else found, label=label, device=device)
    if isinstance(spec, str | os.PathLike) and is_linear_reward_dir(spec):
        return LinearReward.load(spec, device=device)
    if isinstance(spec, PreTrainedModel | str | os.PathLike):
        return ClassifierReward(spec, label=label, device=device, trust_remote_code=trust_remote_code)
    if isinstance(spec, RewardModel):
        return spec
    if callable(spec):
        return CallableReward(spec)
    raise TypeError(
        "reward_model must be a callable (prompts, responses) -> scores, an object with .score(...), a "
        "transformers Pipeline, a sequence classifier, or a local directory / hub name of one; "
        f"got {type(spec).__name__}"
    )


_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"  # a dotted Python name
_IMPORT_SPEC = re.compile(rf"^(?:{_NAME}|[^:]+\.py):{_NAME}$")  # module:name or file.py:name


def is_import_spec(text: str) -> bool:
    """Whether ``text`` reads as ``module:name`` or ``file.py:name`` and is not an existing path (hub names
    have no colon; a folder whose name has one is still a folder)."""
    return bool(_IMPORT_SPEC.match(text)) and not os.path.exists(text)


def load_import_spec(spec: str) -> Any:
    """The object that ``"package.module:name"`` or ``"path/to/file.py:name"`` names (``name`` may be
    dotted: ``module:Class.method``). A module not found on ``sys.path`` is looked for in the current
    directory too, as ``python -m`` would.

    Raises:
        ValueError: the module or the name is not there (the message says which).
    """
    import importlib
    import importlib.util
    import sys

    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ValueError(f"{spec!r}: no file {where}")
        module_name = "_textenv_user_" + re.sub(r"\W", "_", os.path.abspath(where))
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, where)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as error:
            here = os.getcwd()
            if error.name != where.split(".")[0] or here in sys.path or "" in sys.path:
                raise ValueError(f"{spec!r}: cannot import {where}: {error}") from error
            sys.path.insert(0, here)
            try:
                module = importlib.import_module(where)
            except ModuleNotFoundError:
                sys.path.remove(here)
                raise ValueError(
                    f"{spec!r}: no module {where} on the Python path or in the current directory"
                ) from error
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{spec!r}: {where} has no {name}")
        found = getattr(found, part)
    return found


def _as_floats(raw: Any) -> np.ndarray:
    """The scores as float64 (n,): numbers only. Strings are refused, not parsed; a number too large for
    a float becomes inf (and is refused as not finite)."""
    if isinstance(raw, torch.Tensor):
        if raw.is_meta:
            raise TypeError("a tensor on the meta device holds no values")
        if raw.is_complex():
            raise TypeError("complex scores")
        return raw.detach().to("cpu", torch.float64).numpy().reshape(-1)
    if isinstance(raw, str | bytes | dict):
        raise TypeError(f"a {type(raw).__name__} is not a sequence of scores")
    array = np.asarray(raw)
    if array.dtype.kind in "biuf":  # numbers already: the usual case
        return array.astype(np.float64).reshape(-1)
    array = array.astype(object).reshape(-1)
    scores = np.empty(array.size, dtype=np.float64)
    for i, value in enumerate(array):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
            value = value.item()
        if isinstance(value, str | bytes) or not isinstance(value, numbers.Real):
            raise TypeError(f"score {i} is {type(value).__name__} {value!r:.40}, not a number")
        try:
            scores[i] = float(value)
        except OverflowError:
            scores[i] = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    return scores


def _pair(prompts: Sequence[str], responses: Sequence[str], i: int) -> str:
    return f"prompt {prompts[i]!r} (response {responses[i]!r})"


def compute_scores(reward_model: RewardModel, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Call ``reward_model.score`` and check its answer: one finite float per pair, else RewardModelError."""
    try:
        raw = reward_model.score(prompts, responses)
    except Exception as exc:
        raise RewardModelError(
            f"the reward model raised {type(exc).__name__}: {exc} while scoring {len(prompts)} "
            f"response(s), the first for {_pair(prompts, responses, 0)}"
        ) from exc
    try:
        scores = _as_floats(raw)
    except (TypeError, ValueError) as exc:
        raise RewardModelError(
            f"the reward model returned {type(raw).__name__} {raw!r:.60}, not a sequence of numbers ({exc}), "
            f"for {_pair(prompts, responses, 0)}"
        ) from exc
    if scores.shape[0] != len(prompts):
        raise RewardModelError(
            f"the reward model returned {scores.shape[0]} score(s) for {len(prompts)} response(s), "
            f"the first for {_pair(prompts, responses, 0)}"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise RewardModelError(
            f"the reward model returned {scores[i]} (not finite) for {_pair(prompts, responses, i)}"
            + (f" and {bad.size - 1} more" if bad.size > 1 else "")
        )
    return scores
