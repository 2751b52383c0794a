"""The arithmetic every agent shares: masked statistics, GAE, and top-k / top-p sampling.

Token tensors are (B, T): B episodes, T = ``max_new_tokens`` columns, response token t in column t;
``mask`` is 1 on the tokens an episode really generated and 0 after it ended.
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is 1 (over all of them, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected by default, as whitening in trl does)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            var = var * count / (count - 1)
    return var


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    moments: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Scale ``values`` to unit variance over the masked entries (and zero mean with ``shift_mean``).

    ``moments``: the ``(mean, variance)`` to use instead of those of ``values`` (a data-parallel run passes
    those of the global batch). Entries outside the mask are returned as 0, so that they can never leak into
    a loss.
    """
    if moments is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        mean, var = torch.tensor(moments[0]).to(values), torch.tensor(moments[1]).to(values)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over finished episodes.

    ``rewards``, ``values``, ``mask``: (B, T). Every episode has ended by its last masked token, so the
    value after it is 0 (no bootstrap). Returns ``(advantages, returns)``, both (B, T) and 0 off the mask;
    ``returns = advantages + values`` are the value targets.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * mask[:, t]  # columns past the end contribute nothing
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def clipped_surrogate(
    advantages: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """PPO's clipped policy loss (Schulman et al., 2017): the masked mean of
    ``max(-A * r, -A * clip(r, 1 - c, 1 + c))`` over tokens; ``advantages`` and ``ratio`` (B, T)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return masked_mean(torch.max(unclipped, clipped), mask)


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance, always non-negative estimate of a KL from a log-ratio, per entry:
    ``exp(x) - x - 1`` with ``x = log q(a) - log p(a)`` for ``a ~ p`` estimates ``KL(p || q)``."""
    return log_ratio.exp() - log_ratio - 1


def group_advantages(
    returns: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantages for returns (B,) of consecutive groups of ``group_size`` answers to one prompt:
    each return minus its group's mean, divided by the group's standard deviation (``scale``; Bessel-
    corrected, as in trl) plus ``eps``. A group whose answers all scored alike gets 0. Returns (B,)."""
    grouped = returns.view(-1, group_size)  # (B / k, k)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def minibatches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``order`` (B,) cut into consecutive minibatches of ``size`` episodes (the last one smaller when
    ``size`` does not divide B): every episode lands in exactly one."""
    if size < 1:
        raise ValueError(f"a minibatch needs at least one episode, got size {size}")
    return list(order.split(size))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distributions given by ``logits`` (..., V) -> (...)."""
    logprobs = logits.log_softmax(-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and the smallest set whose probability reaches ``top_p``.

    ``logits`` (B, V); the others get ``-inf``. ``top_k=0`` and ``top_p=1`` keep everything. The most
    likely token always survives, so a row never becomes empty.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (B, V), unnormalised rows allowed: the inverse of each row's CDF at a
    uniform number. Much faster than ``torch.multinomial`` on CPU for vocabulary-sized rows (measured:
    0.05 ms against 1.7 ms for 128 rows of 786, 2 threads)."""
    cdf = probs.float().cumsum(-1)  # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first token whose CDF passes u
    return index.clamp_(max=probs.shape[-1] - 1)


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): greedy at ``temperature=0``, else sampled at ``temperature``
    from the top-k / top-p filtered distribution. Returns (B,) int64."""
    if temperature == 0:
        return logits.argmax(-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return categorical(probs, generator)


def log_mixture(logprobs: torch.Tensor, explore_probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``log((1 - eps) * exp(logprobs) + eps * explore_probs)``, computed stably (any shape): the log-prob
    of a token under the epsilon-greedy behaviour policy ``mu = (1 - eps) * pi + eps * U``."""
    if epsilon <= 0:
        return logprobs
    explore = torch.log(epsilon * explore_probs.to(logprobs.dtype))  # -inf where U(a) = 0
    return torch.logaddexp(logprobs + math.log1p(-epsilon), explore)
