"""The linear reward model of the classic formulation, ``r(x, y) = wᵀφ(x, y)``, fitted to preferences.

``φ`` is a frozen encoder's embedding of the text ``prompt + response`` (as every reward model of the
package reads an episode): the attention-masked mean of the last hidden states of any transformers model
(the task's policy by default, the model being trained, so the reward reads text as the policy does), or a
sentence-transformers model's embedding when one is given. ``w`` is fitted by the Bradley–Terry loss
``-log σ(wᵀ(φ(chosen) - φ(rejected)))``, which is exactly logistic regression without an intercept on the
differences ``d = φ(chosen) - φ(rejected)`` labelled 1. scikit-learn's ``LogisticRegression`` (L-BFGS)
fits it: each ``d`` is given both ways round (``d`` labelled 1, ``-d`` labelled 0), which is the same loss
twice over and gives the solver the two classes it asks for. The L2 strength ``C`` is chosen by
cross-validation over groups of comparisons unless given (a pair and its mirror image never fall on both
sides of a fold). Features are scaled to unit variance for the fit; the saved ``w`` is in the encoder's
own units, so the score is ``wᵀφ`` as written.

A saved linear reward model is a directory (``linear_reward.json``, ``weights.safetensors``) that the env
takes as ``reward_model=`` like any other: ``gym.make("TextRLHF-v0", reward_model="my-linear-rm")``.

    textenv-train-rm pairs.jsonl --linear --out my-linear-rm                 # encoder: the task's policy
    textenv-train-rm pairs.jsonl --linear --base path/to/encoder --out my-linear-rm
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from textenv.atomic import atomic_folder
from textenv.models import load_tokenizer, model_device, quiet_loading

CONFIG_FILE = "linear_reward.json"
#: scikit-learn's Newton solver with a Cholesky step: for a few thousand features at most and many pairs,
#: seconds where L-BFGS took minutes on the default task's 10,000 pairs
SOLVER = "newton-cholesky"
#: the values of C that cross-validation chooses among
CS = np.logspace(-3, 3, 7)
WEIGHTS_FILE = "weights.safetensors"


def is_linear_reward_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder saved by :meth:`LinearReward.save`."""
    return (Path(path) / CONFIG_FILE).is_file()


class Encoder:
    """``φ``: texts to fixed-size float64 vectors, from a frozen model.

    ``model`` is a transformers model (object, local directory or hub name; a causal LM's trunk is used)
    whose hidden states are mean-pooled over each text's tokens, or, with ``kind="sentence-transformers"``
    (the default for a folder that holds a ``modules.json``), a sentence-transformers model.

    ``layers="all"`` (the default) concatenates the mean of every layer's hidden states, the token
    embeddings included; ``"last"`` keeps the last layer's only. On the default task, with the policy as
    encoder, ``"all"`` orders 81% of held-out pairs as gold does after 1,000 comparison groups and 78% after
    4,000, ``"last"`` 67% and 65% (``benchmarks/linear_reward.py``; the README's "A linear reward model"):
    the last layer of a small LM is shaped to predict the next token, and what a review's sentiment needs is
    spread over its layers.
    """

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        *,
        kind: str | None = None,
        layers: str = "all",
        batch_size: int = 256,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ):
        self.source = os.fspath(model) if isinstance(model, str | os.PathLike) else None
        if kind is None:
            kind = (
                "sentence-transformers"
                if self.source is not None and (Path(self.source) / "modules.json").is_file()
                else "transformers"
            )
        if kind not in ("transformers", "sentence-transformers"):
            raise ValueError(f"kind must be 'transformers' or 'sentence-transformers', got {kind!r}")
        if layers not in ("all", "last"):
            raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
        self.kind, self.layers, self.batch_size = kind, layers, batch_size
        if kind == "sentence-transformers":
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(
                    "a sentence-transformers encoder needs `pip install sentence-transformers`"
                ) from error
            self.model: Any = (
                model
                if not isinstance(model, str | os.PathLike)
                else SentenceTransformer(os.fspath(model), device=None if device is None else str(device))
            )
            self.tokenizer = None
        else:
            if isinstance(model, str | os.PathLike):
                with quiet_loading():
                    model = AutoModel.from_pretrained(os.fspath(model), use_safetensors=True)
            elif not isinstance(model, PreTrainedModel):
                raise TypeError(
                    f"the encoder must be a transformers model or a path, got {type(model).__name__}"
                )
            self.model = model
            if device is not None:
                torch.nn.Module.to(self.model, device)
            self.model.eval()
            self.tokenizer = load_tokenizer(
                tokenizer if tokenizer is not None else (self.source or self.model.config._name_or_path)
            )
        limit = getattr(getattr(self.model, "config", None), "n_positions", None) or getattr(
            getattr(self.model, "config", None), "max_position_embeddings", None
        )
        self.max_length = min(x for x in (max_length, limit) if x) if (max_length or limit) else None

    @property
    def dimensions(self) -> int | None:
        """The length of ``φ`` (None when the encoder does not say)."""
        if self.kind == "sentence-transformers":
            # sentence-transformers 6 renamed get_sentence_embedding_dimension
            measure = getattr(self.model, "get_embedding_dimension", None)
            size = measure() if measure is not None else self.model.get_sentence_embedding_dimension()
            return None if size is None else int(size)
        config = self.model.config
        width = int(config.hidden_size)
        layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
        return width * (layers + 1) if self.layers == "all" else width

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings of ``texts``, float64 (n, d)."""
        if self.kind == "sentence-transformers":
            out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
            return np.asarray(out, dtype=np.float64)
        assert self.tokenizer is not None
        device = model_device(self.model)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                truncation=self.max_length is not None,
                max_length=self.max_length,
            )["input_ids"]
            encoded = [ids if ids else [pad] for ids in encoded]  # an empty text still gets a vector
            width = max(len(ids) for ids in encoded)
            ids = torch.full((len(encoded), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, row in enumerate(encoded):
                ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.layers == "all")
            states = out.hidden_states if self.layers == "all" else (out.last_hidden_state,)
            weights = mask.unsqueeze(-1).double()
            pooled = [(h.double() * weights).sum(1) / weights.sum(1) for h in states]
            rows.append(torch.cat(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0))


class LinearReward:
    """``r(x, y) = wᵀφ(x + y)``: a reward model for the env (``score(prompts, responses)``).

    Build it with :func:`fit_linear_reward`, or load a saved one with :meth:`load` (or by passing its folder
    as ``reward_model=``).
    """

    def __init__(self, encoder: Encoder, weights: np.ndarray, info: dict[str, Any] | None = None):
        self.encoder = encoder
        self.weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        self.info = dict(info or {})

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``φ`` of each ``prompt + response``, (n, d)."""
        return self.encoder([p + r for p, r in zip(prompts, responses, strict=True)])

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return (self.features(prompts, responses) @ self.weights).tolist()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``w`` and where the encoder comes from (atomically, as the other reward models).

        The encoder must have been given by path (a folder or a hub name), which is what is saved."""
        if self.encoder.source is None:
            raise ValueError(
                "the encoder was given as an object: save needs its path (give fit_linear_reward a folder "
                "or a hub name as encoder, or save the model first)"
            )
        path = Path(directory)
        with atomic_folder(path, marker=CONFIG_FILE) as tmp:
            save_file({"w": torch.from_numpy(self.weights.copy())}, tmp / WEIGHTS_FILE)
            source = self.encoder.source
            if os.path.isdir(source):  # a folder is saved relative to the reward model's, if it can be
                try:
                    source = os.path.relpath(os.path.abspath(source), os.path.abspath(path))
                except ValueError:  # another drive
                    source = os.path.abspath(source)
            config = {
                "type": "linear",
                "encoder": source,
                "encoder_kind": self.encoder.kind,
                "layers": self.encoder.layers,
                "max_length": self.encoder.max_length,
                "dimensions": int(self.weights.size),
                **self.info,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> LinearReward:
        """Load a folder written by :meth:`save` (its encoder from where it was saved)."""
        path = Path(directory)
        if not is_linear_reward_dir(path):
            raise FileNotFoundError(f"{path} is not a linear reward model (no {CONFIG_FILE})")
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        source = config["encoder"]
        if not os.path.isabs(source) and (path / source).exists():
            source = os.path.normpath(path / source)
        encoder = Encoder(
            source,
            kind=config["encoder_kind"],
            layers=config.get("layers", "last"),
            max_length=config.get("max_length"),
            device=device,
        )
        weights = load_file(path / WEIGHTS_FILE)["w"].numpy()
        width = encoder.dimensions
        if width is not None and weights.size != width:
            raise ValueError(f"{path}: w has {weights.size} dimensions, the encoder {source} gives {width}")
        known = ("type", "encoder", "encoder_kind", "layers", "max_length")
        info = {k: v for k, v in config.items() if k not in known}
        return cls(encoder, weights, info)

    def __repr__(self) -> str:
        return f"LinearReward(encoder={self.encoder.source!r}, dimensions={self.weights.size})"


@dataclass
class LinearRewardResult:
    """What :func:`fit_linear_reward` gives back."""

    model: LinearReward
    metrics: dict[str, float]
    eval_pairs: list[Any]


def fit_linear_reward(
    pairs: Sequence[Any] | str | os.PathLike[str],
    encoder: Encoder | PreTrainedModel | str | os.PathLike[str],
    *,
    C: float | None = None,
    eval_pairs: Sequence[Any] | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> LinearRewardResult:
    """Fit ``w`` to preference pairs by the Bradley–Terry loss (see the module docstring).

    Args:
        pairs: comparisons (:class:`textenv.reward_training.PreferencePair`) or a JSON Lines file of them,
            the reward trainer's format; pairs sharing a ``group`` are held out together.
        encoder: ``φ``: an :class:`Encoder`, or a model / folder / hub name to make one from.
        C: inverse L2 strength of the logistic regression; ``None`` chooses it among 7 values from 1e-3
            to 1e3 by 5-fold cross-validation over comparison groups (log loss).
        eval_pairs: held-out comparisons; by default ``eval_fraction`` of the groups is held out.
        seed: the split's seed.

    Returns:
        The model, its metrics (``train/accuracy``, ``train/loss``, ``eval/accuracy``, ``eval/loss`` as
        mean Bradley–Terry loss, ``C``, sizes, seconds) and the held-out pairs.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import GroupKFold

    from textenv.reward_training import _units, check_pair, load_preference_pairs

    start = time.perf_counter()
    data = load_preference_pairs(pairs) if isinstance(pairs, str | os.PathLike) else list(pairs)
    if not data:
        raise ValueError("no preference pairs to fit")
    for i, pair in enumerate(data):
        check_pair(pair, pair.source or f"pairs[{i}]")
    if C is not None and not (isinstance(C, int | float) and math.isfinite(C) and C > 0):
        raise ValueError(f"C must be a finite number > 0 (or None: cross-validated), got {C!r}")
    if eval_pairs is None:
        units = _units(data)
        order = np.random.default_rng(seed).permutation(len(units))
        held = max(1, round(eval_fraction * len(units))) if eval_fraction > 0 and len(units) > 1 else 0
        eval_pairs = [data[i] for u in order[:held] for i in units[u]]
        data = [data[i] for u in order[held:] for i in units[u]]
    eval_pairs = list(eval_pairs)
    if not isinstance(encoder, Encoder):
        encoder = Encoder(encoder)

    def differences(chunk: Sequence[Any]) -> np.ndarray:
        texts = [p.prompt + p.chosen for p in chunk] + [p.prompt + p.rejected for p in chunk]
        unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
        phi = encoder([str(t) for t in unique])[inverse.reshape(-1)]  # each distinct text encoded once
        return phi[: len(chunk)] - phi[len(chunk) :]

    d = differences(data)
    scale = np.sqrt(np.mean(d**2, axis=0))  # the differences' own scale (their mean is ~0 by symmetry)
    scale[scale == 0] = 1.0
    x = np.concatenate([d / scale, -d / scale])
    y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
    units = _units(data)
    unit_of = np.empty(len(data), dtype=np.int64)
    for u, members in enumerate(units):
        unit_of[members] = u
    groups = np.concatenate([unit_of, unit_of])  # a pair and its mirror image stay in one fold
    if C is None:
        folds = min(5, len(units))
        if folds < 2:
            raise ValueError("choosing C by cross-validation needs at least 2 comparison groups; give C=")
        splits = list(GroupKFold(n_splits=folds).split(x, y, groups))
        search = LogisticRegressionCV(
            Cs=list(CS),
            cv=splits,
            fit_intercept=False,
            max_iter=2000,
            scoring="neg_log_loss",
            solver=SOLVER,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            search.fit(x, y)
        C = float(np.asarray(search.C_).reshape(-1)[0])
    solver = LogisticRegression(C=C, fit_intercept=False, max_iter=2000, solver=SOLVER)
    solver.fit(x, y)
    weights = solver.coef_.reshape(-1) / scale  # back in the encoder's units: r = wᵀφ

    def figures(chunk: Sequence[Any], diff: np.ndarray) -> tuple[float, float]:
        margin = diff @ weights
        return float(np.mean(margin > 0)), float(np.mean(np.logaddexp(0.0, -margin)))

    metrics: dict[str, float] = {
        "C": float(C),
        "train/pairs": float(len(data)),
        "dimensions": float(weights.size),
    }
    metrics["train/accuracy"], metrics["train/loss"] = figures(data, d)
    metrics["eval/accuracy"] = metrics["eval/loss"] = math.nan
    metrics["eval/pairs"] = float(len(eval_pairs))
    if eval_pairs:
        metrics["eval/accuracy"], metrics["eval/loss"] = figures(eval_pairs, differences(eval_pairs))
    metrics["seconds"] = time.perf_counter() - start
    model = LinearReward(encoder, weights, {"C": float(C), "train_pairs": len(data)})
    return LinearRewardResult(model, metrics, eval_pairs)
