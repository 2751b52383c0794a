"""The batched core of TextRLHF-v0: N episode slots stepped together.

:class:`~textenv.env.TextRLHFEnv` is this engine with one slot; :class:`~textenv.vector_env.TextRLHFVectorEnv`
is it with N slots plus autoreset. Everything about the MDP (observation layout, termination, log-probs,
KL, reward, beta) lives here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import InvalidAction
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.config import EnvConfig, EnvConstants, KLPlacement, check_float, check_int
from textenv.kl import AdaptiveKLController, get_estimator
from textenv.lora import AdaptersOff, add_lora, is_peft_model
from textenv.models import (
    FROZEN_DTYPES,
    cast_frozen_weights,
    evaluating,
    frozen_copy,
    load_causal_lm,
    load_tokenizer,
    model_device,
    output_vocab_size,
    tokenizer_source,
)
from textenv.prompts import Prompt, PromptSource
from textenv.rewards import RewardModel, as_reward_model, compute_scores
from textenv.scoring import IncrementalLogprobs, position_ids, response_logprobs

REWARD_FORM = "score - kl_coef * kl"
POLICY_FREE_REWARD_FORM = "score + kl_coef * sum(ref_logprobs)"


@dataclass
class Finished:
    """Episodes that ended on one step, with what their terminal ``info`` reports (one entry per slot)."""

    slots: np.ndarray  # (n,) slot indices
    score: np.ndarray  # (n,) reward-model scores
    kl: np.ndarray | None  # (n,) per-sequence KL in nats (None when policy=None)
    kl_coef: float  # beta used for these rewards
    logprobs: list[np.ndarray] | None  # n arrays (T_i,), policy log-probs (None when policy=None)
    ref_logprobs: list[np.ndarray]  # n arrays (T_i,)
    prompts: list[str]
    responses: list[str]
    prompt_truncated: np.ndarray  # (n,) bool


@dataclass
class Played:
    """Whole episodes played by :meth:`RLHFEngine.play`: each slot's episode, what its steps returned."""

    slots: np.ndarray  # (n,) slot indices
    lengths: np.ndarray  # (n,) response tokens of each episode (the EOS included)
    rewards: np.ndarray  # (n,) reward of each episode's last step (every other step returned 0)
    kl_coef: np.ndarray  # (n,) beta each episode was charged (beta moves between the steps that end some)
    finished: Finished  # what the terminal infos report; its kl_coef is the last group's


@dataclass
class StepResult:
    rewards: np.ndarray  # (n,) float64, one per stepped slot
    terminated: np.ndarray  # (n,) bool
    finished: Finished | None
    token_logprob: np.ndarray | None  # (n,) per_token placement only: log pi(a_t|s_t)
    token_ref_logprob: np.ndarray | None  # (n,) per_token placement only
    token_kl: np.ndarray | None  # (n,) per_token placement only: k(lp_t, lr_t)


class RLHFEngine:
    """State and scoring of ``num_slots`` token-generation episodes; see ``TextRLHFEnv`` for arguments.

    The engine knows no task: the env classes fill in a task's models and prompts
    (:func:`textenv.tasks.fill_env_arguments`) before they build it.
    """

    def __init__(self, config: EnvConfig, num_slots: int = 1):
        """Build the models and the state of ``num_slots`` slots from a resolved ``config``
        (:meth:`EnvConfig.resolved`: a task's defaults filled in)."""
        check_int("num_envs", num_slots, minimum=1)
        if config.policy is None and config.reference is None:
            raise ValueError("policy=None needs a reference model: pass reference=...")
        if config.reward_model is None:
            raise ValueError("pass reward_model= (a callable, a classifier, a pipeline or a path)")
        if config.prompts is None:
            raise ValueError("pass prompts= (a list of strings or a callable (np_random) -> str)")
        assert config.max_new_tokens is not None and config.max_prompt_tokens is not None, "resolve first"
        self.config = config
        policy, reference, tokenizer = config.policy, config.reference, config.tokenizer
        max_new_tokens, max_prompt_tokens = config.max_new_tokens, config.max_prompt_tokens
        kl_placement, device = config.kl_placement, config.device
        trust_remote_code = config.trust_remote_code
        self.num_slots = num_slots
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.temperature = config.temperature
        self.kl_estimator = get_estimator(config.kl_estimator)
        self.kl_placement: KLPlacement = kl_placement
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        # hold_kl_coef: beta stays still and each finished batch's (mean KL, episodes) is kept here instead,
        # for a caller that moves beta itself (data-parallel training: after the rollout, with every rank's)
        self.hold_kl_coef = False
        self.held_kl: list[tuple[float, int]] = []

        # models: the policy is shared with the agent (never copied); the reference is frozen
        if isinstance(policy, torch.nn.Module) and reference is policy:  # (equal paths load twice: fine)
            raise ValueError(
                "reference is the policy object itself: freezing it would freeze the policy, and the KL "
                "would always be 0. Leave reference=None for a frozen copy of the initial policy"
            )
        first = policy if policy is not None else reference
        if device is None:
            device = model_device(first) if isinstance(first, torch.nn.Module) else "cpu"
        self.device = torch.device(device)
        # frozen_dtype: the weights that never train load in it (a LoRA policy's base: all of it, before
        # the adapters are added); the others load in float32
        frozen = FROZEN_DTYPES[config.frozen_dtype] if config.frozen_dtype is not None else None
        self.policy: PreTrainedModel | None = None
        if policy is not None:
            self.policy = load_causal_lm(
                policy,
                device=self.device,
                trust_remote_code=trust_remote_code,
                dtype=frozen if frozen is not None and config.lora is not None else torch.float32,
            )
        if config.lora is not None:
            if self.policy is None or is_peft_model(self.policy):
                raise ValueError(
                    "lora= adds adapters to the policy; "
                    + ("there is none (policy=None)" if self.policy is None else "it has adapters already")
                )
            self.policy = add_lora(self.policy, config.lora)
        if reference is None:
            assert self.policy is not None
            # LoRA: the base weights are the reference (the adapters switched off), not a second copy
            reference = (
                AdaptersOff(self.policy) if is_peft_model(self.policy) else frozen_copy(self.policy, frozen)
            )
        self.reference: PreTrainedModel = load_causal_lm(
            reference, device=self.device, trust_remote_code=trust_remote_code, dtype=frozen or torch.float32
        )
        self.reference.requires_grad_(False)
        if frozen is not None:
            # the weights that never train: the reference's, and a LoRA policy's base (shared with its
            # reference view); a policy trained whole has none and stays as it is. Models loaded here are
            # in that dtype already; objects given are cast in place
            for model in (self.policy, self.reference):
                if model is not None and not isinstance(model, AdaptersOff):
                    cast_frozen_weights(model, frozen)
        self.vocab_size = output_vocab_size(self.reference)
        if self.policy is not None and output_vocab_size(self.policy) != self.vocab_size:
            raise ValueError(
                f"the policy has {output_vocab_size(self.policy)} output tokens and the reference "
                f"{self.vocab_size}; they must share one vocabulary"
            )

        if tokenizer is None:
            source = tokenizer_source(first)
            if source is None:
                raise ValueError("cannot tell which tokenizer goes with the policy: pass tokenizer=...")
            tokenizer = source
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(
            tokenizer, trust_remote_code=trust_remote_code
        )
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_token_id  # read, never written back: the user's tokenizer is not changed
        self.pad_token_id = int(pad) if pad is not None and 0 <= pad < self.vocab_size else 0

        self.reward_model: RewardModel = as_reward_model(
            config.reward_model,
            label=config.reward_label,
            device=self.device,
            trust_remote_code=trust_remote_code,
        )
        self.prompt_source = PromptSource(
            config.prompts,
            self.tokenizer,
            max_prompt_tokens=max_prompt_tokens,
            vocab_size=self.vocab_size,
            truncate=config.truncate_prompts,
        )

        width = max_prompt_tokens + max_new_tokens
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, shape=(width,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, shape=(width,), dtype=np.int64),
                "position_ids": spaces.Box(0, width - 1, shape=(width,), dtype=np.int64),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)

        # per-slot state
        self.input_ids = np.full((num_slots, width), self.pad_token_id, dtype=np.int64)
        self.attention_mask = np.zeros((num_slots, width), dtype=np.int64)
        self.response_length = np.zeros(num_slots, dtype=np.int64)
        self.active = np.zeros(num_slots, dtype=bool)  # an episode is running: the slot may step
        self.prompts: list[Prompt | None] = [None] * num_slots
        # log pi of each response token as the agent's sampler computed it (offer_policy_logprobs); NaN
        # where none was offered, and then the policy's teacher-forced pass computes them
        self._offered = np.full((num_slots, max_new_tokens), np.nan)
        self._pending: np.ndarray | None = None
        self._incremental: list[IncrementalLogprobs] = []
        if kl_placement == "per_token":
            self._logprobs = np.zeros((num_slots, max_new_tokens), dtype=np.float64)
            self._ref_logprobs = np.zeros((num_slots, max_new_tokens), dtype=np.float64)
            self._incremental = [
                IncrementalLogprobs(
                    model,
                    num_slots,
                    max_prompt_tokens,
                    max_new_tokens,
                    self.temperature,
                    self.pad_token_id,
                )
                for model in (self.policy, self.reference)
                if model is not None
            ]

    # ------------------------------------------------------------------ beta
    @property
    def kl_coef(self) -> float:
        return self.kl_ctl.value

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.kl_ctl.value = check_float("kl_coef", value, minimum=0.0)  # type: ignore[assignment]

    @property
    def constants(self) -> EnvConstants:
        """What an agent needs to know about the episodes (see :class:`textenv.config.EnvConstants`)."""
        return EnvConstants(
            num_envs=self.num_slots,
            prompt_width=self.max_prompt_tokens,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            vocab_size=self.vocab_size,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )

    # ------------------------------------------------------------------ prompts and reset
    def encode_prompt(self, text: str, where: str = "options['prompt']") -> Prompt:
        return self.prompt_source.encode(text, where=where)

    def draw_prompt(self, rng: np.random.Generator) -> Prompt:
        return self.prompt_source.draw(rng)

    def reset(self, slots: Sequence[int] | np.ndarray, prompts: Sequence[Prompt]) -> None:
        """Start new episodes in ``slots`` with ``prompts`` (already drawn and checked)."""
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size == 0:
            return
        P = self.max_prompt_tokens
        self.input_ids[slots] = self.pad_token_id
        self.attention_mask[slots] = 0
        for slot, prompt in zip(slots.tolist(), prompts, strict=True):
            n = prompt.token_ids.size
            self.input_ids[slot, P - n : P] = prompt.token_ids
            self.attention_mask[slot, P - n : P] = 1
            self.prompts[slot] = prompt
        self.response_length[slots] = 0
        self._offered[slots] = np.nan
        self.active[slots] = True
        if self._incremental:
            ids = torch.from_numpy(self.input_ids[slots, :P]).to(self.device)
            mask = torch.from_numpy(self.attention_mask[slots, :P]).to(self.device)
            index = torch.from_numpy(slots).to(self.device)
            with evaluating(self.policy, self.reference):
                for scorer in self._incremental:
                    scorer.prefill(index, ids, mask)

    # ------------------------------------------------------------------ observations
    def observation(self, slots: int | Sequence[int] | np.ndarray | slice) -> dict[str, np.ndarray]:
        """Copies of the rows of ``slots`` (so that stored observations never change)."""
        mask = self.attention_mask[slots].copy()
        return {
            "input_ids": self.input_ids[slots].copy(),
            "attention_mask": mask,
            "position_ids": position_ids(mask),
        }

    def text(self, slot: int) -> str:
        """Prompt and response so far of ``slot``, decoded (what ``render_mode='ansi'`` shows)."""
        prompt = self.prompts[slot]
        if prompt is None:
            return ""
        P = self.max_prompt_tokens
        response = self.input_ids[slot, P : P + self.response_length[slot]].tolist()
        return prompt.text + str(self.tokenizer.decode(response))

    def check_actions(self, actions: Any, expected: int) -> np.ndarray:
        """Validate actions without changing anything: (expected,) integers in [0, V)."""
        array = np.asarray(actions)
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise InvalidAction(
                f"actions must be integer token ids, got dtype {array.dtype} ({actions!r:.80})"
            )
        array = array.reshape(-1) if array.size == expected else array
        if array.shape != (expected,):
            raise InvalidAction(f"expected {expected} action(s), got shape {np.shape(actions)}")
        bad = (array < 0) | (array >= self.vocab_size)
        if bad.any():
            raise InvalidAction(
                f"action {int(array[bad][0])} is outside the vocabulary Discrete({self.vocab_size})"
            )
        return array.astype(np.int64)

    # ------------------------------------------------------------------ step
    def offer_policy_logprobs(self, logprobs: np.ndarray) -> None:
        """Take, for the next ``step`` only, ``log pi(a | s)`` of the action each slot is about to take,
        at the env's temperature, as the caller's sampler computed it with the env's own policy: (num_slots,).

        An episode whose every token was offered is scored without the policy's teacher-forced pass (the
        reference's still runs): the KL is the same to float precision (the sampler reads the policy
        through a KV cache), at half the scoring cost. The agents' rollouts offer them; any other caller
        need not, and an episode with one token not offered is scored by the teacher-forced pass as before.
        """
        values = np.asarray(logprobs, dtype=np.float64).reshape(-1)
        if values.shape != (self.num_slots,):
            raise ValueError(f"offer one log-prob per slot: expected {self.num_slots}, got {values.shape}")
        self._pending = values

    def step(self, slots: np.ndarray, actions: np.ndarray) -> StepResult:
        """Append ``actions`` (n,) to the responses of the running episodes in ``slots`` (n,).

        All work that can fail (the reward model) happens before the state changes for good: on an
        exception the slots are left exactly as they were.
        """
        assert self.active[slots].all(), "step on a slot without a running episode"
        P, T = self.max_prompt_tokens, self.max_new_tokens
        length = self.response_length[slots]
        columns = P + length
        pending, self._pending = self._pending, None
        self._offered[slots, length] = np.nan if pending is None else pending[slots]
        self.input_ids[slots, columns] = actions
        self.attention_mask[slots, columns] = 1
        terminated = length + 1 >= T
        if self.eos_token_id is not None:
            terminated |= actions == self.eos_token_id
        beta = self.kl_ctl.value
        token_lp = token_lr = token_kl = None
        try:
            if self._incremental:
                index = torch.from_numpy(slots).to(self.device)
                tokens = torch.from_numpy(actions).to(self.device)
                gathered = [s.gather(index, tokens).double().cpu().numpy() for s in self._incremental]
                token_lr = gathered[-1]
                self._ref_logprobs[slots, length] = token_lr
                if self.policy is not None:
                    token_lp = gathered[0]
                    self._logprobs[slots, length] = token_lp
                    token_kl = self.kl_estimator(
                        torch.from_numpy(token_lp), torch.from_numpy(token_lr)
                    ).numpy()
            finished = (
                self._finish(slots[terminated], length[terminated] + 1, beta) if terminated.any() else None
            )
        except BaseException:
            self.input_ids[slots, columns] = self.pad_token_id
            self.attention_mask[slots, columns] = 0
            raise

        # commit
        self.response_length[slots] = length + 1
        self.active[slots[terminated]] = False
        rewards = np.zeros(slots.size, dtype=np.float64)
        if self.kl_placement == "per_token":
            assert token_lr is not None
            rewards += -beta * token_kl if token_kl is not None else beta * token_lr
            go_on = ~terminated
            if go_on.any():
                index = torch.from_numpy(slots[go_on]).to(self.device)
                tokens = torch.from_numpy(actions[go_on]).to(self.device)
                with evaluating(self.policy, self.reference):
                    for scorer in self._incremental:
                        scorer.advance(index, tokens)
        if finished is not None:
            if self.kl_placement == "per_token":
                rewards[terminated] += finished.score
            elif finished.kl is not None:
                rewards[terminated] = finished.score - beta * finished.kl
            else:
                sums = np.array([lr.sum() for lr in finished.ref_logprobs])
                rewards[terminated] = finished.score + beta * sums
            if finished.kl is not None and self.hold_kl_coef:
                self.held_kl.append((float(finished.kl.mean()), len(finished.slots)))
            elif finished.kl is not None:
                self.kl_ctl.update(float(finished.kl.mean()), len(finished.slots))
        return StepResult(rewards, terminated, finished, token_lp, token_lr, token_kl)

    def play(self, slots: np.ndarray, actions: np.ndarray, offered: np.ndarray | None = None) -> Played:
        """Play whole episodes: what stepping the fresh episodes of ``slots`` (n,) through the columns of
        ``actions`` (n, C) until each has ended would do, with the finished episodes scored in one batched
        pass instead of one pass per step that ends some (``kl_placement="terminal"`` only).

        An episode ends at its first EOS or after ``max_new_tokens`` tokens; the tokens after that are not
        read. Beta moves as it would between those steps: the episodes that end on one step are charged the
        same beta, then the controller takes their mean KL, step by step (or keeps it, held). ``offered``
        (n, C): the sampler's ``log pi`` of each token (see :meth:`offer_policy_logprobs`), or None. Nothing
        changes when scoring fails.
        """
        if self.kl_placement != "terminal":
            raise ValueError("play() scores whole episodes: kl_placement='terminal' only (step per_token)")
        assert self.active[slots].all(), "play on a slot without a running episode"
        if (self.response_length[slots] != 0).any():
            raise ValueError("play() plays whole episodes: reset the slots first (no token stepped yet)")
        n, columns = actions.shape
        P, T = self.max_prompt_tokens, self.max_new_tokens
        if columns > T:
            raise ValueError(f"actions has {columns} columns; an episode has at most max_new_tokens={T}")
        ends = np.full(n, columns, dtype=np.int64) if columns == T else np.zeros(n, dtype=np.int64)
        if self.eos_token_id is not None:
            is_eos = actions == self.eos_token_id
            first = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, ends)
            ends = first
        if (ends == 0).any():
            raise ValueError(
                f"{int((ends == 0).sum())} episode(s) have neither an EOS nor max_new_tokens={T} tokens in "
                f"the {columns} columns given"
            )
        lengths = ends
        within = np.arange(columns)[None, :] < lengths[:, None]  # (n, C)
        self.input_ids[slots, P : P + columns] = np.where(within, actions, self.pad_token_id)
        self.attention_mask[slots, P : P + columns] = within
        self._offered[slots, :columns] = np.nan if offered is None else np.where(within, offered, np.nan)
        try:
            finished = self._finish(slots, lengths, self.kl_ctl.value)
        except BaseException:
            self.input_ids[slots, P:] = self.pad_token_id
            self.attention_mask[slots, P:] = 0
            self._offered[slots] = np.nan
            raise
        self.response_length[slots] = lengths
        self.active[slots] = False
        rewards = np.zeros(n, dtype=np.float64)
        betas = np.zeros(n, dtype=np.float64)
        for length in np.unique(lengths).tolist():  # the steps that end episodes, in order
            group = lengths == length
            beta = self.kl_ctl.value
            betas[group] = beta
            if finished.kl is not None:
                rewards[group] = finished.score[group] - beta * finished.kl[group]
                mean_kl, count = float(finished.kl[group].mean()), int(group.sum())
                if self.hold_kl_coef:
                    self.held_kl.append((mean_kl, count))
                else:
                    self.kl_ctl.update(mean_kl, count)
            else:
                sums = np.array([lr.sum() for lr, g in zip(finished.ref_logprobs, group, strict=True) if g])
                rewards[group] = finished.score[group] + beta * sums
        finished.kl_coef = float(betas[lengths == lengths.max()][0])
        return Played(slots=slots, lengths=lengths, rewards=rewards, kl_coef=betas, finished=finished)

    def _finish(self, slots: np.ndarray, lengths: np.ndarray, beta: float) -> Finished:
        """Score episodes that end now: log-probs, KL and the reward model, batched; changes no state."""
        P = self.max_prompt_tokens
        longest = int(lengths.max())
        ref_t: torch.Tensor  # (n, longest) float64; entries past an episode's length are meaningless
        pol_t: torch.Tensor | None = None
        if self._incremental:
            ref_t = torch.from_numpy(self._ref_logprobs[slots, :longest])
            if self.policy is not None:
                pol_t = torch.from_numpy(self._logprobs[slots, :longest])
        else:
            # prompts are left-padded to P columns: the columns that are padding in every row scored here
            # are left out (positions come from the mask, so nothing else changes)
            lead = min(P - 1, int((self.attention_mask[slots, :P] == 0).all(axis=0).cumprod().sum()))
            ids = torch.from_numpy(self.input_ids[slots, lead : P + longest]).to(self.device)
            mask = torch.from_numpy(self.attention_mask[slots, lead : P + longest]).to(self.device)
            width = P - lead
            offered = self._offered[slots, :longest]
            within = np.arange(longest)[None, :] < lengths[:, None]
            with evaluating(self.policy, self.reference):
                ref_t = response_logprobs(self.reference, ids, mask, width, self.temperature).double().cpu()
                if self.policy is not None and np.isfinite(offered[within]).all():
                    pol_t = torch.from_numpy(np.where(within, offered, 0.0))
                elif self.policy is not None:
                    pol_t = response_logprobs(self.policy, ids, mask, width, self.temperature).double().cpu()
        ref = [ref_t[i, :n].numpy().copy() for i, n in enumerate(lengths)]
        pol = None if pol_t is None else [pol_t[i, :n].numpy().copy() for i, n in enumerate(lengths)]
        kl = None
        if pol_t is not None:
            valid = torch.arange(longest)[None, :] < torch.from_numpy(lengths)[:, None]  # (n, longest)
            per_token = self.kl_estimator(pol_t, ref_t)
            kl = torch.where(valid, per_token, 0.0).sum(-1).numpy()  # where, not *: padding may be inf
        started = [self.prompts[s] for s in slots]
        assert all(p is not None for p in started)
        prompts = [p.text for p in started if p is not None]
        responses = self.tokenizer.batch_decode(
            [self._response_tokens(s, n) for s, n in zip(slots, lengths, strict=True)],
            skip_special_tokens=True,
        )
        score = compute_scores(self.reward_model, prompts, responses)
        return Finished(
            slots=slots,
            score=score,
            kl=kl,
            kl_coef=beta,
            logprobs=pol,
            ref_logprobs=ref,
            prompts=prompts,
            responses=responses,
            prompt_truncated=np.array([p.truncated for p in started if p is not None]),
        )

    def _response_tokens(self, slot: int, length: int) -> list[int]:
        """Response token ids of ``slot``, without the EOS that ended it."""
        P = self.max_prompt_tokens
        tokens = self.input_ids[slot, P : P + length].tolist()
        if tokens and tokens[-1] == self.eos_token_id:
            tokens.pop()
        return tokens


def slot_info(result: StepResult, i: int) -> dict[str, Any]:
    """The ``info`` dict of the ``i``-th stepped slot (the single env's info; the vector env batches it)."""
    info: dict[str, Any] = {}
    if result.token_ref_logprob is not None:
        info["ref_logprob"] = float(result.token_ref_logprob[i])
        if result.token_logprob is not None and result.token_kl is not None:
            info["logprob"] = float(result.token_logprob[i])
            info["token_kl"] = float(result.token_kl[i])
    done = result.finished
    if done is not None and result.terminated[i]:
        j = int(np.count_nonzero(result.terminated[:i]))  # index among the finished slots
        info["score"] = float(done.score[j])
        if done.kl is not None and done.logprobs is not None:
            info["kl"] = float(done.kl[j])
            info["logprobs"] = done.logprobs[j]
        info.update(
            kl_coef=done.kl_coef,
            ref_logprobs=done.ref_logprobs[j],
            prompt=done.prompts[j],
            response=done.responses[j],
            prompt_truncated=bool(done.prompt_truncated[j]),
            reward_form=REWARD_FORM if done.kl is not None else POLICY_FREE_REWARD_FORM,
        )
    return info


class EngineEnv:
    """What both env classes share: the engine built from their settings, and its parts by name."""

    engine: RLHFEngine
    task: str | None
    render_mode: str | None

    def _build_engine(self, config: EnvConfig | None, settings: dict[str, Any], num_slots: int) -> None:
        """Check the settings, fill in the task's, then build the engine (models load last)."""
        given = EnvConfig.from_kwargs(config, **settings)
        resolved = given.resolved()
        self.render_mode = resolved.render_mode
        self.task = resolved.task
        self.engine = RLHFEngine(resolved, num_slots)

    @property
    def config(self) -> EnvConfig:
        """The settings this env was made with, the task's defaults filled in."""
        return self.engine.config

    @property
    def constants(self) -> EnvConstants:
        """Token layout, temperature and special tokens, for agents (see :class:`EnvConstants`)."""
        return self.engine.constants

    @property
    def policy(self) -> Any:
        return self.engine.policy

    @property
    def reference(self) -> Any:
        return self.engine.reference

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def reward_model(self) -> Any:
        return self.engine.reward_model

    def offer_policy_logprobs(self, logprobs: Any) -> None:
        """For the next ``step``: ``log pi`` of each sub-env's next action as the caller's sampler computed it
        with this env's policy (see :meth:`RLHFEngine.offer_policy_logprobs`); saves the policy's pass."""
        self.engine.offer_policy_logprobs(logprobs)

    @property
    def kl_coef(self) -> float:
        """beta: read it, or set it (a finite number >= 0)."""
        return self.engine.kl_coef

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.engine.kl_coef = value

    def hold_kl_coef(self, hold: bool = True) -> None:
        """Keep beta still while episodes finish (``hold=False``: adapt it again after every finished batch,
        the default). Held, the env keeps each finished batch's mean KL and size instead
        (:meth:`take_held_kl`), for a caller that moves beta itself: data-parallel training applies, after
        each rollout, the controller's update for every batch that finished on any rank
        (:meth:`update_kl_coef`; the updates are products, so their order does not matter), and every rank
        pays the same beta."""
        self.engine.hold_kl_coef = bool(hold)

    def take_held_kl(self) -> list[tuple[float, int]]:
        """``(mean per-sequence KL, episodes)`` of each batch of episodes that finished while beta was held,
        since the last call (which empties the list)."""
        held, self.engine.held_kl = self.engine.held_kl, []
        return held

    def update_kl_coef(self, mean_kl: float, n_episodes: int) -> float:
        """Move beta by the adaptive controller's rule after ``n_episodes`` episodes of mean KL ``mean_kl``
        (nothing with a fixed beta); returns the new beta."""
        return self.engine.kl_ctl.update(float(mean_kl), int(n_episodes))
