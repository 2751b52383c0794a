"""The agents' arithmetic against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agents.core import (
    categorical,
    clipped_surrogate,
    filter_logits,
    gae,
    group_advantages,
    k3,
    log_mixture,
    masked_mean,
    masked_var,
    masked_whiten,
)
from agents.reinforce import leave_one_out_baseline


def test_gae_hand_computed():
    # one episode of 3 tokens (a 4th column is padding), gamma = 0.9, lambda = 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.4  # the value after the last token is 0: the episode ended
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    expected = torch.tensor([[a0, a1, a2, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values * mask)


def test_gae_gamma_one_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    values = torch.tensor([[1.0, 0.5, -1.0], [0.25, 0.75, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.5, 3.0], [2.75, 2.25, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[2.0, 2.0, 2.0], [3.0, 3.0, 0.0]]))


def test_masked_statistics_and_whitening():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert float(masked_mean(values, mask)) == pytest.approx(2.5)
    assert float(masked_var(values, mask)) == pytest.approx(5 / 3)  # Bessel: sum of squares 5 over 3
    assert float(masked_var(values, mask, unbiased=False)) == pytest.approx(1.25)
    whitened = masked_whiten(values, mask)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(5 / 3)
    torch.testing.assert_close(whitened[mask.bool()], expected, rtol=1e-5, atol=1e-6)
    assert whitened[~mask.bool()].eq(0).all()  # padding never leaks into a loss
    shifted = masked_whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(shifted[mask.bool()], expected + 2.5, rtol=1e-5, atol=1e-6)


def test_log_mixture_hand_computed():
    # pi(a) = 0.3, U(a) = 1/10 (uniform over 10 tokens), eps = 0.2: mu(a) = 0.8 * 0.3 + 0.2 * 0.1 = 0.26
    logprobs = torch.tensor([math.log(0.3)])
    assert float(log_mixture(logprobs, torch.tensor([0.1]), 0.2)) == pytest.approx(math.log(0.26))
    # a token outside the reference's top-k: U(a) = 0, mu(a) = 0.8 * 0.3
    assert float(log_mixture(logprobs, torch.tensor([0.0]), 0.2)) == pytest.approx(math.log(0.24))
    assert float(log_mixture(logprobs, torch.tensor([0.1]), 0.0)) == pytest.approx(math.log(0.3))
    # the gradient with respect to log pi is (1 - eps) pi / mu, finite even where U(a) = 0
    x = logprobs.clone().requires_grad_(True)
    log_mixture(x, torch.tensor([0.0]), 0.2).backward()
    assert x.grad is not None and float(x.grad) == pytest.approx(1.0)


def test_leave_one_out_baseline():
    returns = torch.tensor([1.0, 2.0, 6.0, 10.0, 20.0, 30.0])
    torch.testing.assert_close(
        leave_one_out_baseline(returns, 3), torch.tensor([4.0, 3.5, 1.5, 25.0, 20.0, 15.0])
    )


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.25, 0.1]]))
    assert filter_logits(logits, top_k=2).isfinite().tolist() == [[False, True, True, False]]
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[False, True, False, False]]
    assert filter_logits(logits, top_p=0.6).isfinite().tolist() == [[False, True, True, False]]
    assert filter_logits(logits, top_p=0.8).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, top_p=0.95).isfinite().tolist() == [[True, True, True, True]]
    torch.testing.assert_close(filter_logits(logits), logits)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)


def test_categorical_draws_from_the_given_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0]])  # the second row unnormalised
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([categorical(probs, generator) for _ in range(20_000)])  # (n, 2)
    frequencies = torch.bincount(draws[:, 0], minlength=4).float() / len(draws)
    torch.testing.assert_close(frequencies, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.015, rtol=0)
    assert draws[:, 1].eq(3).all()  # zero-probability tokens are never drawn
    again = torch.stack([categorical(probs, torch.Generator().manual_seed(0)) for _ in range(1)])
    assert torch.equal(again[0], draws[0])  # the generator makes it reproducible


def test_group_advantages_hand_computed():
    returns = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # groups of 3: [1, 3, 2], [2, 0, 4]
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0, -2.0, 2.0])
    torch.testing.assert_close(group_advantages(returns, 3, scale=False), centred)
    stds = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])  # Bessel-corrected: sqrt(2 / 2), sqrt(8 / 2)
    torch.testing.assert_close(group_advantages(returns, 3), centred / (stds + 1e-4))
    assert group_advantages(torch.full((4,), 7.0), 2).abs().max() == 0  # flat groups: no signal


def test_clipped_surrogate_hand_computed():
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # positive A: min(r, 1.2) r -> 1.2 and 0.5; negative A: max(r, 0.8) -> 1.5 and 0.8
    expected = (-1.2 - 0.5 + 1.5 + 0.8) / 4
    torch.testing.assert_close(clipped_surrogate(advantages, ratio, mask, 0.2), torch.tensor(expected))


def test_k3_is_the_kl_in_expectation():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.5, 0.25, 0.25])
    exact = (p * (p / q).log()).sum()
    expected_k3 = (p * k3((q / p).log())).sum()  # E_p[k3(log q - log p)] = KL(p || q)
    torch.testing.assert_close(expected_k3, exact)
    assert (k3(torch.linspace(-3, 3, 13)) >= 0).all()
