"""TextRLHF-v0, batched: N episodes stepped with one forward pass per model (``gymnasium.make_vec``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.config import RENDER_MODES, EnvConfig, check_int, check_options, check_prompts, check_seed
from textenv.engine import EngineEnv, StepResult, slot_info
from textenv.prompts import Prompt


def merge_infos(per_slot: Sequence[tuple[int, dict[str, Any]]], num_envs: int) -> dict[str, Any]:
    """Batch per-slot info dicts the Gymnasium vector way: ``info[key]`` is an array over slots and
    ``info["_" + key]`` a boolean mask of the slots that reported ``key``. Per-token arrays (whose length
    differs between episodes) and strings go into object arrays."""
    infos: dict[str, Any] = {}
    for slot, info in per_slot:
        for key, value in info.items():
            if key not in infos:
                if isinstance(value, bool | np.bool_):
                    infos[key] = np.zeros(num_envs, dtype=bool)
                elif isinstance(value, int | np.integer):
                    infos[key] = np.zeros(num_envs, dtype=np.int64)
                elif isinstance(value, float | np.floating):
                    infos[key] = np.zeros(num_envs, dtype=np.float64)
                else:
                    infos[key] = np.full(num_envs, None, dtype=object)
                infos["_" + key] = np.zeros(num_envs, dtype=bool)
            infos[key][slot] = value
            infos["_" + key][slot] = True
    return infos


class TextRLHFVectorEnv(EngineEnv, VectorEnv):
    """``num_envs`` episodes of :class:`~textenv.env.TextRLHFEnv`, stepped together.

    Every step makes at most one batched forward pass per model: the teacher-forced scoring of all the
    episodes that ended on that step (``kl_placement="terminal"``), or one KV-cached token step of all
    running episodes (``"per_token"``); the reward model is called once with every finished episode.
    Autoreset is ``NEXT_STEP``: the step after an episode ends resets its slot (the action is ignored,
    reward 0, ``terminated=False``) and returns the new prompt's observation.

    With seeds ``s, s+1, ...`` it gives the same trajectories as that many ``TextRLHFEnv`` reset with those
    seeds and reset again without a seed after each episode; per-token values agree to float precision
    (batched matrix products round differently). With an adaptive ``kl_coef`` the sub-environments share one
    controller, as one trainer would, so beta follows all of their episodes.

    Arguments are those of :class:`~textenv.env.TextRLHFEnv`, plus ``num_envs``. ``reset`` takes
    ``options={"prompt": text}`` (every slot), ``{"prompts": [text, ...]}`` (one per slot) and
    ``{"reset_mask": bool array}`` (reset only those slots) and ``{"group_size": k}``: the slots form
    groups of ``k`` neighbours that share one prompt (drawn by the group's first slot), which is what
    algorithms that compare several samples of a prompt need (REINFORCE leave-one-out, GRPO). Autoreset
    draws prompts slot by slot again.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012  (Gymnasium's convention: a class attribute)
        "render_modes": list(RENDER_MODES),
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(self, num_envs: int = 1, config: EnvConfig | None = None, **settings: Any):
        num_envs = check_int("num_envs", num_envs, minimum=1)  # type: ignore[assignment]
        self._build_engine(config, settings, num_slots=num_envs)
        self.num_envs = num_envs
        self.single_observation_space = self.engine.observation_space
        self.single_action_space = self.engine.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._started = False

    @property  # type: ignore[misc]
    def np_random(self) -> tuple[np.random.Generator | None, ...]:  # type: ignore[override]
        """The prompt generators of the sub-environments (a tuple, as SyncVectorEnv gives)."""
        return tuple(self._rngs)

    def _rng(self, slot: int) -> np.random.Generator:
        rng = self._rngs[slot]
        if rng is None:
            rng, _ = seeding.np_random()
            self._rngs[slot] = rng
        return rng

    def _seeds(self, seed: Any) -> list[int | None]:
        n = self.num_envs
        if seed is None:
            return [None] * n
        if isinstance(seed, Sequence | np.ndarray) and not isinstance(seed, str | bytes):
            if len(seed) != n:
                raise ValueError(f"seed has {len(seed)} entries for {n} sub-environments")
            return [check_seed(f"seed[{i}]", s) for i, s in enumerate(seed)]
        first = check_seed("seed", seed)
        assert first is not None
        return [first + i for i in range(n)]

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start new episodes (see the class docstring for ``options``).

        Everything is checked before anything changes: a bad seed, option or prompt leaves every
        sub-environment (its episode and its random generator) as it was.
        """
        n = self.num_envs
        seeds = self._seeds(seed)
        options = check_options(options, ("prompt", "prompts", "reset_mask", "group_size"))
        mask = options.get("reset_mask")
        if mask is None:
            slots = np.arange(n)
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (n,) or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({n},) with a True entry, got "
                    f"{options['reset_mask']!r:.80}"
                )
            if not self._started:
                raise ResetNeeded("the first reset must reset every sub-environment (no reset_mask)")
            slots = np.flatnonzero(mask)
        group = check_int("options['group_size']", options.get("group_size", 1), minimum=1)
        assert group is not None
        if n % group:
            raise ValueError(f"options['group_size'] must divide num_envs={n}, got {group}")
        if group > 1 and (mask is not None or options.get("prompts") is not None or options.get("prompt")):
            raise ValueError("group_size cannot be combined with reset_mask, prompt or prompts")
        texts: list[str | None] = [None] * n
        if options.get("prompts") is not None:
            texts = list(check_prompts("options['prompts']", options["prompts"], allow_callable=False))
            if len(texts) != n:
                raise ValueError(f"options['prompts'] has {len(texts)} prompts for {n} sub-environments")
        elif options.get("prompt") is not None:
            texts = [options["prompt"]] * n
        label = "options['prompts'][{}]" if options.get("prompts") is not None else "options['prompt']"
        given = {
            s: self.engine.encode_prompt(t, where=label.format(s))
            for s in slots.tolist()
            if (t := texts[s]) is not None
        }
        # draw the other prompts; a prompt callable that fails puts every generator back
        saved = [(rng, {} if rng is None else rng.bit_generator.state) for rng in self._rngs]
        try:
            prompts = self._draw(slots, seeds, group, given)
        except BaseException:
            for s, (rng, state) in enumerate(saved):
                self._rngs[s] = rng
                if rng is not None:
                    rng.bit_generator.state = state
            raise
        self.engine.reset(slots, prompts)
        self._autoreset[slots] = False
        self._started = True
        infos = merge_infos(
            [
                (s, {"prompt": p.text, "prompt_truncated": p.truncated})
                for s, p in zip(slots.tolist(), prompts, strict=True)
            ],
            n,
        )
        return self.engine.observation(slice(None)), infos

    def _draw(
        self, slots: np.ndarray, seeds: list[int | None], group: int, given: dict[int, Prompt]
    ) -> list[Prompt]:
        prompts: list[Prompt] = []
        for s in slots.tolist():
            if seeds[s] is not None:
                self._rngs[s], _ = seeding.np_random(seeds[s])
            if s % group:  # a group's other slots take its first slot's prompt
                prompts.append(prompts[-1])
            else:
                prompts.append(given[s] if s in given else self.engine.draw_prompt(self._rng(s)))
        return prompts

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise ResetNeeded("step() called before reset(); call reset() first")
        actions = self.engine.check_actions(actions, self.num_envs)
        resetting = np.flatnonzero(self._autoreset)
        stepping = np.flatnonzero(~self._autoreset)
        # draw the autoreset prompts first, so that a failing step can put the generators back
        states = {s: self._rng(s).bit_generator.state for s in resetting.tolist()}
        prompts = [self.engine.draw_prompt(self._rng(s)) for s in resetting.tolist()]
        try:
            result = self.engine.step(stepping, actions[stepping]) if stepping.size else None
        except BaseException:
            for s, state in states.items():
                self._rng(s).bit_generator.state = state
            raise
        self.engine.reset(resetting, prompts)

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        per_slot: list[tuple[int, dict[str, Any]]] = [
            (int(s), {"prompt": p.text, "prompt_truncated": p.truncated})
            for s, p in zip(resetting, prompts, strict=True)
        ]
        if result is not None:
            rewards[stepping] = result.rewards
            terminated[stepping] = result.terminated
            if result.finished is not None or result.token_ref_logprob is not None:
                per_slot += [(int(s), slot_info(result, i)) for i, s in enumerate(stepping)]
        self._autoreset = terminated.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos = merge_infos(per_slot, self.num_envs)
        return self.engine.observation(slice(None)), rewards, terminated, truncated, infos

    def play(self, actions: Any, logprobs: Any = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Play the episodes started by the last ``reset`` to their ends in one call: the same as stepping
        column ``t`` of ``actions`` (num_envs, C) at step ``t`` until every episode has ended, with the
        finished episodes scored in one batched pass rather than one per step that ends some (a sampler
        that draws whole responses first, on its device, hands them over at once: one host copy per
        rollout, not one per token). ``kl_placement="terminal"`` only.

        An episode ends at its first EOS or its ``max_new_tokens``-th token; later columns are ignored, and
        every episode must end within the ``C`` columns. Beta moves between the steps that end episodes as
        it would when stepped. ``logprobs`` (num_envs, C): the sampler's ``log pi`` of each token, as
        :meth:`offer_policy_logprobs` takes them (the policy's scoring pass is then skipped), or None.

        Returns ``rewards`` (num_envs, C) and ``terminated`` (num_envs, C), what each step would have
        returned (zero and False after an episode's end), and the terminal ``infos`` batched over slots as
        ``step`` batches them (``kl_coef`` per slot). Afterwards every slot has ended, as after its terminal
        step: the next ``step`` autoresets them, and ``reset`` starts new episodes.
        """
        if not self._started:
            raise ResetNeeded("play() called before reset(); call reset() first")
        if self._autoreset.any() or (self.engine.response_length != 0).any():
            raise ValueError("play() plays whole episodes: call reset() first (no step since)")
        array = np.asarray(actions)
        if array.ndim != 2 or array.shape[0] != self.num_envs:
            raise ValueError(f"actions must have shape ({self.num_envs}, C), got {array.shape}")
        rows, columns = array.shape
        checked = self.engine.check_actions(array.reshape(-1), array.size).reshape(rows, columns)
        offered = None
        if logprobs is not None:
            offered = np.asarray(logprobs, dtype=np.float64)
            if offered.shape != checked.shape:
                raise ValueError(
                    f"logprobs must have the shape of actions {checked.shape}, got {offered.shape}"
                )
        slots = np.arange(self.num_envs)
        played = self.engine.play(slots, checked, offered)
        last = played.lengths - 1
        rewards = np.zeros((self.num_envs, columns), dtype=np.float64)
        terminated = np.zeros((self.num_envs, columns), dtype=bool)
        rewards[slots, last] = played.rewards
        terminated[slots, last] = True
        result = StepResult(
            played.rewards, np.ones(self.num_envs, dtype=bool), played.finished, None, None, None
        )
        per_slot = []
        for i in range(self.num_envs):
            info = slot_info(result, i)
            info["kl_coef"] = float(played.kl_coef[i])
            per_slot.append((i, info))
        self._autoreset[:] = True
        return rewards, terminated, merge_infos(per_slot, self.num_envs)

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode == "ansi":
            return tuple(self.engine.text(i) for i in range(self.num_envs))
        return None
