"""What the agents share: the SB3-shaped surface (``learn``, ``predict``, ``save``, ``load``), the
config plumbing, seeding and the training loop. Each agent file adds its config fields and ``update``.

A saved agent is a directory::

    policy/             the policy as a plain transformers model + its tokenizer (safetensors); a LoRA
                        policy's adapters in peft's format (its base is the env's, rebuilt from its settings)
    critic/             the separate critic LM, if there is one
    agent.safetensors   value head, and the RNG state of the sampler (of every rank, data-parallel)
    optimizer.pt        the optimizer's state dict (loaded with ``weights_only=True``)
    state.json          agent class, config, seed, counters, beta, numpy RNG state, metric history
    manifest.json       every file's size and sha256, written last: ``load`` refuses a folder that fails it

A save is atomic (written under a temporary name, flushed, renamed into place), so a run killed while
saving keeps its previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from agents import distributed
from agents.callbacks import CallbackLike, make_callback
from agents.core import masked_whiten, sample_tokens
from agents.policy import ActorCritic, Critic
from agents.rollout import Exploration, Rollout, collect, constants_of
from textenv.atomic import atomic_folder, verify_manifest
from textenv.config import check_bool, check_float, check_int
from textenv.errors import CheckpointError
from textenv.lora import is_peft_model
from textenv.models import evaluating, quiet_loading
from textenv.scoring import position_ids

#: Settings of the env an agent makes for itself from an id (lm-human-preferences' adaptive KL).
DEFAULT_ENV_KWARGS: dict[str, Any] = {"kl_coef": 0.2, "kl_target": 6.0, "kl_horizon": 10_000}

#: What ``learn`` takes as a callback: a :class:`agents.callbacks.BaseCallback`, a plain function
#: ``callback(agent, metrics) -> bool | None`` (returning False stops ``learn``), or a list of them.
Callback = CallbackLike


def option(default: Any, help: str) -> Any:
    """A config field with its help text (shown by ``describe_config`` and the command line)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class AgentConfig:
    """Settings every agent has."""

    num_envs: int = option(
        256,
        "episodes per iteration: sub-envs of the vector env made from an env id (the global batch of a "
        "data-parallel run, split evenly over its processes)",
    )
    learning_rate: float = option(1e-4, "Adam step size")
    lr_final: float | None = option(None, "decay the step size linearly to this (None = constant)")
    lr_decay_timesteps: int | None = option(
        None, "timesteps over which it reaches lr_final (unused if lr_final is None)"
    )
    adam_eps: float = option(1e-5, "Adam epsilon")
    max_grad_norm: float = option(1.0, "clip the gradient's global norm to this (0 = no clipping)")
    ent_coef: float = option(0.0, "weight of the entropy bonus (mean per-token entropy) in the loss")
    top_k: int = option(0, "predict(): sample among the k most likely tokens only (0 = all)")
    top_p: float = option(1.0, "predict(): sample from the smallest set of tokens with this mass")
    env_kwargs: dict = option(DEFAULT_ENV_KWARGS, "arguments of the env made from an env id")  # noqa: RUF009
    mixed_precision: str = option(
        "no",
        "'bf16' or 'fp16': the models' forward passes (rollout, env scoring, update) under torch.autocast, "
        "log-probs, ratios and KL still in float32 (fp16 with a gradient scaler); 'no': full precision",
    )
    gradient_checkpointing: bool = option(
        False, "recompute the policy's activations in the update's backward pass (less memory, more compute)"
    )

    def __post_init__(self) -> None:
        """Check every field by its declared type (and the ranges a few must keep), naming it: a wrong type
        is a ``TypeError``, a NaN, an infinity or a value out of range a ``ValueError``."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = kind.endswith("| None")
            if kind.startswith("float"):
                number = check_float(
                    f.name, value, optional=optional, above=0.0 if f.name in _POSITIVE else None
                )
                if number is not None and f.name in _UNIT_INTERVAL and not 0.0 <= number <= 1.0:
                    raise ValueError(f"{f.name} must be in [0, 1], got {number}")
                setattr(self, f.name, number)
            elif kind.startswith("int"):
                check_int(f.name, value, minimum=1 if f.name in _POSITIVE else 0, optional=optional)
            elif kind == "bool":
                check_bool(f.name, value)
            elif kind == "str" and not isinstance(value, str):
                raise TypeError(f"{f.name} must be a string, got {type(value).__name__} {value!r:.60}")
            elif kind == "dict" and not isinstance(value, dict):
                raise TypeError(f"{f.name} must be a dict, got {type(value).__name__}")
        if self.lr_final is not None and self.lr_decay_timesteps is None:
            raise ValueError(
                f"lr_final={self.lr_final} needs lr_decay_timesteps, the response tokens over which the "
                "learning rate decays to it (or lr_final=None for a constant learning rate)"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {sorted(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.lr_final is not None and self.lr_final < 0:
            raise ValueError(f"lr_final must be >= 0, got {self.lr_final}")
        if self.lr_decay_timesteps is not None and self.lr_decay_timesteps < 1:
            raise ValueError(f"lr_decay_timesteps must be >= 1, got {self.lr_decay_timesteps}")


#: Settings that must be > 0 (floats) or >= 1 (integers), and settings that are shares in [0, 1].
_POSITIVE = {
    "learning_rate",
    "adam_eps",
    "num_envs",
    "num_epochs",
    "num_minibatches",
    "minibatch_size",
    "group_size",
}
_UNIT_INTERVAL = {"gamma", "lam", "baseline_decay", "top_p"}


HALF = {"bfloat16", "float16"}

#: ``mixed_precision`` settings and the dtype each autocasts to.
MIXED_PRECISION: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def describe_config(config_class: type) -> str:
    """One line per field: name, default and help."""
    lines = []
    for f in fields(config_class):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        lines.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def make_env(env_id: str = "TextRLHF-v0", num_envs: int = 256, **kwargs: Any) -> gym.vector.VectorEnv:
    """The batched env an agent trains on, with the adaptive-KL defaults unless ``kwargs`` say otherwise."""
    import textenv  # noqa: F401  (registers TextRLHF-v0)

    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **(DEFAULT_ENV_KWARGS | kwargs)
    )


class Agent:
    """Base class: build with ``Agent(env, seed=0, **config)``; see PPO, GRPO, REINFORCE, EpsilonGreedyPPO."""

    Config: ClassVar[type[AgentConfig]] = AgentConfig

    def __init__(self, env: gym.vector.VectorEnv | str, seed: int = 0, **config: Any):
        names = {f.name for f in fields(self.Config)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no setting {', '.join(unknown)}; its settings are: "
                f"{', '.join(sorted(names))}"
            )
        self.config = self.Config(**config)
        # data parallelism (agents.distributed): this process is rank `rank` of `world_size`, each stepping
        # num_envs / world_size sub-envs of the global batch
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if isinstance(env, str):
            if self.config.num_envs % self.world_size:
                raise ValueError(
                    f"num_envs={self.config.num_envs} (the global batch) must split evenly over the "
                    f"{self.world_size} processes of this run"
                )
            local = self.config.num_envs // self.world_size
            env = make_env(env, num_envs=local, **self.config.env_kwargs)
        elif "num_envs" in config and config["num_envs"] != getattr(env, "num_envs", 0) * self.world_size:
            raise ValueError(
                f"num_envs={config['num_envs']} but the env given has {getattr(env, 'num_envs', None)} "
                f"sub-envs{f' on each of {self.world_size} processes' if self.world_size > 1 else ''}; "
                "num_envs only sizes the env an agent makes from an env id"
            )
        else:
            self.config.num_envs = int(getattr(env, "num_envs", self.config.num_envs)) * self.world_size
        self.env = env
        if self.world_size > 1:  # beta moves once per rollout, with the KL of every rank's episodes
            env.unwrapped.hold_kl_coef(True)  # type: ignore[attr-defined]
        self.constants = constants_of(env)
        critic: Critic = getattr(self.config, "critic", "none")  # agents with a value function configure it
        self.model = ActorCritic(env.unwrapped.policy, critic=critic)  # type: ignore[attr-defined]
        self.device = next(self.model.policy.parameters()).device
        self.optimizer = torch.optim.Adam(
            self.trainable_parameters(), lr=self.config.learning_rate, eps=self.config.adam_eps
        )
        self.autocast_dtype = MIXED_PRECISION[self.config.mixed_precision]
        self._check_frozen_dtypes(env)
        # fp16's narrow range needs the loss scaled up before backward (bf16 has float32's range)
        self.grad_scaler = (
            torch.amp.GradScaler(self.device.type) if self.config.mixed_precision == "fp16" else None
        )
        if self.config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model.policy)
        self.seed = int(seed)
        rank_seed = distributed.rank_seed(self.seed, self.rank)  # the seed itself on rank 0
        self.generator = torch.Generator(self.device).manual_seed(rank_seed)  # sampling and shuffling
        self.np_rng = np.random.default_rng(rank_seed)  # the env's prompt seeds
        # every rank's RNG states as of the end of the latest iteration, gathered there (rank 0 saves them)
        self._rank_rng_states: list[dict[str, Any]] | None = None
        self.num_timesteps = 0  # response tokens trained on, summed over sub-envs
        self.iterations = 0
        self.history: list[dict[str, float]] = []
        self.last_rollout: Rollout | None = None  # what the latest iteration trained on (for callbacks)

    # ------------------------------------------------------------------ pieces the agents fill in
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _check_frozen_dtypes(self, env: gym.vector.VectorEnv) -> None:
        """Warn when weights that train are in half precision (a policy object given in bf16), and refuse
        frozen weights held in one half precision while autocast computes in the other: every pass would
        cast them again (what ``frozen_dtype`` is for is sparing that), and on CPU a layer norm refuses
        half-precision weights under autocast to the other."""
        half = sorted({str(p.dtype).removeprefix("torch.") for p in self.trainable_parameters()} & HALF)
        if half:
            warnings.warn(
                f"the policy trains weights held in {', '.join(half)}: Adam's steps smaller than their "
                "rounding are lost. Load it in float32 (a path or hub name loads so) and set "
                "mixed_precision for bf16 speed",
                stacklevel=3,
            )
        if self.autocast_dtype is None:
            return
        models = (self.model.policy, env.unwrapped.reference)  # type: ignore[attr-defined]
        held = {
            p.dtype
            for m in models
            for p in m.parameters()
            if not p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)
        }
        other = sorted(str(dtype).removeprefix("torch.") for dtype in held - {self.autocast_dtype})
        if other:
            name = str(self.autocast_dtype).removeprefix("torch.")
            raise ValueError(
                f"the frozen weights are held in {', '.join(other)} and mixed_precision="
                f"{self.config.mixed_precision!r} computes in {name}: hold them in {name} "
                f"(the env's frozen_dtype={name!r}) or in float32, or choose the matching mixed_precision"
            )

    def exploration(self) -> Exploration | None:
        """The behaviour policy's extra exploration (None: sample from the policy itself)."""
        return None

    def group_size(self) -> int:
        """Sub-envs per prompt in a rollout (1: every sub-env draws its own prompt)."""
        return 1

    def update(self, rollout: Rollout) -> dict[str, float]:
        """Learn from one rollout; return the update's metrics."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond weights, optimizer and RNGs (e.g. a moving-average baseline)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def learning_rate_now(self) -> float:
        """The step size for the next update: ``learning_rate``, or linear from it to ``lr_final`` over the
        first ``lr_decay_timesteps`` response tokens and ``lr_final`` after (it follows ``num_timesteps``,
        so a resumed agent goes on where it stopped)."""
        c = self.config
        if c.lr_final is None or c.lr_decay_timesteps is None:
            return c.learning_rate
        progress = min(1.0, self.num_timesteps / c.lr_decay_timesteps)
        return c.learning_rate + (c.lr_final - c.learning_rate) * progress

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """Backpropagate ``loss``, clip the global gradient norm, step; returns the norm before clipping.

        In a data-parallel run the gradients are averaged over the ranks first, so every rank takes the
        same step."""
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.grad_scaler
        with torch.autocast(self.device.type, enabled=False):  # autocast covers the forward passes only
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if self.world_size > 1:
                distributed.average_gradients(self.trainable_parameters())
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            params = [p for p in self.trainable_parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))
            if scaler is not None:  # skips the step when fp16 overflowed (on every rank alike)
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
        if self.autocast_dtype is not None:
            torch.clear_autocast_cache()  # a cast copy of a weight from before this step is stale now
        return float(norm)

    def autocast(self, cache: bool = True) -> Any:
        """The context of the models' forward passes: ``torch.autocast`` to ``mixed_precision``'s dtype, or
        nothing (``mixed_precision='no'``).

        ``cache``: keep each trainable weight's low-precision copy for the whole region (autocast's weight
        cache). Right for a rollout, whose weights do not change and whose every token reads them again;
        wrong for an update, whose optimizer steps change the weights inside the region: the update's
        region runs without it (``cache=False``), and :meth:`optimizer_step` empties the cache besides."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def update_mode(self) -> None:
        """Put the policy in the mode of the update's passes: eval (no dropout, so that the ratio compares
        like with like), or, with gradient checkpointing, train mode (transformers checkpoints in train mode
        only) with its dropout already set to zero (:func:`enable_gradient_checkpointing`)."""
        self.model.policy.train(self.config.gradient_checkpointing)

    def local_minibatch(self, size: int) -> int:
        """This rank's share of a minibatch of ``size`` episodes (``minibatch_size`` counts episodes of the
        global batch: each of ``world_size`` ranks takes ``size // world_size`` of its own, at least one)."""
        return max(1, size // self.world_size)

    def reduce_mean(self, value: float) -> float:
        """``value`` averaged over the ranks of a data-parallel run (itself in one process)."""
        return value if self.world_size == 1 else distributed.all_reduce_mean([value])[0]

    def whiten(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`~agents.core.masked_whiten` over the global batch: in a data-parallel run the mean and the
        (Bessel-corrected) variance are those of every rank's masked entries, as one process holding the
        whole batch computes them."""
        if self.world_size == 1:
            return masked_whiten(values, mask)
        count, total = distributed.all_reduce_sum([float(mask.sum()), float((values * mask).sum())])
        mean = total / max(count, 1.0)
        (squares,) = distributed.all_reduce_sum([float(((values - mean) ** 2 * mask).sum())])
        var = squares / (count - 1) if count > 1 else squares / max(count, 1.0)
        return masked_whiten(values, mask, moments=(mean, var))

    def global_token_mean(self, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``loss``, a mean over this rank's masked tokens of a minibatch, rescaled so that averaging the
        ranks' gradients gives the gradient of the mean over every rank's tokens, as one process holding
        the whole minibatch computes it (ranks whose share has more tokens weigh more). Unchanged in one
        process."""
        if self.world_size == 1:
            return loss
        local = float(mask.sum())
        (total,) = distributed.all_reduce_sum([local])
        return loss * (local * self.world_size / max(total, 1.0))

    def batch_std(self, values: torch.Tensor) -> float:
        """The (Bessel-corrected) standard deviation of ``values`` over every rank's entries."""
        if self.world_size == 1:
            return float(values.std())
        count, total = distributed.all_reduce_sum([float(values.numel()), float(values.sum())])
        mean = total / max(count, 1.0)
        (squares,) = distributed.all_reduce_sum([float(((values - mean) ** 2).sum())])
        return (squares / max(count - 1, 1.0)) ** 0.5

    # ------------------------------------------------------------------ training
    def collect_rollout(self) -> Rollout:
        """One episode per sub-env with the current policy (prompts seeded from the agent's RNG).

        In a data-parallel run beta holds still during the rollout; after it, every rank applies the KL
        controller's update for each batch of episodes that finished on any rank, in rank order (as one
        process would have for its own batches), so that beta stays the same everywhere."""
        rollout = self._collect()
        if self.world_size > 1:
            env = self.env.unwrapped
            for batches in distributed.gather_objects(env.take_held_kl()):  # type: ignore[attr-defined]
                for mean_kl, count in batches:
                    env.update_kl_coef(mean_kl, count)  # type: ignore[attr-defined]
        return rollout

    def _collect(self) -> Rollout:
        exploration = self.exploration()
        with self.autocast():
            return self._collect_with(exploration)

    def _collect_with(self, exploration: Exploration | None) -> Rollout:
        return collect(
            self.env,
            self.model,
            generator=self.generator,
            seed=int(self.np_rng.integers(2**31)),
            group_size=self.group_size(),
            exploration=exploration,
            reference=self.env.unwrapped.reference if exploration is not None else None,  # type: ignore[attr-defined]
        )

    def learn(self, total_timesteps: int, callback: Callback = None, progress_bar: bool = False) -> Agent:
        """Train for ``total_timesteps`` more response tokens (summed over sub-envs); one iteration is a
        rollout of one episode per sub-env followed by an update.

        ``callback``: a :class:`agents.callbacks.BaseCallback` (SB3's shape; one step is one iteration), a
        function ``(agent, metrics)``, or a list of them; training stops early when one returns False.
        """
        hook = make_callback(callback)
        goal = self.num_timesteps + int(total_timesteps)
        bar = tqdm(
            total=int(total_timesteps),
            unit="tok",
            disable=not progress_bar or self.rank != 0,
            dynamic_ncols=True,
        )
        if hook is not None:
            hook.init_callback(self)
            hook.on_training_start()
        try:
            while self.num_timesteps < goal:
                start = time.perf_counter()
                rollout = self.collect_rollout()
                self.last_rollout = rollout
                rolled = time.perf_counter()
                lr = self.learning_rate_now()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.autocast(cache=False):  # the weights change inside: no cast copies kept
                    metrics = self.update(rollout)
                done = time.perf_counter()
                metrics = {**rollout_metrics(rollout), **metrics}
                tokens = rollout.num_tokens
                if self.world_size > 1:  # means over the ranks; episodes and tokens summed
                    metrics["charts/tokens"] = float(tokens)
                    metrics = distributed.reduce_metrics(metrics, sums=("charts/episodes", "charts/tokens"))
                    tokens = round(metrics.pop("charts/tokens"))
                    self._rank_rng_states = distributed.gather_objects(self.rng_state())
                self.num_timesteps += tokens
                self.iterations += 1
                metrics |= {
                    "charts/iteration": float(self.iterations),
                    "charts/timesteps": float(self.num_timesteps),
                    "charts/rollout_seconds": rolled - start,
                    "charts/env_seconds": rollout.env_seconds,  # the env's share of it (scoring included)
                    "charts/update_seconds": done - rolled,
                    "charts/tokens_per_second": tokens / max(done - start, 1e-9),
                }
                self.history.append(metrics)
                bar.update(min(tokens, bar.total - bar.n))
                bar.set_postfix(
                    score=f"{metrics['objective/scores']:.2f}", kl=f"{metrics['objective/kl']:.2f}"
                )
                stop = hook is not None and not hook.on_step(metrics)
                if self.world_size > 1:  # a callback of one rank (rank 0's logger) stops them all
                    stop = distributed.any_rank(stop)
                if stop:
                    break
        finally:
            bar.close()
        if hook is not None:
            hook.on_training_end()
        return self

    # ------------------------------------------------------------------ acting
    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """The next token for an observation of ``TextRLHF-v0`` (one, or a batch with a leading axis).

        Samples at the env's temperature (with this agent's ``top_k``/``top_p``), or takes the most likely
        token with ``deterministic=True``. Each call runs the policy over the whole observation (no cache,
        as SB3's stateless ``predict``); to write whole responses quickly use ``agents.rollout.collect``.
        Returns ``(actions, None)`` as SB3 does; ``state`` and ``episode_start`` are accepted for
        compatibility and ignored.
        """
        ids = torch.as_tensor(np.asarray(observation["input_ids"]), dtype=torch.long)
        mask = torch.as_tensor(np.asarray(observation["attention_mask"]), dtype=torch.long)
        single = ids.dim() == 1
        width = ids.shape[-1]
        ids, mask = ids.reshape(-1, width).to(self.device), mask.reshape(-1, width).to(self.device)  # (B, L)
        P = self.constants.prompt_width
        last = P - 1 + mask[:, P:].sum(-1)  # column of the latest token, whose logits predict the next
        with evaluating(self.model.policy):
            positions = position_ids(mask)
            logits = self.model.policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logits = logits[torch.arange(ids.shape[0], device=self.device), last].float()  # (B, V)
        actions = sample_tokens(
            logits,
            temperature=0.0 if deterministic else self.constants.temperature,
            top_k=self.config.top_k,
            top_p=self.config.top_p,
            generator=self.generator,
        ).cpu()
        out = actions.numpy()
        return (out[0] if single else out), None

    # ------------------------------------------------------------------ saving
    def rng_state(self) -> dict[str, Any]:
        """This rank's RNG states: the sampler's (a byte tensor) and the prompt seeds' (numpy's dict)."""
        return {"sampler": self.generator.get_state(), "np_rng": self.np_rng.bit_generator.state}

    def all_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's :meth:`rng_state`, rank 0's as it is now and the others' as of the end of the latest
        iteration (gathered there, so that rank 0 can save without waiting for the others); before any,
        the states every rank's seed starts them in."""
        if self.world_size == 1:
            return [self.rng_state()]
        states = self._rank_rng_states
        if states is None:
            states = []
            for r in range(self.world_size):
                seed = distributed.rank_seed(self.seed, r)
                states.append(
                    {
                        "sampler": torch.Generator(self.device).manual_seed(seed).get_state(),
                        "np_rng": np.random.default_rng(seed).bit_generator.state,
                    }
                )
        return [self.rng_state(), *states[1:]]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write everything needed to resume exactly (see the module docstring); returns the directory.

        The folder is written under a temporary name, listed in ``manifest.json``, flushed to disk and then
        renamed to ``path`` (replacing an earlier save): a save killed half-way leaves the earlier one.
        In a data-parallel run rank 0 alone writes (the weights are the same on every rank) and the folder
        holds every rank's RNG states; other ranks return ``path`` without writing.
        """
        path = Path(path)
        if self.rank != 0:
            return path
        rng_states = self.all_rng_states()
        with atomic_folder(path, marker=STATE_FILE) as tmp, quiet_loading():
            self.model.policy.save_pretrained(tmp / "policy", safe_serialization=True)
            self.env.unwrapped.tokenizer.save_pretrained(tmp / "policy")  # type: ignore[attr-defined]
            if self.model.critic_model is not None:
                self.model.critic_model.save_pretrained(tmp / "critic", safe_serialization=True)
            tensors = {"rng/sampler": self.generator.get_state()}
            for r, rank_state in enumerate(rng_states[1:], start=1):
                tensors[f"rng/sampler/rank{r}"] = rank_state["sampler"]
            if self.model.value_head is not None:
                tensors.update(
                    {f"value_head/{k}": v.contiguous() for k, v in self.model.value_head.state_dict().items()}
                )
            save_file(tensors, tmp / "agent.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            state = {
                "agent": type(self).__name__,
                "config": asdict(self.config),
                "seed": self.seed,
                "num_timesteps": self.num_timesteps,
                "iterations": self.iterations,
                "kl_coef": self.env.unwrapped.kl_coef,  # type: ignore[attr-defined]
                "np_rng": self.np_rng.bit_generator.state,
                "world_size": self.world_size,
                "np_rng_ranks": [rank_state["np_rng"] for rank_state in rng_states[1:]],
                "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                "extra": self.extra_state(),
                "history": self.history,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: gym.vector.VectorEnv | str, **overrides: Any) -> Agent:
        """Rebuild a saved agent on ``env`` and put back its weights, optimizer, RNGs, counters and beta.

        ``env`` should be made as the saved run's was (same reference, reward model and prompts); an env id
        is made with the saved ``num_envs`` and ``env_kwargs``. The env's policy object receives the saved
        weights in place, last: every file is read and checked first (against the folder's manifest, then
        against the agent's shapes), so a refused checkpoint leaves the caller's policy as it was.
        ``overrides`` change config fields (e.g. a new learning rate).

        Raises:
            CheckpointError: a file of the folder is missing, truncated, altered or unreadable (named).
        """
        path = Path(path)
        verify_manifest(path)
        state = _read(path / STATE_FILE, lambda f: json.loads(f.read_text(encoding="utf-8")))
        if state.get("agent") not in AGENTS:
            raise CheckpointError(f"{path / STATE_FILE} names no known agent: {state.get('agent')!r}")
        if state["agent"] != cls.__name__ and cls is not Agent:
            raise TypeError(f"{path} holds a {state['agent']}, not a {cls.__name__}")
        kl_coef = state.get("kl_coef")
        if not isinstance(kl_coef, int | float) or not math.isfinite(kl_coef) or kl_coef < 0:
            raise CheckpointError(f"{path / STATE_FILE} has kl_coef={kl_coef!r}, not a finite number >= 0")
        saved_world = int(state.get("world_size", 1))
        if saved_world != distributed.world_size():
            raise CheckpointError(
                f"{path} was saved by a run of {saved_world} process(es) and this one has "
                f"{distributed.world_size()}: every rank has its own RNG streams, so resume it with "
                f"{saved_world} (torchrun --nproc_per_node {saved_world} ...)"
            )
        policy_weights = _read(path / "policy", _state_dict_of)
        critic_weights = _read(path / "critic", _state_dict_of) if (path / "critic").exists() else None
        tensors = _read(path / "agent.safetensors", load_file)
        optimizer_state = _read(path / "optimizer.pt", lambda f: torch.load(f, weights_only=True))

        agent_class = AGENTS[state["agent"]] if cls is Agent else cls
        config = state["config"] | overrides
        if not isinstance(env, str) and "num_envs" not in overrides:
            config.pop("num_envs")  # the env given decides
        agent = agent_class(env, seed=state["seed"], **config)
        _check_shapes(agent.model.policy, policy_weights, path / "policy")
        if agent.model.critic_model is not None:
            if critic_weights is None:
                raise CheckpointError(f"{path / 'critic'} is missing: the agent has a separate critic")
            _check_shapes(agent.model.critic_model, critic_weights, path / "critic")
        # the agent's own objects first; the env's policy, shared with the caller, last
        try:
            agent.optimizer.load_state_dict(optimizer_state)
            if agent.model.value_head is not None:
                agent.model.value_head.load_state_dict(
                    {
                        k.removeprefix("value_head/"): v
                        for k, v in tensors.items()
                        if k.startswith("value_head/")
                    }
                )
            rank_states = [{"sampler": tensors["rng/sampler"], "np_rng": state["np_rng"]}] + [
                {"sampler": tensors[f"rng/sampler/rank{r}"], "np_rng": state["np_rng_ranks"][r - 1]}
                for r in range(1, saved_world)
            ]
            if agent.grad_scaler is not None and state.get("grad_scaler"):
                agent.grad_scaler.load_state_dict(state["grad_scaler"])
            agent.generator.set_state(rank_states[agent.rank]["sampler"])
            agent.np_rng.bit_generator.state = rank_states[agent.rank]["np_rng"]
            if saved_world > 1:
                agent._rank_rng_states = rank_states
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CheckpointError(
                f"{path} does not fit a {agent_class.__name__} on this env: {error}"
            ) from None
        for group in agent.optimizer.param_groups:  # an override of the learning rate wins
            group["lr"] = agent.config.learning_rate
        if agent.model.critic_model is not None and critic_weights is not None:
            agent.model.critic_model.load_state_dict(critic_weights)
        _load_policy_weights(agent.model.policy, policy_weights)
        agent.num_timesteps = int(state["num_timesteps"])
        agent.iterations = int(state["iterations"])
        agent.history = list(state["history"])
        agent.env.unwrapped.kl_coef = float(kl_coef)  # type: ignore[attr-defined]
        agent.load_extra_state(state["extra"])
        return agent


STATE_FILE = "state.json"


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with any failure a :class:`CheckpointError` that names ``path``."""
    try:
        return reader(path)
    except Exception as error:
        raise CheckpointError(f"cannot read {path}: {type(error).__name__}: {error}") from error


def _state_dict_of(folder: Path) -> dict[str, torch.Tensor]:
    """The weights a saved model folder holds: a transformers model's, or a LoRA policy's adapters (peft's
    ``adapter_model.safetensors``, beside ``adapter_config.json``)."""
    if (folder / "adapter_config.json").is_file():
        return dict(load_file(folder / "adapter_model.safetensors"))
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    return dict(model.state_dict())


def _saved_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of ``model``: its state dict, or a LoRA policy's adapters only (the base
    weights are the env's own policy, frozen: the env rebuilds them from its settings)."""
    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))
    return dict(model.state_dict())


def _load_policy_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        model.load_state_dict(weights)


def _check_shapes(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights whose names or shapes are not the model's, before copying any of them."""
    expected = _saved_state(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
            if names
        )
        raise CheckpointError(f"the weights in {source} do not fit this env's policy ({details})")


def enable_gradient_checkpointing(policy: Any) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant, so frozen embeddings and LoRA work) and
    set every dropout of the policy to zero: checkpointing acts in train mode only, and the agents never
    train with dropout."""
    kwargs = {"use_reentrant": False}
    if not getattr(policy, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(policy).__name__} does not support gradient checkpointing")
    if hasattr(policy, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        policy.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """What the env reported about a rollout's episodes."""
    returns = rollout.rewards.sum(-1)
    return {
        "objective/scores": float(rollout.scores.mean()),
        "objective/kl": float(rollout.kl.mean()),
        "objective/kl_coef": rollout.kl_coef,
        "objective/rlhf_reward": float(returns.mean()),
        "charts/episode_length": float(rollout.lengths.mean()),
        "charts/episodes": float(rollout.num_episodes),
    }


AGENTS: dict[str, type[Agent]] = {}


def register_agent(cls: type[Agent]) -> type[Agent]:
    """Make a class known to ``Agent.load`` (which then rebuilds whatever agent a directory holds)."""
    AGENTS[cls.__name__] = cls
    return cls
