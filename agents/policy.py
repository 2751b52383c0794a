"""The LM policy with a value function: what every agent trains.

The policy is the environment's own causal LM (``env.unwrapped.policy``): the env scores the KL with it, so
the agent trains that very object, never a copy. The value function is a linear head that reads the
policy's last hidden state (``critic="shared"``, the default, zero-initialised so that it starts by
predicting 0 and leaves the policy's first gradients alone), or the same head on a separate copy of the
initial LM (``critic="separate"``: no interference between the value loss and the policy, at twice the
compute). ``critic="none"`` leaves the value function out (REINFORCE needs none).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from agents.core import entropy_from_logits
from textenv.lora import is_peft_model
from textenv.scoring import position_ids

Critic = Literal["shared", "separate", "none"]


def hidden_size(model: PreTrainedModel) -> int:
    config = model.config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__}; it has no hidden_size")


class ActorCritic(nn.Module):
    """A causal LM ``policy`` (the actor) and a value head (the critic), trained together.

    Args:
        policy: the causal LM being trained (shared with the environment, not copied).
        critic: ``"shared"`` (value head on the policy's trunk), ``"separate"`` (value head on a trainable
            copy of the policy as it is now) or ``"none"`` (no value function: ``value`` returns zeros).
    """

    def __init__(self, policy: PreTrainedModel, critic: Critic = "shared"):
        super().__init__()
        if critic not in ("shared", "separate", "none"):
            raise ValueError(f"critic must be 'shared', 'separate' or 'none', got {critic!r}")
        self.policy = policy
        self.critic = critic
        self.critic_model: PreTrainedModel | None = None
        if critic == "separate" and is_peft_model(policy):
            raise ValueError(
                "critic='separate' copies the policy, and a LoRA policy's copy would train its frozen base: "
                "use the value head on the shared trunk (critic='shared', the default) with LoRA"
            )
        if critic == "separate":
            self.critic_model = copy.deepcopy(policy)
            self.critic_model.requires_grad_(True)
        self.value_head: nn.Linear | None = None
        if critic != "none":
            self.value_head = nn.Linear(hidden_size(policy), 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            self.value_head.to(next(policy.parameters()).device)

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values of states from their last hidden states (..., H) -> (...); zeros without a critic."""
        if self.value_head is None:
            return hidden.new_zeros(hidden.shape[:-1])
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def evaluate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over prompts and responses, with gradients.

        ``input_ids``/``attention_mask``: (B, P + T), the prompt left-padded into the first ``P =
        prompt_width`` columns, the response after. Returns per response token ``t``, each (B, T):
        ``log pi(a_t|s_t)`` at ``temperature``, the value ``V(s_t)`` of the state before it, and the
        entropy of ``pi(.|s_t)``.
        """
        width = input_ids.shape[1]
        num_new = width - prompt_width
        positions = position_ids(attention_mask)
        shared = self.critic == "shared"
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=shared,
            use_cache=False,  # one pass with gradients: no KV cache to keep (nor to clash with checkpointing)
        )
        # column j predicts the token in column j + 1: states s_0..s_{T-1} sit in columns P-1 .. P+T-2
        states = slice(prompt_width - 1, width - 1)
        logits = out.logits[:, states].float() / temperature  # (B, T, V)
        targets = input_ids[:, prompt_width:]  # (B, T)
        logprobs = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
        entropy = entropy_from_logits(logits)  # (B, T)
        if self.value_head is None:
            return logprobs, torch.zeros_like(logprobs), entropy
        if shared:
            hidden = out.hidden_states[-1]
        else:
            assert self.critic_model is not None
            hidden = self.critic_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                output_hidden_states=True,
            ).hidden_states[-1]
        values = self.value(hidden[:, states])  # (B, T)
        assert values.shape[1] == num_new
        return logprobs, values, entropy
