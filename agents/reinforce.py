"""REINFORCE with a baseline (Williams, 1992): the policy-gradient baseline the other agents are
measured against.

Every token of an episode gets the episode's advantage ``A = G - b``, where ``G`` is the episode's return
(the env's ``score - beta * KL``; gamma = 1) and ``b`` is

- ``"leave_one_out"`` (the default, as in RLOO, Ahmadian et al., 2024): each prompt is answered
  ``group_size`` times in one rollout (the env's ``reset(options={"group_size": k})``), and an episode's
  baseline is the mean return of the *other* ``k - 1`` answers, which keeps the gradient unbiased;
- ``"moving_average"``: an exponential moving average of past batches' mean return.

The loss is ``-mean_tokens(A * log pi(a_t|s_t))`` (minus an optional entropy bonus), one gradient step per
rollout: REINFORCE is on-policy, so a rollout cannot be reused as PPO's clipped epochs reuse it. No value
function is learnt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.base import Agent, AgentConfig, option, register_agent
from agents.core import masked_mean
from agents.rollout import Rollout

BASELINES = ("leave_one_out", "moving_average")


@dataclass
class REINFORCEConfig(AgentConfig):
    """Settings of :class:`REINFORCE`."""

    learning_rate: float = option(5e-4, "Adam step size (one step per rollout, so larger than PPO's)")

    baseline: str = option("leave_one_out", "'leave_one_out' (over group_size answers) or 'moving_average'")
    group_size: int = option(4, "answers per prompt in a rollout (leave_one_out needs >= 2)")
    baseline_decay: float = option(0.9, "moving_average: b <- decay * b + (1 - decay) * batch mean return")
    normalize_advantages: bool = option(True, "divide the advantages by their standard deviation")


def leave_one_out_baseline(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """For returns (B,) of consecutive groups of ``group_size`` answers to one prompt: each one's
    baseline is the mean of the others in its group. Returns (B,)."""
    grouped = returns.view(-1, group_size)  # (B / k, k)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return others.reshape(-1)


@register_agent
class REINFORCE(Agent):
    """REINFORCE with a leave-one-out or moving-average baseline; ``REINFORCE(env, seed=0, **config)``."""

    Config = REINFORCEConfig
    config: REINFORCEConfig

    def __init__(self, env: Any, seed: int = 0, **config: Any):
        super().__init__(env, seed=seed, **config)
        c = self.config
        if c.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {c.baseline!r}")
        if c.baseline == "leave_one_out" and c.group_size < 2:
            raise ValueError("the leave_one_out baseline needs group_size >= 2")
        if self.constants.num_envs % self.group_size():
            raise ValueError(
                f"group_size={c.group_size} must divide the number of sub-envs ({self.constants.num_envs})"
            )
        self.moving_baseline: float | None = None

    def group_size(self) -> int:
        return self.config.group_size if self.config.baseline == "leave_one_out" else 1

    def update(self, rollout: Rollout) -> dict[str, float]:
        c = self.config
        dev = self.device
        rollout = rollout.trimmed()
        mask = rollout.response_mask.to(dev)
        returns = rollout.rewards.sum(-1).to(dev)  # (B,)
        if c.baseline == "leave_one_out":
            baseline = leave_one_out_baseline(returns, c.group_size)
        else:
            mean = float(returns.mean())
            b = mean if self.moving_baseline is None else self.moving_baseline
            baseline = torch.full_like(returns, b)
            self.moving_baseline = c.baseline_decay * b + (1 - c.baseline_decay) * mean
        advantages = returns - baseline
        if c.normalize_advantages:
            advantages = advantages / (advantages.std() + 1e-8)

        self.model.policy.eval()  # no dropout, as in the rollout
        logprobs, _, entropy = self.model.evaluate(
            rollout.input_ids.to(dev),
            rollout.attention_mask.to(dev),
            self.constants.prompt_width,
            self.constants.temperature,
        )
        pg_loss = -masked_mean(advantages[:, None] * logprobs, mask)
        mean_entropy = masked_mean(entropy, mask)
        loss = pg_loss - c.ent_coef * mean_entropy
        grad_norm = self.optimizer_step(loss)
        with torch.no_grad():
            return {
                "objective/entropy": float((entropy * mask).sum(-1).mean()),
                "policy/entropy": float(mean_entropy),
                "loss/policy": float(pg_loss),
                "loss/total": float(loss),
                "val/baseline": float(baseline.mean()),
                "val/advantage_std": float((returns - baseline).std()),
                "charts/grad_norm": grad_norm,
                "charts/learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            }

    def extra_state(self) -> dict[str, Any]:
        return {"moving_baseline": self.moving_baseline}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.moving_baseline = state.get("moving_baseline")
