"""Epsilon-greedy PPO: PPO whose behaviour policy mixes in an exploration distribution.

Tokens are sampled from ``mu = (1 - eps) * pi + eps * U`` with ``U`` uniform over the vocabulary, or
uniform over the reference model's ``k`` most likely next tokens (``exploration="reference_top_k"``), which
explores without leaving fluent text. The PPO ratio is ``mu_new(a) / mu_old(a)``: both use log mu, the
policy that really chose the token, so the importance weights stay correct. Epsilon is constant or decays
linearly. Everything else is :class:`agents.PPO`.

The env still charges ``beta * KL`` computed from ``log pi``, on tokens drawn from mu: with eps > 0 this
KL estimate is taken off-policy (k1 can then under- or overstate the divergence of pi itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.base import option, register_agent
from agents.ppo import PPO, PPOConfig
from agents.rollout import Exploration, Rollout

EXPLORATIONS = ("uniform", "reference_top_k")


@dataclass
class EpsilonGreedyConfig(PPOConfig):
    """Settings of :class:`EpsilonGreedyPPO`: PPO's, whose defaults it keeps, plus the exploration.

    Its 20-trial study on the default task gave trial 6 (lr 1.1e-3, one pass of 8 minibatches of
    128-episode rollouts, clip 0.177, lambda 0.958, vf_coef 0.181, epsilon 0.0168), which reaches that
    task's bar in about 15k tokens where PPO's settings take 40-60k; but on ``sorting`` it collapsed within
    5k tokens on both seeds tried (gold 0, KL 12-16 nats), and trial 12 (lr 3.3e-4) stalled there at gold
    0.3. PPO's settings with epsilon 0.05 reached the bar of sorting and of verbosity on every seed of the
    suite, so they are the defaults; trial 6 is a spec for the default task (the README has the runs).
    A 31-trial study over ``sorting`` and ``reviews`` at once (``make tune-suite``) found settings (16
    minibatches of 256-episode rollouts, epsilon 0.035 over the reference's top 10) that reach the default
    task's bar in 37k tokens instead of 61k but end lower on ``sorting`` (README: "Tuning for the
    suite"), so these stay."""

    epsilon: float = option(0.05, "probability mass of the exploration distribution U in mu")
    epsilon_final: float | None = option(None, "decay epsilon linearly to this (None = constant)")
    epsilon_decay_timesteps: int = option(200_000, "timesteps over which epsilon reaches epsilon_final")
    exploration: str = option("uniform", "U: 'uniform' over the vocabulary or 'reference_top_k'")
    exploration_top_k: int = option(10, "k of 'reference_top_k'")


@register_agent
class EpsilonGreedyPPO(PPO):
    """PPO with behaviour policy ``(1 - eps) * pi + eps * U``; ``EpsilonGreedyPPO(env, seed, **config)``."""

    Config = EpsilonGreedyConfig
    config: EpsilonGreedyConfig

    def __init__(self, env: Any, seed: int = 0, **config: Any):
        super().__init__(env, seed=seed, **config)
        c = self.config
        if c.exploration not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {EXPLORATIONS}, got {c.exploration!r}")
        for name in ("epsilon", "epsilon_final"):
            value = getattr(c, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    def epsilon(self) -> float:
        """Epsilon now: constant, or linear from ``epsilon`` to ``epsilon_final`` over the decay."""
        c = self.config
        if c.epsilon_final is None:
            return c.epsilon
        progress = min(1.0, self.num_timesteps / max(c.epsilon_decay_timesteps, 1))
        return c.epsilon + (c.epsilon_final - c.epsilon) * progress

    def exploration(self) -> Exploration:
        vocab, k = self.constants.vocab_size, self.config.exploration_top_k
        if self.config.exploration == "uniform":
            return Exploration(self.epsilon(), lambda lp, ref: torch.full_like(lp, 1.0 / vocab))

        def reference_top_k(lp: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
            assert ref is not None
            top = ref.topk(min(k, vocab), dim=-1).indices  # (N, k)
            return torch.zeros_like(lp).scatter(-1, top, 1.0 / top.shape[-1])

        return Exploration(self.epsilon(), reference_top_k, needs_reference=True)

    def update(self, rollout: Rollout) -> dict[str, float]:
        metrics = super().update(rollout)
        metrics["charts/epsilon"] = rollout.epsilon
        return metrics
