"""Make TextRLHF-v0 on a task (the default review task unless told) and play episodes with its policy.

    python -m textenv.demo [--task reviews] [--episodes 8] [--seed 0] [--compare-episodes 100]

Everything is offline and shipped with the package (``textenv.tasks``): a pretrained GPT-2 policy (and its
frozen copy, the reference), the task's reward (a reward model learned from preferences, or a checker),
its prompts. The policy writes the responses (sampled with a KV cache, as an agent would); the env pays
score - beta * KL; the task's gold scorer says how good each response really is.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import transformers
from transformers import PreTrainedModel

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv import tasks
from textenv.scoring import IncrementalLogprobs
from textenv.tasks import Task


def sample_episode(env: gym.Env, writer: PreTrainedModel, seed: int, generator: torch.Generator) -> dict:
    """Play one episode with actions sampled from ``writer`` (with a KV cache) at the env's temperature."""
    c = env.unwrapped.constants  # type: ignore[attr-defined]
    obs, _ = env.reset(seed=seed)
    cache = IncrementalLogprobs(writer, 1, c.prompt_width, c.max_new_tokens, c.temperature, c.pad_token_id)
    slot = torch.zeros(1, dtype=torch.long)
    reward, terminated = 0.0, False
    info: dict[str, Any] = {}
    with torch.no_grad():
        cache.prefill(
            slot,
            torch.from_numpy(obs["input_ids"][None, : c.prompt_width]),
            torch.from_numpy(obs["attention_mask"][None, : c.prompt_width]),
        )
        while not terminated:
            action = torch.multinomial(cache.next_logprobs[0].exp(), 1, generator=generator)
            _, step_reward, terminated, _, info = env.step(int(action))
            reward = float(step_reward)
            if not terminated:
                cache.advance(slot, action)
    return {"reward": float(reward), **info}


def random_episode(env: gym.Env, seed: int) -> dict:
    """Play one episode of uniformly random tokens."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    terminated, reward = False, 0.0
    info: dict[str, Any] = {}
    while not terminated:
        _, step_reward, terminated, _, info = env.step(env.action_space.sample())
        reward = float(step_reward)
    return {"reward": reward, **info}


def _with_gold(task: Task, row: dict) -> dict:
    prompt, response = [row["prompt"]], [row["response"]]
    return {
        **row,
        "gold": task.gold(prompt, response)[0],
        "success": task.evaluate(prompt, response)["success_rate"],
    }


def _means(rows: list[dict]) -> dict[str, float]:
    keys = ("score", "gold", "success", "kl", "reward")
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=tasks.names(), default="reviews", help="task to play (reviews)")
    parser.add_argument("--episodes", type=int, default=8, help="episodes to show")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and sampling")
    parser.add_argument("--compare-episodes", type=int, default=100, help="episodes per mean in the summary")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    start = time.perf_counter()
    task = tasks.load(args.task)
    env = gym.make("TextRLHF-v0", task=task.name)
    policy = env.unwrapped.policy  # type: ignore[attr-defined]
    print(
        f"TextRLHF-v0, task {task.name}: a {sum(p.numel() for p in policy.parameters()):,}-parameter GPT-2 "
        f"policy, vocabulary {env.action_space.n}, beta={env.unwrapped.kl_coef} "  # type: ignore[attr-defined]
        f"(made in {time.perf_counter() - start:.1f}s)"
    )
    print(f"{task.summary}\nsuccess: {task.success}")
    low, high = task.gold_range
    print(f"reward = score - beta * KL; gold = the task's true utility, in [{low:g}, {high:g}]\n")
    generator = torch.Generator().manual_seed(args.seed)
    rows = [
        _with_gold(task, sample_episode(env, policy, args.seed + i, generator)) for i in range(args.episodes)
    ]
    width = max(len(r["prompt"] + r["response"]) for r in rows)
    header = f"{'prompt + response (written by the policy)':<{width}}"
    print(f"{header}  {'score':>6}  {'gold':>6}  {'KL':>5}  {'reward':>6}")
    for r in rows:
        text = r["prompt"] + r["response"]
        print(f"{text:<{width}}  {r['score']:>6.2f}  {r['gold']:>6.2f}  {r['kl']:>5.2f}  {r['reward']:>6.2f}")

    n = args.compare_episodes
    print(f"\nmean over {n} episodes       score    gold  success     KL  reward")
    samples = [_with_gold(task, sample_episode(env, policy, 10_000 + i, generator)) for i in range(n)]
    randoms = [_with_gold(task, random_episode(env, 20_000 + i)) for i in range(n)]
    for name, group in (("policy's samples", samples), ("random tokens", randoms)):
        m = _means(group)
        print(
            f"{name:<22}  {m['score']:>8.2f}  {m['gold']:>6.2f}  {m['success']:>7.0%}  "
            f"{m['kl']:>5.1f}  {m['reward']:>6.2f}"
        )
    print(
        "(the policy is still its own reference, so every KL is 0, whatever the tokens: KL measures\n"
        " how far the policy has moved, and RL, in agents/, is what moves it toward higher scores.\n"
        " Random tokens are broken text: gold gives them its lowest value.)"
    )
    print(f"\ndone in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
