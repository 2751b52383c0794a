"""Group Relative Policy Optimisation (Shao et al., 2024): PPO's clipped ratio without a value function.

Each prompt of a rollout is answered ``group_size`` times (the env's ``reset(options={"group_size": k})``)
and every token of an answer gets that answer's advantage relative to its group:
``A = (R - mean_group(R)) / (std_group(R) + 1e-4)`` (``scale_rewards=False`` leaves out the division, as
Dr. GRPO does; Liu et al., 2025). The loss is PPO's clipped surrogate averaged over the tokens of a
minibatch of ``minibatch_size`` episodes, one gradient step each, ``num_epochs`` passes over the shuffled
rollout; the ratio is against the log-probs the rollout recorded when it drew the tokens.

Where the KL to the reference enters is a setting, ``kl_in``:

- ``"reward"`` (the default): ``R`` is the env's return, ``score - beta * KL`` with the env's exact
  per-sequence KL (k1 of the tokens drawn, as it charges every agent), so GRPO maximises the same objective
  as PPO and REINFORCE and the env's adaptive controller steers beta as it does for them. The KL's
  gradient then comes through the score-function estimator, which is unbiased for the sequence's KL.
- ``"loss"`` (DeepSeekMath's form): ``R`` is the reward model's score alone, and ``beta`` times the
  per-token k3 estimate of KL(pi || pi_ref) is added to the loss (beta: the env's current coefficient, so
  an adaptive controller still acts). Its gradient is a lower-variance but biased estimate of the
  sequence KL's gradient (Tang & Munos, 2025), and the KL is kept out of the advantage, so a group
  whose answers score alike still gets pulled toward the reference.

``"reward"`` is the default because it keeps the objective that the env defines, and the one every other
agent of the benchmark is judged by.

The defaults (rollouts of 64 episodes, 8 prompts answered 8 times, 2 passes in minibatches of 32) are
the best of a 20-trial Optuna study on the default task, all but its learning rate: at the study's 7e-4
GRPO's gold on ``sorting`` fell below the starting policy's (0.18 after 30k tokens, from 0.22, at a KL of
7.7-7.9 nats; 2 seeds), and at 3e-4 it climbed to 0.50 (KL 2.4-2.6), while on the default task 3e-4 still
reaches gold 0.85-0.87 in 30k tokens. ``learning_rate=7e-4`` stays the setting for the default task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.base import Agent, AgentConfig, option, register_agent
from agents.core import clipped_surrogate, group_advantages, k3, masked_mean, minibatches
from agents.rollout import Rollout

KL_PLACES = ("reward", "loss")


@dataclass
class GRPOConfig(AgentConfig):
    """Settings of :class:`GRPO`.

    The defaults hold on the whole suite: a 31-trial study of every searched setting over ``sorting`` and
    ``reviews`` at once (``make tune-suite``) found none better; faster rates (its study on ``reviews``
    alone chose 7e-4) collapse on ``sorting``. The README's "Tuning for the suite" has the trials."""

    num_envs: int = option(64, "episodes per iteration: sub-envs of the vector env made from an env id")
    learning_rate: float = option(3e-4, "Adam step size")
    group_size: int = option(8, "answers per prompt in a rollout (>= 2; must divide num_envs)")
    num_epochs: int = option(2, "passes over each rollout")
    minibatch_size: int = option(
        32, "episodes per gradient step (the last minibatch of a pass may be smaller)"
    )
    clip_range: float = option(0.2, "clip of the probability ratio to [1 - c, 1 + c]")
    scale_rewards: bool = option(True, "divide advantages by their group's standard deviation")
    kl_in: str = option("reward", "'reward': the env's beta * KL in the return; 'loss': beta * k3 in loss")


@register_agent
class GRPO(Agent):
    """GRPO with the KL in the reward or in the loss; ``GRPO(env, seed=0, **GRPOConfig fields)``."""

    Config = GRPOConfig
    config: GRPOConfig

    def __init__(self, env: Any, seed: int = 0, **config: Any):
        super().__init__(env, seed=seed, **config)
        c = self.config
        if c.kl_in not in KL_PLACES:
            raise ValueError(f"kl_in must be one of {KL_PLACES}, got {c.kl_in!r}")
        if c.group_size < 2:
            raise ValueError(f"GRPO compares answers of a group: group_size must be >= 2, got {c.group_size}")
        if self.constants.num_envs % c.group_size:
            raise ValueError(
                f"group_size={c.group_size} must divide the number of sub-envs ({self.constants.num_envs})"
            )

    def group_size(self) -> int:
        return self.config.group_size

    def update(self, rollout: Rollout) -> dict[str, float]:
        c = self.config
        dev = self.device
        rollout = rollout.trimmed()
        P, temperature = self.constants.prompt_width, self.constants.temperature
        input_ids, attention_mask = rollout.input_ids.to(dev), rollout.attention_mask.to(dev)
        mask = rollout.response_mask.to(dev)
        old_logprobs = rollout.behaviour_logprobs.to(dev)
        ref_logprobs = rollout.ref_logprobs.to(dev)
        beta = float(rollout.kl_coef)
        # the return as the env paid it (score - beta * KL), or the score alone when the KL is in the loss
        returns = rollout.rewards.sum(-1) if c.kl_in == "reward" else rollout.scores.float()
        returns = returns.to(dev)
        advantages = group_advantages(returns, c.group_size, scale=c.scale_rewards)  # (B,)

        batch = rollout.num_episodes
        stats: dict[str, list[float]] = {}
        entropy_first_epoch: list[torch.Tensor] = []
        self.update_mode()  # no dropout: the ratio compares like with like
        for epoch in range(c.num_epochs):
            order = torch.randperm(batch, generator=self.generator, device=self.generator.device).to(dev)
            for index in minibatches(order, self.local_minibatch(c.minibatch_size)):
                m = mask[index]
                new_logprobs, _, entropy = self.model.evaluate(
                    input_ids[index], attention_mask[index], P, temperature
                )
                log_ratio = new_logprobs - old_logprobs[index]
                ratio = log_ratio.exp()
                pg_loss = clipped_surrogate(advantages[index, None], ratio, m, c.clip_range)
                mean_entropy = masked_mean(entropy, m)
                loss = pg_loss - c.ent_coef * mean_entropy
                kl_loss = masked_mean(k3(ref_logprobs[index] - new_logprobs), m)
                if c.kl_in == "loss":
                    loss = loss + beta * kl_loss
                loss = self.global_token_mean(loss, m)  # data-parallel: over every rank's tokens
                grad_norm = self.optimizer_step(loss)
                with torch.no_grad():
                    if epoch == 0:
                        entropy_first_epoch.append((entropy * m).sum(-1))
                    for name, value in (
                        ("policy/approxkl", masked_mean(k3(-log_ratio), m)),  # KL(old || new)
                        ("policy/clipfrac", masked_mean(((ratio - 1).abs() > c.clip_range).float(), m)),
                        ("policy/entropy", mean_entropy),
                        ("policy/ratio_mean", masked_mean(ratio, m)),
                        ("loss/policy", pg_loss),
                        ("loss/kl", kl_loss),
                        ("loss/total", loss),
                        ("charts/grad_norm", grad_norm),
                    ):
                        stats.setdefault(name, []).append(float(value))
        metrics = {name: sum(v) / len(v) for name, v in stats.items()}
        with torch.no_grad():
            grouped = returns.view(-1, c.group_size)
            metrics["objective/entropy"] = float(torch.cat(entropy_first_epoch).mean())
            metrics["val/advantage_std"] = float(advantages.std())
            metrics["val/group_return_std"] = float(grouped.std(-1).mean())
            metrics["val/flat_groups"] = float((grouped.std(-1) < 1e-6).float().mean())
        metrics["charts/learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        return metrics
