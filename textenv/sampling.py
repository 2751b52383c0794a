"""Batched sampling of responses from a causal LM, with a KV cache, outside any environment.

Used to build and evaluate the default task (samples of the reference, preference pairs) and handy for
looking at what a policy writes. Responses follow the environment's rules: a response ends at EOS (not
included in the text) or after ``max_new_tokens`` tokens, and is decoded without special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.models import evaluating, model_device
from textenv.scoring import IncrementalLogprobs


@torch.no_grad()
def sample_tokens_kv(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a response to each left-padded prompt of ``input_ids``/``attention_mask`` (B, P).

    One batched forward pass per token through the KV cache of :class:`textenv.scoring.IncrementalLogprobs`
    (the cache the env's per-token KL and the agents' rollouts use). Ancestral sampling at ``temperature``
    (0: greedy). Returns ``tokens`` (B, max_new_tokens), ``pad_token_id`` after a response's end, and the
    ``lengths`` (B,) of the responses without their EOS.
    """
    batch, width = input_ids.shape
    device = input_ids.device
    cache = IncrementalLogprobs(
        model, batch, width, max_new_tokens, temperature if temperature > 0 else 1.0, pad_token_id
    )
    cache.prefill(torch.arange(batch, device=device), input_ids, attention_mask)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    check_every = host_check_every(device)
    for t in range(max_new_tokens):
        logprobs = cache.next_logprobs  # (B, V) at the temperature
        if temperature == 0:
            token = logprobs.argmax(-1)
        else:
            token = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        tokens[:, t] = token
        if eos_token_id is not None:
            ended = ~done & (token == eos_token_id)
            lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
            done |= ended
        if t == max_new_tokens - 1 or ((t + 1) % check_every == 0 and bool(done.all())):
            break
        cache.advance_where(~done, token)  # a finished row gets a masked column: nothing leaves the device
    return tokens, lengths


def host_check_every(device: torch.device) -> int:
    """Every how many tokens a sampler asks the host whether all responses have ended: every token on a
    CPU (where it costs nothing), every 8 on an accelerator (a synchronisation each time; the steps drawn
    past the last end change nothing but the time)."""
    return 1 if device.type == "cpu" else 8


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> list[str]:
    """One sampled response per prompt (ancestral sampling at ``temperature``; 0 means greedy).

    Prompts are left-padded into batches of ``batch_size``; ``generator`` (on the model's device) makes
    the draw reproducible.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    device = model_device(model)
    responses: list[str] = []
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            encoded = tokenizer(list(prompts[start : start + batch_size]))["input_ids"]
            width = max(len(ids) for ids in encoded)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)  # (B, P)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
            tokens, lengths = sample_tokens_kv(
                model,
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_token_id=eos,
                pad_token_id=pad,
                generator=generator,
            )
            rows = [tokens[i, : int(lengths[i])].tolist() for i in range(len(encoded))]
            responses += [str(text) for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    return responses
