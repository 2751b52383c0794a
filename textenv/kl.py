"""KL estimators and the KL-coefficient controller.

The per-sequence KL is ``sum_t k(logprob_t, ref_logprob_t)`` over response tokens, in nats, with ``k``
one of Schulman's estimators of ``KL(pi || pi_ref)`` from samples of ``pi``:

- ``k1 = lp - lr``: unbiased, can be negative on a single sample.
- ``k2 = (lp - lr)**2 / 2``: biased, low variance, never negative.
- ``k3 = exp(lr - lp) - 1 - (lr - lp)``: unbiased and never negative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textenv.config import check_float

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": k1, "k2": k2, "k3": k3}


def get_estimator(name: str) -> KLEstimator:
    """Return the per-token estimator called ``name`` (``"k1"``, ``"k2"`` or ``"k3"``)."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {name!r}") from None


class AdaptiveKLController:
    """The KL coefficient beta: fixed, or adapted toward a KL target (Ziegler et al., 2019).

    After a batch of ``n`` finished episodes whose mean per-sequence KL is ``kl``::

        beta <- beta * (1 + clip((kl - target) / target, -0.2, 0.2) * n / horizon)

    so beta grows while the policy drifts past the target and shrinks while it stays below it, by at most
    20% per ``horizon`` episodes. ``target=None`` keeps beta fixed.
    """

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: float = 10_000):
        self.value: float = check_float("kl_coef", init_kl_coef, minimum=0.0)  # type: ignore[assignment]
        self.target = check_float("kl_target", target, above=0.0, optional=True)
        self.horizon: float = check_float("kl_horizon", horizon, above=0.0)  # type: ignore[assignment]

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, current_kl: float, n_episodes: int) -> float:
        """Move beta after ``n_episodes`` episodes of mean KL ``current_kl``; return the new beta."""
        if self.target is not None and n_episodes > 0:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value:.6g}, target={self.target}, horizon={self.horizon:g})"
