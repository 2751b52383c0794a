"""trl's GRPO and RLOO trainers as agents of the benchmark runner (``trl-grpo``, ``trl-rloo``).

They train through :mod:`textenv.trl` (the task's prompts as a dataset, the env's reward model as a reward
function) on the same policy, prompts, response length and temperature as our agents, and the runner
judges them by the same evaluation. What is set, and why:

- ``beta`` = the env's KL coefficient at the start (0.2), fixed: trl has no adaptive controller. RLOO
  charges it as the env does (``beta * sum_t (log pi - log pi_ref)`` taken from the reward); GRPO adds
  ``beta`` times trl's per-token k3 estimate to its loss, the closest trl allows.
- the learning rate: chosen by a small sweep on the default task (see the README); trl's default (1e-6)
  is meant for billion-parameter models and does not move a 0.5M-parameter one.
- a constant learning rate (trl's default decays linearly to 0 at ``max_steps``, which a token budget
  does not fix in advance), no bf16 and no gradient checkpointing (trl's defaults, meant for GPUs).
- everything else is trl's default: 8 completions per step, GRPO 8 generations per prompt, RLOO 2, one
  gradient step per batch, gradient norm clipped at 1, AdamW.

The budget is counted in sampled response tokens (the EOS included), as the env counts its steps.
"""

from __future__ import annotations

import tempfile
from typing import Any

from agents.benchmark import AgentSpec, Evaluator, Protocol

#: The learning rate of each trl trainer in the benchmark (the best of the sweep in the README).
LEARNING_RATES = {"trl-grpo": 1e-4, "trl-rloo": 3e-4}


def trainer_classes(name: str) -> tuple[Any, Any]:
    """``(Config, Trainer)`` of a peer."""
    try:
        import trl
    except ImportError as exc:
        raise ImportError("the trl agents need trl: pip install 'textenv[peers]'") from exc
    if name == "trl-grpo":
        return trl.GRPOConfig, trl.GRPOTrainer
    if name == "trl-rloo":
        return trl.RLOOConfig, trl.RLOOTrainer
    raise ValueError(f"no trl agent {name!r}; choose trl-grpo or trl-rloo")


def run_trl(
    spec: AgentSpec,
    task: Any,
    seed: int,
    budget: int,
    train_prompts: list[str],
    eval_prompts: list[str],
    protocol: Protocol,
) -> dict[str, Any]:
    """Train ``spec`` (a trl trainer) on ``task`` for ``budget`` response tokens; the runner's outcome."""
    import torch
    from transformers import TrainerCallback

    from agents.base import DEFAULT_ENV_KWARGS
    from agents.evaluation import eval_env_like
    from textenv.trl import for_trl

    config_class, trainer_class = trainer_classes(spec.name)
    torch.manual_seed(seed)
    parts = for_trl(task=task.name, prompts=train_prompts, kl_coef=DEFAULT_ENV_KWARGS["kl_coef"])
    eval_env = eval_env_like(parts.env, parts.policy, min(256, protocol.eval_episodes), task, eval_prompts)
    evaluator = Evaluator(task, eval_env, protocol.eval_episodes, budget, protocol.eval_points)
    reward = parts.reward
    history: list[dict[str, float]] = []

    class Budget(TrainerCallback):
        """Evaluate at the protocol's points and stop at the budget, counting sampled response tokens."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            target = evaluator.next_target
            if target is not None and reward.completion_tokens >= target:
                evaluator.train_cpu, evaluator.train_wall = clock.stop()
                evaluator.evaluate(parts.policy, reward.completion_tokens, beta)
                clock.start()
            if reward.completion_tokens >= budget:
                control.should_training_stop = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            keep = {k: float(v) for k, v in (logs or {}).items() if k in ("reward", "kl", "entropy", "loss")}
            history.append({"charts/timesteps": float(reward.completion_tokens), **keep})

    settings = {"learning_rate": LEARNING_RATES[spec.name]} | spec.settings
    with tempfile.TemporaryDirectory(prefix="textenv-trl-") as output_dir:
        args = config_class(
            **parts.trl_settings(),
            output_dir=output_dir,
            seed=seed,
            max_steps=10 * budget,  # the callback stops at the budget long before
            lr_scheduler_type="constant",
            logging_steps=10,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **settings,
        )
        beta = float(args.beta)
        trainer = trainer_class(
            model=parts.policy,
            processing_class=parts.tokenizer,
            reward_funcs=reward,
            train_dataset=parts.dataset,
            args=args,
            callbacks=[Budget()],
        )
        clock = _Clock()
        evaluator.evaluate(parts.policy, 0, beta)
        clock.start()
        trainer.train()
        evaluator.train_cpu, evaluator.train_wall = clock.stop()
        if evaluator.next_target is not None:  # the data ran out before the budget (not with max_steps)
            evaluator.evaluate(parts.policy, reward.completion_tokens, beta)
    keep = (
        "learning_rate", "beta", "num_generations", "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "steps_per_generation", "num_iterations", "epsilon", "loss_type", "scale_rewards", "max_grad_norm",
        "max_completion_length", "temperature", "top_k", "top_p", "lr_scheduler_type", "seed",
    )  # fmt: skip
    return {
        "curve": evaluator.curve,
        "config": {k: getattr(args, k) for k in keep if hasattr(args, k)},
        "history": history,
    }


class _Clock:
    """Training time, CPU and wall, accumulated over the stretches between evaluations."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self._since: tuple[float, float] | None = None

    def start(self) -> None:
        import time

        self._since = (time.process_time(), time.perf_counter())

    def stop(self) -> tuple[float, float]:
        import time

        if self._since is not None:
            self.cpu += time.process_time() - self._since[0]
            self.wall += time.perf_counter() - self._since[1]
            self._since = None
        return self.cpu, self.wall
