"""Train a reward model from pairwise preferences, the second stage of RLHF.

The data is JSON Lines, one comparison per line, the format human labelling produces::

    {"prompt": "hotel review :", "chosen": " the staff were friendly .", "rejected": " the room was dirty ."}

The model reads ``prompt + chosen`` and ``prompt + rejected`` (the concatenated text, exactly as
:class:`textenv.ClassifierReward` reads an episode by default) and learns a scalar ``s`` with the
Bradley–Terry loss ``-log σ(s_chosen - s_rejected)``. Any transformers model that
``AutoModelForSequenceClassification`` can load with ``num_labels=1`` serves as a base: a causal LM
checkpoint (its trunk is kept, a scalar head is added) or a classifier.

Comparisons of the same prompt's responses may share a ``"group"`` key (any string or integer): InstructGPT's
set-up, where a labeller ranks K responses and all K(K-1)/2 pairs are trained on together. The trainer keeps a
group whole (in one batch, and on one side of the train/eval split), and reads each distinct text of a batch
once, so K responses give K(K-1)/2 comparisons for the cost of K forward passes::

    {"prompt": "hotel review :", "chosen": " a", "rejected": " b", "group": 17}
    {"prompt": "hotel review :", "chosen": " a", "rejected": " c", "group": 17}
    {"prompt": "hotel review :", "chosen": " c", "rejected": " b", "group": 17}

Lines with ``"tie": true`` or ``"skip": true`` (the labelling page writes them, :mod:`textenv.labelling`)
hold no comparison and are passed over; any other field of a line (``labeller``, ``item``, ...) is ignored.

From the command line::

    textenv-train-rm pairs.jsonl --base path/or/hub-name --out my-reward-model
    python -m textenv.reward_training pairs.jsonl --base ... --out ...
    textenv-train-rm pairs.jsonl --linear --out my-linear-rm   # r = wᵀφ: textenv.linear_reward

The saved directory (safetensors weights, config, tokenizer) is a reward model for the environment:
``gym.make("TextRLHF-v0", reward_model="my-reward-model", ...)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from textenv.atomic import atomic_folder
from textenv.config import check_float, check_int, check_text
from textenv.models import load_tokenizer, model_device, quiet_loading
from textenv.rewards import ClassifierReward, position_limit


class PreferenceDataError(ValueError):
    """A preference file or record is malformed; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: for ``prompt``, the labeller preferred ``chosen`` over ``rejected``.

    ``group`` (optional) ties comparisons among the same set of responses together: the trainer batches a
    group whole and holds it out whole.
    """

    prompt: str
    chosen: str
    rejected: str
    group: str | None = None
    source: str | None = field(default=None, compare=False)  # where it was read: "file, line N"


def check_pair(pair: PreferencePair, where: str) -> None:
    """Refuse a comparison that cannot teach anything or cannot be read.

    Raises:
        PreferenceDataError: naming ``where`` (a file and line, or ``pairs[i]``): a field that is not a
            string or not valid Unicode (a lone surrogate), ``chosen`` equal to ``rejected``, or an empty text
            to score (empty prompt and empty response).
    """
    for key in ("prompt", "chosen", "rejected"):
        try:
            check_text(getattr(pair, key), f"{where}: {key!r}")
        except (TypeError, ValueError) as error:
            raise PreferenceDataError(str(error)) from None
    if pair.chosen == pair.rejected:
        raise PreferenceDataError(f"{where}: 'chosen' and 'rejected' are the same text {pair.chosen!r:.60}")
    for key in ("chosen", "rejected"):
        if not (pair.prompt + getattr(pair, key)):
            raise PreferenceDataError(
                f"{where}: the prompt and {key!r} are both empty: there is no text to score"
            )


def load_preference_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Read a JSON Lines file of ``{"prompt", "chosen", "rejected"}`` records (blank lines are skipped).

    Raises:
        PreferenceDataError: naming the file and line of the first malformed record.
    """
    pairs: list[PreferencePair] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{os.fspath(path)}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PreferenceDataError(
                    f"{where}: not valid UTF-8 ({error.reason} at byte {error.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PreferenceDataError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PreferenceDataError(f"{where}: expected an object, got {type(record).__name__}")
            if record.get("tie") is True or record.get("skip") is True:
                continue  # the labelling page's ties and skips: no comparison to train on
            missing = [key for key in ("prompt", "chosen", "rejected") if key not in record]
            if missing:
                raise PreferenceDataError(
                    f"{where}: missing field(s) {missing}; each line needs 'prompt', 'chosen' and 'rejected'"
                )
            wrong = [key for key in ("prompt", "chosen", "rejected") if not isinstance(record[key], str)]
            if wrong:
                raise PreferenceDataError(f"{where}: field(s) {wrong} must be strings")
            group = record.get("group")
            if group is not None and (isinstance(group, bool) or not isinstance(group, str | int)):
                raise PreferenceDataError(
                    f"{where}: 'group' must be a string or an integer, got {type(group).__name__}"
                )
            pair = PreferencePair(
                record["prompt"],
                record["chosen"],
                record["rejected"],
                None if group is None else str(group),
                source=where,
            )
            check_pair(pair, where)
            pairs.append(pair)
    if not pairs:
        raise PreferenceDataError(f"{os.fspath(path)}: no preference records")
    return pairs


def save_preference_pairs(pairs: Sequence[PreferencePair], path: str | os.PathLike[str]) -> None:
    """Write pairs as JSON Lines (the format :func:`load_preference_pairs` reads)."""
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            record = asdict(pair)
            del record["source"]
            if record["group"] is None:
                del record["group"]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


@dataclass
class RewardTrainingConfig:
    """Settings of :func:`train_reward_model` (the command line has one option per field)."""

    epochs: float = field(
        default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)"}
    )
    batch_size: int = field(
        default=64, metadata={"help": "pairs per optimiser step (whole groups: at least this many)"}
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    eval_fraction: float = field(
        default=0.1,
        metadata={
            "help": "share of pairs (of groups, when pairs have one) held out when no eval pairs are given"
        },
    )
    max_length: int | None = field(default=None, metadata={"help": "truncate texts to this many tokens"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the initial head and the batch order"})

    def __post_init__(self) -> None:
        """Check every setting (a wrong type is a ``TypeError``, a value out of range a ``ValueError``)."""
        check_float("epochs", self.epochs, above=0.0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_float("learning_rate", self.learning_rate, above=0.0)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        for name in ("warmup_fraction", "eval_fraction"):
            value = check_float(name, getattr(self, name), minimum=0.0)
            if value is not None and value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        check_float("max_grad_norm", self.max_grad_norm, above=0.0)
        check_int("max_length", self.max_length, minimum=1, optional=True)
        check_int("seed", self.seed, minimum=0)


@dataclass
class RewardTrainingResult:
    """What :func:`train_reward_model` gives back."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    metrics: dict[str, float]
    eval_pairs: list[PreferencePair]


def _texts(pairs: Sequence[PreferencePair]) -> tuple[list[str], list[str]]:
    return [p.prompt + p.chosen for p in pairs], [p.prompt + p.rejected for p in pairs]


def _units(pairs: Sequence[PreferencePair]) -> list[list[int]]:
    """Indices of ``pairs`` by unit: one unit per group (first appearance first), one per ungrouped pair."""
    groups: dict[str, list[int]] = {}
    units: list[list[int]] = []
    for i, pair in enumerate(pairs):
        if pair.group is None:
            units.append([i])
        elif pair.group in groups:
            groups[pair.group].append(i)
        else:
            groups[pair.group] = [i]
            units.append(groups[pair.group])
    return units


def _batch(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pad_id: int, max_length: int | None, device: Any
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Right-padded ids and mask of ``texts``, each cut to ``max_length`` tokens as the tokenizer cuts them;
    also the indices of the texts that were cut."""
    rows = tokenizer(list(texts))["input_ids"]
    cut = [i for i, row in enumerate(rows) if max_length is not None and len(row) > max_length]
    if cut:  # rare: only these are tokenised again, with the tokenizer's own truncation
        shortened = tokenizer([texts[i] for i in cut], truncation=True, max_length=max_length)["input_ids"]
        for i, row in zip(cut, shortened, strict=True):
            rows[i] = row
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, cut


def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    max_length: int | None = None,
) -> np.ndarray:
    """The reward model's scalar for each text (float64, in the model's own scale), scored exactly as the
    environment scores it: through :class:`textenv.ClassifierReward`."""
    reward = ClassifierReward(model, tokenizer, batch_size=batch_size, max_length=max_length)
    return np.asarray(reward.score([""] * len(texts), list(texts)), dtype=np.float64)


def pairwise_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    max_length: int | None = None,
) -> float:
    """Share of pairs where the model scores ``chosen`` above ``rejected``."""
    chosen, rejected = _texts(pairs)
    scores = score_texts(model, tokenizer, chosen + rejected, max_length=max_length)
    return float(np.mean(scores[: len(pairs)] > scores[len(pairs) :]))


def _pad_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (model.config.pad_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad nor an EOS token and the model config no pad_token_id")


def _load_base(base: Any, trust_remote_code: bool) -> PreTrainedModel:
    if isinstance(base, PreTrainedModel):
        if not type(base).__name__.endswith("ForSequenceClassification") or base.config.num_labels != 1:
            raise TypeError(
                f"a model object as base must be a sequence classifier with num_labels=1, got "
                f"{type(base).__name__} with num_labels={base.config.num_labels}; pass a causal LM by path"
            )
        return base
    if isinstance(base, str | os.PathLike):
        # a causal LM checkpoint gets a new scalar head on its trunk, on purpose: no report of it
        with quiet_loading():
            return AutoModelForSequenceClassification.from_pretrained(
                os.fspath(base), num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code
            )
    raise TypeError(f"base must be a model, a local directory or a hub name; got {type(base).__name__}")


def train_reward_model(
    pairs: Sequence[PreferencePair] | str | os.PathLike[str],
    base: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
    *,
    config: RewardTrainingConfig | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    trust_remote_code: bool = False,
) -> RewardTrainingResult:
    """Fit a scalar reward model to preference pairs with the pairwise loss ``-log σ(s_c - s_r)``.

    Args:
        pairs: the training comparisons, or a JSON Lines file of them. Pairs with the same ``group`` are
            batched together and held out together; each distinct text of a batch is read once.
        base: the model to start from (object, local directory or hub name); a causal LM gets a new
            scalar head, initialised from ``config.seed``.
        tokenizer: the base's tokenizer; by default loaded from where ``base`` came from.
        config: training settings (:class:`RewardTrainingConfig`).
        eval_pairs: held-out comparisons; by default ``config.eval_fraction`` of ``pairs`` is held out.
        device: where to train (default: where the model is; CPU for a loaded one).
        progress: show a progress bar.

    Returns:
        The trained model (in eval mode, ``config.pad_token_id`` set so it scores padded batches), its
        tokenizer, metrics (``train/loss``, ``train/accuracy`` over the last 10% of steps,
        ``eval/loss``, ``eval/accuracy``, sizes and seconds) and the held-out pairs. With nothing held out
        (``eval_fraction=0``, or one comparison group, which warns) the ``eval/`` figures are NaN.
    """
    config = config or RewardTrainingConfig()
    start = time.perf_counter()
    data = load_preference_pairs(pairs) if isinstance(pairs, str | os.PathLike) else list(pairs)
    if not data:
        raise ValueError("no preference pairs to train on")
    for name, given in (("pairs", data), ("eval_pairs", eval_pairs or [])):
        for i, pair in enumerate(given):
            check_pair(pair, pair.source or f"{name}[{i}]")
    rng = np.random.default_rng(config.seed)
    if eval_pairs is None:
        units = _units(data)
        order = rng.permutation(len(units))
        held = round(config.eval_fraction * len(units))
        if config.eval_fraction > 0 and len(units) > 1:
            held = max(1, held)  # a few groups still get a held-out one
        elif config.eval_fraction > 0:
            warnings.warn(
                "the pairs form a single comparison group, so none can be held out: eval/loss and "
                "eval/accuracy are NaN; give more groups or eval_pairs= to measure held-out accuracy",
                stacklevel=2,
            )
        eval_pairs = [data[i] for u in order[:held] for i in units[u]]
        data = [data[i] for u in order[held:] for i in units[u]]
        if not data:
            raise ValueError(f"eval_fraction={config.eval_fraction} leaves no training pairs")
    eval_pairs = list(eval_pairs)
    units = _units(data)

    torch.manual_seed(config.seed)  # the new head's initialisation
    model = _load_base(base, trust_remote_code)
    if tokenizer is None:
        source = base if isinstance(base, str | os.PathLike) else model.config._name_or_path
        if not source:
            raise ValueError("pass the base model's tokenizer with tokenizer=...")
        tokenizer = source
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    pad = _pad_id(model, tok)
    model.config.pad_token_id = pad  # decoder classifiers find each text's last token through it
    # what the model reads of each text: as ClassifierReward reads it when the env scores
    limit = position_limit(model, tok)
    max_length = config.max_length if limit is None else min(config.max_length or limit, limit)
    cut_texts: dict[str, str] = {}  # texts longer than the model reads -> where the first came from
    if device is not None:
        torch.nn.Module.to(model, device)
    device = model_device(model)

    units_per_step = math.ceil(config.batch_size / (len(data) / len(units)))  # whole units per step
    steps_per_epoch = math.ceil(len(units) / units_per_step)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="reward model", unit="step")
    losses: list[float] = []
    accuracies: list[float] = []
    model.train()
    order = np.array([], dtype=np.int64)
    for step in range(total):
        index: list[int] = []
        while len(index) < config.batch_size:  # whole units (groups, or single pairs) up to the batch size
            if order.size == 0:
                order = rng.permutation(len(units))
            index.extend(units[int(order[0])])
            order = order[1:]
        chosen, rejected = _texts([data[i] for i in index])
        texts, inverse = np.unique(np.array(chosen + rejected, dtype=object), return_inverse=True)
        batch, cut = _batch(tok, [str(t) for t in texts], pad, max_length, device)
        for j in cut:
            k = int(np.flatnonzero(inverse.reshape(-1) == j)[0]) % len(index)  # a pair that has this text
            cut_texts.setdefault(str(texts[j]), data[index[k]].source or f"pairs[{index[k]}]")
        scores = model(**batch).logits[:, 0][
            torch.from_numpy(inverse.reshape(-1))
        ]  # (2B,), each text read once
        margin = scores[: len(index)] - scores[len(index) :]
        loss = -F.logsigmoid(margin).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        accuracies.append((margin > 0).float().mean().item())
        if bar is not None:
            bar.update()
            if step % 10 == 0 or step == total - 1:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(accuracies[-20:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    if cut_texts and config.max_length is None:
        warnings.warn(
            f"{len(cut_texts)} preference text(s) are longer than the {limit} tokens the reward model reads, "
            f"the first at {next(iter(cut_texts.values()))}; they were cut to {limit} tokens, as the env "
            "cuts what it scores (set max_length to choose the cut)",
            stacklevel=2,
        )

    tail = max(1, total // 10)
    metrics: dict[str, float] = {
        "train/loss": float(np.mean(losses[-tail:])),
        "train/accuracy": float(np.mean(accuracies[-tail:])),
        "train/pairs": float(len(data)),
        "train/groups": float(len(units)),
        "train/steps": float(total),
    }
    metrics.update({"eval/loss": math.nan, "eval/accuracy": math.nan, "eval/pairs": 0.0})
    if eval_pairs:
        chosen, rejected = _texts(eval_pairs)
        scores_np = score_texts(model, tok, chosen + rejected, max_length=max_length)
        margin_np = scores_np[: len(eval_pairs)] - scores_np[len(eval_pairs) :]
        metrics["eval/loss"] = float(np.mean(np.logaddexp(0.0, -margin_np)))
        metrics["eval/accuracy"] = float(np.mean(margin_np > 0))
        metrics["eval/pairs"] = float(len(eval_pairs))
    metrics["seconds"] = time.perf_counter() - start
    return RewardTrainingResult(model, tok, metrics, eval_pairs)


def save_reward_model(
    result: RewardTrainingResult, directory: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Save weights (safetensors), config and tokenizer: a directory the environment loads by path.

    The folder is written under a temporary name, listed in ``manifest.json``, flushed and renamed into
    place (replacing an earlier reward model there): a save killed half-way leaves no folder that loads
    as a finished model. ``metadata`` is written as ``training_metrics.json`` inside it.
    """
    path = Path(directory)
    with atomic_folder(path, marker="config.json") as tmp, quiet_loading():
        result.model.save_pretrained(tmp)
        result.tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "training_metrics.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="textenv-train-rm",
        description="Train a reward model on pairwise preferences (JSON Lines of prompt/chosen/rejected): "
        "a transformer with a scalar head, or with --linear the linear model r = w'phi(x, y) on a frozen "
        "encoder's features.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "pairs", help="JSON Lines file of {'prompt', 'chosen', 'rejected'} records, optionally with 'group'"
    )
    parser.add_argument(
        "--base",
        default=None,
        help="model to start from (with --linear: the frozen encoder): local directory or hub name; "
        "required without --linear, the task's policy with it",
    )
    parser.add_argument("--out", required=True, help="directory to save the reward model in")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the base's)")
    parser.add_argument("--eval-pairs", default=None, help="held-out JSON Lines file (default: a split)")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    linear = parser.add_argument_group("the linear reward model (--linear)")
    linear.add_argument(
        "--linear", action="store_true", help="fit r = w'phi(x, y) by logistic regression (Bradley-Terry)"
    )
    linear.add_argument("--task", default="reviews", help="with --linear and no --base: whose policy encodes")
    linear.add_argument(
        "--layers",
        choices=["all", "last"],
        default="all",
        help="phi: mean of every layer's states, or the last's",
    )
    linear.add_argument(
        "--C", type=float, default=None, help="inverse L2 strength (default: cross-validated)"
    )
    for f in fields(RewardTrainingConfig):
        kind = float if str(f.type).startswith("float") else int
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f.metadata.get("help")
        )
    args = parser.parse_args(argv)
    config = RewardTrainingConfig(**{f.name: getattr(args, f.name) for f in fields(RewardTrainingConfig)})
    eval_pairs = load_preference_pairs(args.eval_pairs) if args.eval_pairs else None
    metrics: dict[str, float]
    if args.linear:
        from textenv import tasks
        from textenv.linear_reward import Encoder, fit_linear_reward

        try:
            base = args.base or os.fspath(tasks.load(args.task).assets / "policy")
        except ValueError as error:
            parser.error(str(error))
        encoder = Encoder(base, args.tokenizer, layers=args.layers, device=args.device)
        fitted = fit_linear_reward(
            args.pairs,
            encoder,
            C=args.C,
            eval_pairs=eval_pairs,
            eval_fraction=config.eval_fraction,
            seed=config.seed,
        )
        path = fitted.model.save(args.out)
        metrics = fitted.metrics
    else:
        if args.base is None:
            parser.error("--base is required (the model to start from), unless --linear")
        result = train_reward_model(
            args.pairs,
            args.base,
            args.tokenizer,
            config=config,
            eval_pairs=eval_pairs,
            device=args.device,
            progress=True,
        )
        path = save_reward_model(result, args.out, {"config": asdict(config), "metrics": result.metrics})
        metrics = result.metrics
    for name, value in metrics.items():
        print(f"{name:<16} {value:.4g}")
    print(f"saved to {path}")


if __name__ == "__main__":
    main()
