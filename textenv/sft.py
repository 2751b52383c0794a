"""Supervised fine-tuning (SFT) from demonstrations, the first stage of RLHF.

The data is JSON Lines, one demonstration per line::

    {"prompt": "hotel review :", "response": " the staff were friendly ."}

The loss is the next-token loss on the response's tokens only (and the EOS that ends it): the prompt is
read, not learned, as InstructGPT's SFT and trl's ``completion_only_loss`` do. Prompt and response are
tokenised apart and joined, exactly as the environment sees an episode (the prompt's tokens, then the
response's tokens one action at a time, then EOS).

The loop is transformers' ``Trainer`` (AdamW, a linear warm-up and cosine decay, gradient clipping,
device placement through accelerate) with a collator of our own that pads and masks the prompt. trl's
``SFTTrainer`` would do the same masking, but trl is an optional peer of this package and brings the
``datasets`` library; transformers is a dependency already. The result is a plain transformers causal LM
folder that ``policy=`` (and ``reference=``) accept::

    textenv-sft demos.jsonl --out my-sft-policy                     # starts from the task's policy
    textenv-sft demos.jsonl --base path/or/hub-name --out my-sft-policy
    gym.make("TextRLHF-v0", policy="my-sft-policy", reference="my-sft-policy")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.atomic import atomic_folder
from textenv.config import check_float, check_int, check_text
from textenv.models import load_causal_lm, load_tokenizer, quiet_loading


class DemonstrationError(ValueError):
    """A demonstrations file or record is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Demonstration:
    """For ``prompt``, a response worth imitating."""

    prompt: str
    response: str


def load_demonstrations(path: str | os.PathLike[str]) -> list[Demonstration]:
    """Read a JSON Lines file of ``{"prompt", "response"}`` records (blank lines are skipped).

    Raises:
        DemonstrationError: naming the file and line of the first malformed record.
    """
    demos: list[Demonstration] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            where = f"{os.fspath(path)}, line {number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DemonstrationError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("prompt", "response")
            ):
                raise DemonstrationError(f"{where}: each line needs string fields 'prompt' and 'response'")
            if not record["response"]:
                raise DemonstrationError(f"{where}: the response is empty: nothing to learn")
            try:
                check_text(record["prompt"], f"{where}: 'prompt'")
                check_text(record["response"], f"{where}: 'response'")
            except (TypeError, ValueError) as error:
                raise DemonstrationError(str(error)) from None
            demos.append(Demonstration(record["prompt"], record["response"]))
    if not demos:
        raise DemonstrationError(f"{os.fspath(path)}: no demonstrations")
    return demos


def save_demonstrations(demos: Sequence[Demonstration], path: str | os.PathLike[str]) -> None:
    """Write demonstrations as JSON Lines (the format :func:`load_demonstrations` reads)."""
    with open(path, "w", encoding="utf-8") as handle:
        for demo in demos:
            handle.write(json.dumps(asdict(demo), ensure_ascii=False) + "\n")


@dataclass
class SFTConfig:
    """Settings of :func:`train_sft` (the command line has one option per field)."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the demonstrations"})
    batch_size: int = field(default=32, metadata={"help": "demonstrations per optimiser step"})
    learning_rate: float = field(default=5e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of demonstrations held out"})
    max_length: int | None = field(default=None, metadata={"help": "cut texts to this many tokens"})
    seed: int = field(default=0, metadata={"help": "seed of the split and the batch order"})

    def __post_init__(self) -> None:
        check_float("epochs", self.epochs, above=0.0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_float("learning_rate", self.learning_rate, above=0.0)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("max_grad_norm", self.max_grad_norm, above=0.0)
        for name in ("warmup_fraction", "eval_fraction"):
            value = check_float(name, getattr(self, name), minimum=0.0)
            if value is not None and value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        check_int("max_length", self.max_length, minimum=2, optional=True)
        check_int("seed", self.seed, minimum=0)


def encode(
    demo: Demonstration, tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> dict[str, list[int]]:
    """``input_ids`` (prompt, response, EOS) and ``labels`` (-100 on the prompt: only the response is
    learned), each tokenised apart as the env tokenises them, cut to ``max_length``."""
    prompt = tokenizer(demo.prompt)["input_ids"] if demo.prompt else []
    response = tokenizer(demo.response)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [*prompt, *response, *eos]
    labels = [-100] * len(prompt) + [*response, *eos]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


class Collator:
    """Right-pads a batch of :func:`encode`'s rows: pads get label -100 and attention 0."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class SFTResult:
    """What :func:`train_sft` gives back."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    metrics: dict[str, float]
    eval_demos: list[Demonstration]


def train_sft(
    demos: Sequence[Demonstration] | str | os.PathLike[str],
    base: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
    *,
    config: SFTConfig | None = None,
    eval_demos: Sequence[Demonstration] | None = None,
    device: str | None = None,
    progress: bool = False,
) -> SFTResult:
    """Fine-tune a causal LM on demonstrations, with the loss on response tokens only.

    Args:
        demos: the demonstrations, or a JSON Lines file of them.
        base: the causal LM to start from (object, local directory or hub name); an object is trained in
            place.
        tokenizer: its tokenizer; by default loaded from where ``base`` came from.
        config: :class:`SFTConfig`.
        eval_demos: held-out demonstrations; by default ``config.eval_fraction`` of ``demos``.
        device: ``"cpu"`` keeps it on the CPU; by default the Trainer's choice (a GPU if there is one).
        progress: show the Trainer's progress bar.

    Returns:
        The model (eval mode), its tokenizer, metrics (``train/loss``, ``eval/loss`` and
        ``eval/perplexity`` on the held-out responses' tokens, before and after as ``eval/loss_before``,
        sizes, seconds) and the held-out demonstrations.
    """
    from transformers import Trainer, TrainingArguments

    config = config or SFTConfig()
    start = time.perf_counter()
    data = load_demonstrations(demos) if isinstance(demos, str | os.PathLike) else list(demos)
    if not data:
        raise ValueError("no demonstrations to train on")
    if eval_demos is None:
        order = np.random.default_rng(config.seed).permutation(len(data))
        held = (
            max(1, round(config.eval_fraction * len(data)))
            if config.eval_fraction > 0 and len(data) > 1
            else 0
        )
        eval_demos = [data[i] for i in order[:held]]
        data = [data[i] for i in order[held:]]
    eval_demos = list(eval_demos)
    if tokenizer is None:
        source = base if isinstance(base, str | os.PathLike) else base.config._name_or_path
        if not source:
            raise ValueError("pass the base model's tokenizer with tokenizer=...")
        tokenizer = source
    tok = load_tokenizer(tokenizer)
    model = load_causal_lm(base) if isinstance(base, str | os.PathLike) else base
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    max_length = min(x for x in (config.max_length, limit) if x) if (config.max_length or limit) else None
    train_rows = [encode(d, tok, max_length) for d in data]
    eval_rows = [encode(d, tok, max_length) for d in eval_demos]
    steps = max(1, math.ceil(math.ceil(len(train_rows) / config.batch_size) * config.epochs))
    with tempfile.TemporaryDirectory(prefix="textenv-sft-") as scratch:
        arguments = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=max(config.batch_size, 64),
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=int(config.warmup_fraction * steps),
            lr_scheduler_type="cosine",
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="steps" if progress else "no",
            logging_steps=max(1, steps // 20),
            report_to="none",
            disable_tqdm=not progress,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=device == "cpu",
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=train_rows,  # a list is a map-style dataset
            eval_dataset=eval_rows or None,
            data_collator=Collator(int(pad)),
        )
        if not progress:  # the Trainer prints every log as a dict when its progress bar is off
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        metrics: dict[str, float] = {"train/demonstrations": float(len(train_rows))}
        if eval_rows:
            metrics["eval/loss_before"] = float(trainer.evaluate()["eval_loss"])
        with quiet_loading():
            output = trainer.train()
        metrics["train/loss"] = float(output.training_loss)
        metrics["train/steps"] = float(output.global_step)
        metrics["eval/demonstrations"] = float(len(eval_rows))
        metrics["eval/loss"] = metrics["eval/perplexity"] = math.nan
        if eval_rows:
            metrics["eval/loss"] = float(trainer.evaluate()["eval_loss"])
            metrics["eval/perplexity"] = math.exp(metrics["eval/loss"])
    model.eval()
    metrics["seconds"] = time.perf_counter() - start
    return SFTResult(model, tok, metrics, eval_demos)


def save_sft_model(
    result: SFTResult, directory: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Save the fine-tuned policy (safetensors) and its tokenizer, atomically: a folder ``policy=`` loads."""
    path = Path(directory)
    with atomic_folder(path, marker="config.json") as tmp, quiet_loading():
        result.model.save_pretrained(tmp, safe_serialization=True)
        result.tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "training_metrics.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="textenv-sft",
        description="Supervised fine-tuning of a causal LM on demonstrations (JSON Lines of "
        "prompt/response), with the loss on the response tokens only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("demos", help="JSON Lines file of {'prompt', 'response'} records")
    parser.add_argument("--out", required=True, help="directory to save the fine-tuned policy in")
    parser.add_argument("--base", default=None, help="causal LM to start from (default: the task's policy)")
    parser.add_argument(
        "--task", default="reviews", help="whose policy to start from when --base is not given"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the base's)")
    parser.add_argument("--eval-demos", default=None, help="held-out JSON Lines file (default: a split)")
    parser.add_argument("--device", default=None, help="'cpu', 'cuda', ... (default: the Trainer's choice)")
    for f in fields(SFTConfig):
        kind = float if str(f.type).startswith("float") else int
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f.metadata.get("help")
        )
    args = parser.parse_args(argv)
    config = SFTConfig(**{f.name: getattr(args, f.name) for f in fields(SFTConfig)})
    if args.base is None:
        from textenv import tasks

        try:
            args.base = os.fspath(tasks.load(args.task).assets / "policy")
        except ValueError as error:
            parser.error(str(error))
    eval_demos = load_demonstrations(args.eval_demos) if args.eval_demos else None
    result = train_sft(
        args.demos,
        args.base,
        args.tokenizer,
        config=config,
        eval_demos=eval_demos,
        device=args.device,
        progress=True,
    )
    path = save_sft_model(
        result, args.out, {"config": asdict(config), "base": args.base, "metrics": result.metrics}
    )
    for name, value in result.metrics.items():
        print(f"{name:<22} {value:.4g}")
    print(f"saved to {path}")


if __name__ == "__main__":
    main()
