"""Rollouts through the vector environment: KV-cached batched sampling of one episode per sub-env.

One rollout plays one episode in every sub-environment, all started by one ``reset``. The agent samples
each slot's next token from a KV cache (one batched forward pass per step, which also gives the values),
and the env's terminal ``info`` brings back what the agent needs: the score, the KL and the per-token
log-probs of policy and reference, which are reused rather than computed again. Two ways, the same rollout
(to float precision, tested):

* **whole episodes** (the default on an unwrapped ``TextRLHF-v0`` vector env with terminal KL placement):
  every response is sampled to its end on the policy's device, tokens, log-probs and values staying there,
  then the token matrix goes to the host once and ``env.play`` scores every episode in one batched pass
  (the reference's teacher-forced pass and one reward-model call), moving beta between the steps that end
  episodes as stepping would;
* **token by token** (a wrapped env, whose wrappers must see every step; ``kl_placement="per_token"``): the
  env steps once per token and scores the episodes that end on each step. A slot whose episode has ended
  waits for the others: the env autoresets it on the next step (NEXT_STEP autoreset, the action is
  ignored) and the agent then feeds it a non-EOS filler token, which cannot end the new episode before the
  rollout does (it would need ``max_new_tokens`` steps), so no unused episode is ever scored and the
  adaptive KL coefficient only sees the episodes that are trained on. The next rollout's ``reset`` drops
  them.

Either way a batch lasts as long as its longest response, as in batched ``generate``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core import categorical, filter_logits, log_mixture
from agents.policy import ActorCritic
from textenv.config import EnvConstants
from textenv.models import evaluating
from textenv.sampling import host_check_every
from textenv.scoring import IncrementalLogprobs

#: ``(policy_logprobs (N, V), reference_logprobs (N, V) or None) -> exploration distribution U (N, V)``
ExplorationFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class Exploration:
    """Sample from ``(1 - epsilon) * pi + epsilon * U`` instead of ``pi`` (the epsilon-greedy agent)."""

    epsilon: float
    distribution: ExplorationFn
    needs_reference: bool = False


@dataclass
class Rollout:
    """A batch of finished episodes; token tensors are (B, T) with response token ``t`` in column ``t``."""

    query_ids: torch.Tensor  # (B, P) left-padded prompts
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T) pad after the end
    response_mask: torch.Tensor  # (B, T) float, 1 on generated tokens (the EOS included)
    logprobs: torch.Tensor  # (B, T) log pi(a_t|s_t) of the sampling policy, from the env's info
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(a_t|s_t), from the env's info
    values: torch.Tensor  # (B, T) V(s_t) when the token was sampled
    rewards: torch.Tensor  # (B, T) the env's rewards
    scores: torch.Tensor  # (B,) reward-model scores
    kl: torch.Tensor  # (B,) per-sequence KL (nats) the env charged
    kl_coef: float  # beta the env used
    prompts: list[str]
    responses: list[str]
    behaviour_logprobs: torch.Tensor  # (B, T) log mu(a_t|s_t) of the distribution that drew the token
    sampler_logprobs: torch.Tensor  # (B, T) log pi(a_t|s_t) as the KV-cached sampler saw it
    explore_probs: torch.Tensor | None = None  # (B, T) U(a_t) under exploration
    epsilon: float = 0.0  # the exploration's share of mu (0: mu = pi)
    env_seconds: float = 0.0  # wall time spent in the env's reset and steps (its scoring included)

    @property
    def num_episodes(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def trimmed(self) -> Rollout:
        """The same episodes with the token columns cut after the longest response (less work per pass)."""
        width = int(self.lengths.max()) if self.num_episodes else 0
        cut = {
            name: getattr(self, name)[:, :width]
            for name in (
                "response_ids",
                "response_mask",
                "logprobs",
                "ref_logprobs",
                "values",
                "rewards",
                "behaviour_logprobs",
                "sampler_logprobs",
                "explore_probs",
            )
            if getattr(self, name) is not None
        }
        return dataclasses.replace(self, **cut)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)  # (B, P + T)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)


def constants_of(env: gym.vector.VectorEnv) -> EnvConstants:
    """What the sampler needs to know about a ``TextRLHF-v0`` vector env (``env.unwrapped.constants``)."""
    constants = getattr(env.unwrapped, "constants", None)
    if not isinstance(constants, EnvConstants) or not isinstance(env, gym.vector.VectorEnv):
        raise TypeError(
            "the agents train on TextRLHF-v0's vector env: "
            'gymnasium.make_vec("TextRLHF-v0", num_envs=N, vectorization_mode="vector_entry_point"); '
            f"got {type(env.unwrapped).__name__}"
        )
    if env.unwrapped.policy is None:  # type: ignore[attr-defined]
        raise ValueError("this env was made with policy=None; the agents need the LM policy it scores")
    return constants


def _column(infos: dict[str, Any], key: str, slot: int) -> Any:
    if key not in infos or not infos["_" + key][slot]:
        raise KeyError(f"the env's terminal info of sub-env {slot} has no {key!r}")
    return infos[key][slot]


def plays_whole_episodes(env: gym.vector.VectorEnv, model: ActorCritic) -> bool:
    """Whether :func:`collect` can sample whole responses first and hand them to the env at once
    (``env.play``): an unwrapped ``TextRLHF-v0`` vector env with terminal KL placement scoring with the
    agent's own policy. A wrapped env is stepped token by token, so that its wrappers see every step."""
    unwrapped = env.unwrapped
    return (
        env is unwrapped
        and callable(getattr(unwrapped, "play", None))
        and getattr(unwrapped, "policy", None) is model.policy
        and unwrapped.config.kl_placement == "terminal"  # type: ignore[attr-defined]
    )


@torch.no_grad()
def collect(
    env: gym.vector.VectorEnv,
    model: ActorCritic,
    *,
    generator: torch.Generator,
    seed: int | None = None,
    group_size: int = 1,
    exploration: Exploration | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    reference: torch.nn.Module | None = None,
    whole_episodes: bool | None = None,
) -> Rollout:
    """Play one episode per sub-environment with ``model.policy`` and return them as a :class:`Rollout`.

    ``seed`` reseeds the env's prompt draws; ``group_size`` gives every ``k`` neighbouring slots one
    prompt. ``top_k``/``top_p`` truncate the sampling distribution (for evaluation: the env's log-probs,
    and therefore a PPO ratio, are those of the untruncated distribution). ``exploration`` mixes in another
    distribution and records ``U(a_t)`` (``reference`` is then the model whose next-token log-probs it
    reads).

    ``whole_episodes``: sample every response to its end on the policy's device first, then hand the token
    matrix to the env in one ``env.play`` call, which scores the episodes in one batched pass (the default
    where :func:`plays_whole_episodes` allows it); or step the env token by token (``False``). Both draw
    the same tokens from the same generator and give the same rollout, to float precision (on a GPU the
    whole-episode sampler learns that every episode has ended only every few tokens, so it may draw a few
    tokens more, which moves the generator on for the next rollout).
    """
    c = constants_of(env)
    if whole_episodes is None:
        whole_episodes = plays_whole_episodes(env, model)
    elif whole_episodes and not plays_whole_episodes(env, model):
        raise ValueError(
            "whole_episodes=True needs an unwrapped TextRLHF-v0 vector env with kl_placement='terminal' "
            "whose policy is the model's"
        )
    n, P, T = c.num_envs, c.prompt_width, c.max_new_tokens
    policy = model.policy
    device = next(policy.parameters()).device
    options = {"group_size": group_size} if group_size > 1 else None
    started = time.perf_counter()
    obs, infos = env.reset(seed=seed, options=options)
    env_seconds = time.perf_counter() - started
    prompts = [str(p) for p in infos["prompt"]]

    def cache(lm: Any, hidden: bool) -> IncrementalLogprobs:
        return IncrementalLogprobs(lm, n, P, T, c.temperature, c.pad_token_id, output_hidden=hidden)

    shared = model.critic == "shared"
    caches = {"policy": cache(policy, shared)}
    if model.critic_model is not None:
        caches["critic"] = cache(model.critic_model, True)
    if exploration is not None and exploration.needs_reference:
        if reference is None:
            raise ValueError("this exploration distribution needs the reference model")
        caches["reference"] = cache(reference, False)

    def sample(live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One token for every slot (``live``: the slots whose episode runs): its action, the policy's
        log-prob of it, V(s_t) and U(a_t), all on the device."""
        lp = caches["policy"].next_logprobs  # (N, V) at the env's temperature
        value = torch.zeros(n, device=device)
        if model.value_head is not None:
            hidden = caches["critic" if "critic" in caches else "policy"].next_hidden
            value = model.value(hidden).float()
        explore_prob = None
        if exploration is not None:
            ref = caches["reference"].next_logprobs if "reference" in caches else None
            explore = exploration.distribution(lp, ref)  # (N, V)
            probs = (1 - exploration.epsilon) * lp.exp() + exploration.epsilon * explore
            actions = categorical(probs, generator)
            explore_prob = explore.gather(-1, actions[:, None]).squeeze(-1).float()
        else:
            probs = lp.exp() if top_k == 0 and top_p == 1 else filter_logits(lp, top_k, top_p).softmax(-1)
            actions = categorical(probs, generator)
        chosen = lp.gather(-1, actions[:, None]).squeeze(-1)
        return torch.where(live, actions, c.filler_token_id), chosen, value, explore_prob

    query_ids = torch.from_numpy(obs["input_ids"][:, :P].copy())
    query_mask = torch.from_numpy(obs["attention_mask"][:, :P].copy())
    models = [m for m in (policy, model.critic_model, reference) if m is not None]
    with evaluating(*models):
        index = torch.arange(n, device=device)
        for lm_cache in caches.values():
            lm_cache.prefill(index, query_ids.to(device), query_mask.to(device))
        play = _play_whole if whole_episodes else _step_through
        out, seconds = play(env, c, caches, sample, n, T, device, exploration is not None)
    env_seconds += seconds
    epsilon = 0.0 if exploration is None else exploration.epsilon
    logprobs, response_mask, explore_probs = out["logprobs"], out["response_mask"], out["explore_probs"]
    if explore_probs is not None:
        explore_probs = explore_probs * response_mask
    behaviour = logprobs if explore_probs is None else log_mixture(logprobs, explore_probs, epsilon)
    return Rollout(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=out["response_ids"],
        response_mask=response_mask,
        logprobs=logprobs,
        ref_logprobs=out["ref_logprobs"],
        values=out["values"] * response_mask,  # V(s_t) of the slots whose episode ran at t
        rewards=out["rewards"],
        scores=out["scores"],
        kl=out["kl"],
        kl_coef=float(out["betas"].mean()),
        prompts=prompts,
        responses=out["responses"],
        behaviour_logprobs=behaviour * response_mask,
        sampler_logprobs=out["sampler_logprobs"] * response_mask,
        explore_probs=explore_probs,
        epsilon=epsilon,
        env_seconds=env_seconds,
    )


#: ``sample(live) -> (actions, log pi(action), V(s), U(action) or None)``, all (N,) on the device
Sampler = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _outputs(n: int, T: int, c: EnvConstants, explores: bool) -> dict[str, Any]:
    return {
        "response_ids": torch.full((n, T), c.pad_token_id, dtype=torch.long),
        "response_mask": torch.zeros(n, T),
        "values": torch.zeros(n, T),
        "rewards": torch.zeros(n, T),
        "logprobs": torch.zeros(n, T),
        "ref_logprobs": torch.zeros(n, T),
        "explore_probs": torch.zeros(n, T) if explores else None,
        "sampler_logprobs": torch.zeros(n, T),
        "scores": torch.zeros(n),
        "kl": torch.zeros(n),
        "betas": torch.zeros(n),
        "responses": [""] * n,
    }


def _terminal(out: dict[str, Any], infos: dict[str, Any], slot: int, length: int) -> None:
    """Copy what the env's terminal info of ``slot`` reports into the rollout's rows."""
    out["logprobs"][slot, :length] = torch.from_numpy(_column(infos, "logprobs", slot))
    out["ref_logprobs"][slot, :length] = torch.from_numpy(_column(infos, "ref_logprobs", slot))
    out["scores"][slot] = float(_column(infos, "score", slot))
    out["kl"][slot] = float(_column(infos, "kl", slot))
    out["betas"][slot] = float(_column(infos, "kl_coef", slot))
    out["responses"][slot] = str(_column(infos, "response", slot))


def _step_through(
    env: gym.vector.VectorEnv,
    c: EnvConstants,
    caches: dict[str, IncrementalLogprobs],
    sample: Sampler,
    n: int,
    T: int,
    device: torch.device,
    explores: bool,
) -> tuple[dict[str, Any], float]:
    """Step the env once per token: each step's actions go to the host, the env scores the episodes that
    end on it. Works with any wrappers around the env."""
    out = _outputs(n, T, c, explores)
    env_seconds = 0.0
    unwrapped = env.unwrapped
    # terminal KL placement only: per_token scores incrementally, where nothing is read twice
    offer = (
        getattr(unwrapped, "policy", None) is caches["policy"].model
        and hasattr(unwrapped, "offer_policy_logprobs")
        and unwrapped.config.kl_placement == "terminal"  # type: ignore[attr-defined]
    )
    running = np.ones(n, dtype=bool)  # the slot's first episode has not ended
    for t in range(T):
        actions_d, chosen, value, explore_prob = sample(torch.from_numpy(running).to(device))
        out["values"][:, t] = value.cpu()
        if explore_prob is not None:
            out["explore_probs"][:, t] = explore_prob.cpu()
        out["sampler_logprobs"][:, t] = chosen.float().cpu()
        actions = actions_d.cpu()
        if offer:  # the env's policy read through our cache: the env need not read it again
            offered = chosen.double().cpu().numpy()
            offered[~running] = np.nan  # a slot past its episode steps a filler token, not this one
            unwrapped.offer_policy_logprobs(offered)  # type: ignore[attr-defined]
        started = time.perf_counter()
        _, step_rewards, terminated, truncated, infos = env.step(actions.numpy())
        env_seconds += time.perf_counter() - started
        live = torch.from_numpy(running)
        out["response_ids"][live, t] = actions[live]
        out["response_mask"][live, t] = 1.0
        out["rewards"][live, t] = torch.from_numpy(step_rewards[running]).float()
        ended = running & (terminated | truncated)
        for slot in np.flatnonzero(ended).tolist():
            _terminal(out, infos, slot, t + 1)
        running &= ~ended
        if not running.any():
            break
        go_on = torch.from_numpy(running).to(device)
        for lm_cache in caches.values():
            lm_cache.advance_where(go_on, actions_d)
    if running.any():
        raise RuntimeError(f"{int(running.sum())} episode(s) did not end within max_new_tokens={T} steps")
    return out, env_seconds


def _play_whole(
    env: gym.vector.VectorEnv,
    c: EnvConstants,
    caches: dict[str, IncrementalLogprobs],
    sample: Sampler,
    n: int,
    T: int,
    device: torch.device,
    explores: bool,
) -> tuple[dict[str, Any], float]:
    """Sample every response to its end on the device (the tokens stay there: on a GPU the host is asked
    only every few tokens whether all episodes have ended), then hand the token matrix to ``env.play``."""
    out = _outputs(n, T, c, explores)
    tokens = torch.full((n, T), c.pad_token_id, dtype=torch.long, device=device)
    chosen_all = torch.zeros(n, T, device=device)
    values = torch.zeros(n, T, device=device)
    explore_all = torch.zeros(n, T, device=device) if explores else None
    running = torch.ones(n, dtype=torch.bool, device=device)
    check_every = host_check_every(device)
    steps = T
    for t in range(T):
        actions, chosen, value, explore_prob = sample(running)
        tokens[:, t] = torch.where(running, actions, c.pad_token_id)
        chosen_all[:, t] = chosen.float()
        values[:, t] = value
        if explore_all is not None and explore_prob is not None:
            explore_all[:, t] = explore_prob
        if c.eos_token_id is not None:
            running = running & (actions != c.eos_token_id)
        if t + 1 == T:
            break
        if (t + 1) % check_every == 0 and not bool(running.any()):
            steps = t + 1
            break
        for lm_cache in caches.values():
            lm_cache.advance_where(running, actions)
    host_tokens = tokens[:, :steps].cpu().numpy()
    sampled = chosen_all[:, :steps].double().cpu().numpy()
    started = time.perf_counter()
    rewards, terminated, infos = env.unwrapped.play(host_tokens, logprobs=sampled)  # type: ignore[attr-defined]
    env_seconds = time.perf_counter() - started
    lengths = terminated.argmax(axis=1) + 1  # each episode's last step
    live = torch.from_numpy(np.arange(steps)[None, :] < lengths[:, None])
    out["response_ids"][:, :steps] = torch.where(live, torch.from_numpy(host_tokens), c.pad_token_id)
    out["response_mask"][:, :steps] = live.float()
    out["rewards"][:, :steps] = torch.from_numpy(rewards).float()
    out["values"][:, :steps] = values[:, :steps].cpu()
    out["sampler_logprobs"][:, :steps] = chosen_all[:, :steps].cpu()
    if explore_all is not None:
        out["explore_probs"][:, :steps] = explore_all[:, :steps].cpu()
    for slot in range(n):
        _terminal(out, infos, slot, int(lengths[slot]))
    return out, env_seconds
