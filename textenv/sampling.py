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
from textenv.scoring import position_ids


@torch.no_grad()
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
            positions = position_ids(mask)
            batch = ids.shape[0]
            tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
            past = None
            for t in range(max_new_tokens):
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past)
                past = out.past_key_values
                logits = out.logits[:, -1].float()  # (B, V)
                if temperature == 0:
                    token = logits.argmax(-1)
                else:
                    probs = (logits / temperature).softmax(-1)
                    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                token = torch.where(done, torch.full_like(token, pad), token)
                tokens[:, t] = token
                if eos is not None:
                    ended = ~done & (token == eos)
                    lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
                    done |= ended
                if bool(done.all()):
                    break
                ids = token[:, None]
                mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
            rows = [tokens[i, : int(lengths[i])].tolist() for i in range(batch)]
            responses += [str(text) for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    return responses
