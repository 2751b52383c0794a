"""Per-token log-probs of responses under a causal LM, computed without O(T^2) work.

Two ways, both batched over episodes:

- :func:`response_logprobs`: one teacher-forced pass over finished sequences (the ``terminal`` placement).
- :class:`IncrementalLogprobs`: a KV cache advanced by one token per step (the ``per_token`` placement).

Row layout (shared with the observation): the prompt is left-padded to ``prompt_width`` columns and the
response starts at column ``prompt_width``. Position ids count real tokens only, so padding never shifts a
sequence. Log-probs are those of the sampling distribution: ``log_softmax(logits / temperature)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

# Rows per chunk are chosen so that one chunk's logits stay under this many floats.
_MAX_LOGIT_ELEMENTS = 1 << 26


def position_ids(attention_mask: Any) -> Any:
    """Positions that skip padding: 0 at each row's first real token, counting real tokens only (a torch
    tensor or a numpy array, of any leading shape; the same type comes back). Left padding then never
    shifts a sequence, and padding after the last token repeats the last position, which no real token
    attends to."""
    if isinstance(attention_mask, np.ndarray):
        return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    """Whether the model can skip the logits of the prompt positions (most transformers LMs can)."""
    cls = type(model)
    if cls not in _ACCEPTS_LOGITS_TO_KEEP:
        from textenv.lora import base_forward_signature  # peft models forward **kwargs to their base

        forward = base_forward_signature(model)
        _ACCEPTS_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[cls]


def response_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    temperature: float,
) -> torch.Tensor:
    """Log-probs of the response tokens ``input_ids[:, prompt_width:]`` given everything before them.

    ``input_ids``/``attention_mask``: (B, prompt_width + T). Returns (B, T) float32; entries where the
    mask is 0 are meaningless. One forward pass (in row chunks for large vocabularies).
    """
    batch, width = input_ids.shape
    num_new = width - prompt_width
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk = max(1, _MAX_LOGIT_ELEMENTS // max(1, (num_new + 1) * vocab))
    keep = {"logits_to_keep": num_new + 1} if _accepts_logits_to_keep(model) else {}
    targets = input_ids[:, prompt_width:]  # (B, T)
    out = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        mask = attention_mask[rows]
        logits = model(
            input_ids=input_ids[rows], attention_mask=mask, position_ids=position_ids(mask), **keep
        ).logits
        # the logit at column j predicts the token at column j + 1
        logits = logits[:, -(num_new + 1) : -1].float() / temperature  # (b, T, V)
        logprobs = logits.log_softmax(-1).gather(-1, targets[rows, :, None]).squeeze(-1)  # (b, T)
        out.append(logprobs)
    return torch.cat(out) if out else torch.zeros(0, num_new)


def step_attention_mask(model: PreTrainedModel, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask to pass for a one-token step over a cache whose columns ``mask`` (N, C) marks.

    For SDPA attention (transformers' default) this is the equivalent 4D boolean mask (N, 1, 1, C), True
    where a column is attended: given a 2D mask, transformers reads its values on the host to decide
    whether it can drop it, which on a GPU is a synchronisation every token. A 4D mask is used as given.
    Other attention implementations get ``mask`` unchanged (eager attention reads nothing back), and so do
    models whose code is not transformers' own (``trust_remote_code``), which may not take a 4D mask.
    """
    from textenv.lora import base_forward_signature  # peft models: their base model's code

    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa":
        return mask
    if not str(getattr(base_forward_signature(model), "__module__", "")).startswith("transformers.models."):
        return mask
    return mask.bool()[:, None, None, :]


class IncrementalLogprobs:
    """Next-token log-probs of ``num_slots`` sequences, advanced one token per step with a KV cache.

    All slots share one cache whose columns are a timeline of steps, right-aligned: every slot's latest
    token sits in the last column. A slot that starts a new episode gets its prompt prefilled into the
    last ``prompt_width`` columns and the older columns of its row masked out, so slots reset at
    different steps (vector-env autoreset) still advance with one forward pass per step. The cache keeps
    at most ``prompt_width + max_new_tokens`` columns, which is all any live episode can see.

    With ``output_hidden=True`` it also keeps each slot's last hidden state (the final layer's, at the
    latest token) in ``next_hidden``: what a value head on the trunk reads (the agents' samplers use it).

    Works for models whose cache is a ``DynamicCache`` of full-attention layers (GPT-2, Llama, ...).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        num_slots: int,
        prompt_width: int,
        max_new_tokens: int,
        temperature: float,
        pad_token_id: int,
        output_hidden: bool = False,
    ):
        self.model = model
        self.output_hidden = output_hidden
        self.num_slots = num_slots
        self.prompt_width = prompt_width
        self.max_columns = prompt_width + max_new_tokens
        self.temperature = temperature
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(num_slots, 0, dtype=torch.long, device=self.device)  # (N, C)
        self.next_position = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.next_logprobs = torch.zeros(num_slots, 0, device=self.device)  # (N, V) after the first prefill
        self.next_hidden = torch.zeros(num_slots, 0, device=self.device)  # (N, H) with output_hidden

    def _layers(self, cache: object) -> list[DynamicLayer]:
        layers = getattr(cache, "layers", None)
        if (
            not isinstance(cache, DynamicCache)
            or not layers
            or any(type(layer) is not DynamicLayer for layer in layers)
        ):
            raise NotImplementedError(
                f"kl_placement='per_token' needs a model whose KV cache is a DynamicCache of "
                f"full-attention layers; {type(self.model).__name__} returned {type(cache).__name__}. "
                "Use kl_placement='terminal'."
            )
        return list(layers)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every key and value tensor of the cache by ``fn`` of it."""
        for layer in self._layers(self.cache):
            assert layer.keys is not None and layer.values is not None
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)

    def prefill(self, slots: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Start new episodes in ``slots`` from left-padded prompts (n, prompt_width).

        When every slot starts at once, the leading columns that are padding in every prompt are left out
        (positions come from the mask, so nothing else changes): the pass, and every later step's
        attention, cover the longest prompt rather than ``prompt_width``."""
        if len(slots) == self.num_slots:
            lead = int((attention_mask == 0).all(dim=0).long().cumprod(0).sum())
            lead = min(lead, attention_mask.shape[1] - 1)
            input_ids, attention_mask = input_ids[:, lead:], attention_mask[:, lead:]
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=True,
            output_hidden_states=self.output_hidden,
        )
        logprobs = (out.logits[:, -1].float() / self.temperature).log_softmax(-1)  # (n, V)
        if self.next_logprobs.shape[-1] != logprobs.shape[-1]:
            self.next_logprobs = logprobs.new_zeros(self.num_slots, logprobs.shape[-1])
        self.next_logprobs[slots] = logprobs
        if self.output_hidden:
            hidden = out.hidden_states[-1][:, -1].float()  # (n, H)
            if self.next_hidden.shape[-1] != hidden.shape[-1]:
                self.next_hidden = hidden.new_zeros(self.num_slots, hidden.shape[-1])
            self.next_hidden[slots] = hidden
        self.next_position[slots] = attention_mask.sum(-1)
        if len(slots) == self.num_slots:
            order = torch.argsort(slots)  # slots in cache-row order
            self.cache = out.past_key_values
            self._map(lambda kv: kv[order])
            self.mask = attention_mask[order].clone()
            return
        if self.cache is None:
            raise RuntimeError("the first prefill must start every slot")
        width = self.prompt_width
        if self.mask.shape[1] < width:  # a trimmed first prefill: widen with masked columns on the left
            missing = width - self.mask.shape[1]

            def widen(kv: torch.Tensor) -> torch.Tensor:
                shape = (kv.shape[0], kv.shape[1], missing, kv.shape[3])
                return torch.cat([kv.new_zeros(shape), kv], dim=2)

            self._map(widen)
            self.mask = torch.cat([self.mask.new_zeros(self.num_slots, missing), self.mask], dim=1)
        for layer, new in zip(self._layers(self.cache), self._layers(out.past_key_values), strict=True):
            for old_kv, new_kv in ((layer.keys, new.keys), (layer.values, new.values)):
                assert old_kv is not None and new_kv is not None
                old_kv[slots, :, -width:] = new_kv  # (n, heads, P, head_dim) into the last P columns
        self.mask[slots] = 0
        self.mask[slots, -width:] = attention_mask

    def gather(self, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Log-prob of ``tokens`` (n,) as the next token of ``slots`` (n,); changes nothing."""
        assert self.cache is not None, "prefill before gather"
        return self.next_logprobs[slots, tokens]

    def advance(self, slots: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append ``tokens`` to the sequences of ``slots``; other slots get a masked column."""
        live = torch.zeros(self.num_slots, dtype=torch.bool, device=self.device)
        live[slots] = True
        every = torch.full((self.num_slots,), self.pad_token_id, dtype=torch.long, device=self.device)
        every[slots] = tokens
        self.advance_where(live, every)

    def advance_where(self, live: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append ``tokens[i]`` to slot ``i`` where ``live`` (num_slots,) is true; the other slots get a
        masked column and keep their next-token values. No index leaves the device: a sampler on a GPU
        calls this every token without waiting for the host."""
        assert self.cache is not None, "prefill before advance"
        ids = torch.where(live, tokens, self.pad_token_id)[:, None]  # (N, 1)
        self.mask = torch.cat([self.mask, live.long()[:, None]], dim=1)  # (N, C + 1)
        out = self.model(
            input_ids=ids,
            attention_mask=step_attention_mask(self.model, self.mask),
            position_ids=self.next_position[:, None],
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=self.output_hidden,
        )
        self.cache = out.past_key_values
        logprobs = (out.logits[:, -1].float() / self.temperature).log_softmax(-1)
        self.next_logprobs = torch.where(live[:, None], logprobs, self.next_logprobs)
        if self.output_hidden:
            hidden = out.hidden_states[-1][:, -1].float()
            self.next_hidden = torch.where(live[:, None], hidden, self.next_hidden)
        self.next_position += live.long()
        if self.mask.shape[1] > self.max_columns:
            self._map(lambda kv: kv[:, :, -self.max_columns :])
            self.mask = self.mask[:, -self.max_columns :]
