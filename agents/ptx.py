"""Pretraining text for PPO-ptx (Ouyang et al., 2022): the language-model loss that PPO's loss is mixed with.

InstructGPT adds ``γ · E_pretrain[log π(x)]`` to PPO's objective so that the policy keeps the abilities of
its pretraining while it learns the reward (the "alignment tax"). Here the pretraining text is the task's
own corpus (the distribution the shipped policy was pretrained on) or a text file; :class:`PretrainingText`
tokenises it once and hands out random minibatches; :func:`lm_loss` is the mean next-token loss over their
tokens; :func:`perplexity` measures a policy on held-out text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv import tasks
from textenv.models import evaluating


def read_text_file(path: str | os.PathLike[str]) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one text each.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file has no text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pretraining text file {path}")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text (one text per non-empty line)")
    return texts


def pretraining_texts(source: str, task: str | None, n: int) -> list[str]:
    """The texts of a ``ptx_source``: ``"task"`` draws ``n`` from the task's corpus (the build's seed: the
    text the shipped policy was pretrained on); anything else is a text file, one text per line (all of
    them).

    Raises:
        ValueError: ``"task"`` with an env that plays no task, or a task without a corpus.
    """
    if source != "task":
        return read_text_file(source)
    if task is None:
        raise ValueError(
            "ptx_source='task' needs an env that plays a task of textenv.tasks (its corpus is the "
            "pretraining text); this env plays none: give ptx_source a text file, one text per line"
        )
    return tasks.load(task).pretraining_texts(n)


class PretrainingText:
    """Tokenised texts (each followed by EOS, as pretraining saw them, cut to ``max_length`` tokens) and
    random minibatches of them."""

    def __init__(self, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int):
        if not texts:
            raise ValueError("no pretraining texts")
        eos = tokenizer.eos_token_id
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0))
        rows = tokenizer(list(texts))["input_ids"]
        self.rows = [
            torch.tensor(([*row, eos] if eos is not None else list(row))[:max_length], dtype=torch.long)
            for row in rows
        ]
        self.rows = [row for row in self.rows if len(row) >= 2]  # one token predicts nothing
        if not self.rows:
            raise ValueError("every pretraining text is shorter than two tokens")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: Sequence[int], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` (B, L) of the texts at ``index``."""
        chosen = [self.rows[int(i)] for i in index]
        width = max(len(row) for row in chosen)
        ids = torch.full((len(chosen), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for i, row in enumerate(chosen):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids.to(device), mask.to(device)

    def sample(self, size: int, generator: torch.Generator, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` texts drawn uniformly with replacement (with ``generator``, so a run stays exact)."""
        index = torch.randint(len(self.rows), (size,), generator=generator, device=generator.device)
        return self.batch(index.tolist(), device)


def lm_loss(policy: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of right-padded texts; pads are not predicted."""
    logits = policy(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def perplexity(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    max_length: int | None = None,
) -> float:
    """``exp`` of the mean next-token loss per token over ``texts`` (each followed by EOS)."""
    limit = max_length or int(getattr(policy.config, "n_positions", 0) or 1024)
    data = PretrainingText(texts, tokenizer, limit)
    device = next(policy.parameters()).device
    total, count = 0.0, 0
    with evaluating(policy):
        for start in range(0, len(data), batch_size):
            ids, mask = data.batch(range(start, min(start + batch_size, len(data))), device)
            tokens = int(mask[:, 1:].sum())
            total += float(lm_loss(policy, ids, mask)) * tokens
            count += tokens
    return math.exp(total / count)
