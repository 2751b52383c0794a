"""A policy of real size: a GPT-2 124M-shaped model on the default task, its rollout against ``generate``.

The policy is built from GPT-2 small's shape (12 blocks, width 768, 12 heads) with the default task's
tokenizer (so its vocabulary, and its embedding, is the task's: about 86M parameters; nothing is
downloaded), randomly initialised. The reference is a frozen copy, the reward model the task's.

* **rollout**: ``PPO.collect_rollout()`` on ``gymnasium.make_vec("TextRLHF-v0", num_envs=N)``: KV-cached
  sampling with the value head, and the env's scoring (teacher-forced policy and reference, reward model);
* **generate**: transformers' ``model.generate`` on the same prompts, the same sampling (temperature, no
  top-k or top-p, the same maximum length and EOS), and nothing else;
* **generate+score**: the same, then what a generate-based trainer (trl's) does next for the same
  episodes: one teacher-forced pass of the policy and one of the reference for the log-probs, and the
  reward model.

Response tokens per second of each, interleaved, ``--repeats`` times after a warm-up; medians, with process
CPU seconds. Then ``--iterations`` PPO iterations, with the peak resident memory of the process.

    python benchmarks/real_size.py [--num-envs 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import textenv  # noqa: F401  (registers TextRLHF-v0)
from agents import PPO
from textenv import tasks
from textenv.models import load_tokenizer
from textenv.rewards import compute_scores
from textenv.scoring import response_logprobs


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_policy(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=12,
        n_embd=768,
        n_head=12,
        n_positions=1024,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


@torch.no_grad()
def generate(
    policy,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    score: Any = None,
) -> int:
    """``model.generate`` on left-padded prompts; returns the response tokens it wrote (up to EOS).

    ``score``: ``(reference, reward)`` to go on as a generate-based trainer does (trl's): one teacher-forced
    pass of the policy and one of the reference over prompt and response for their log-probs, and the
    reward model on the decoded texts."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    out = policy.generate(
        **batch,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    width = batch["input_ids"].shape[1]
    new = out[:, width:]
    ended = new == tokenizer.eos_token_id
    # tokens up to (not counting) the first EOS, as the env counts a response
    first = torch.where(ended.any(1), ended.float().argmax(1), torch.full((new.shape[0],), new.shape[1]))
    if score is not None:
        reference, reward = score
        keep = torch.arange(new.shape[1])[None, :] < first[:, None]
        mask = torch.cat([batch["attention_mask"], keep.long()], dim=1)
        response_logprobs(policy, out, mask, width, temperature)
        response_logprobs(reference, out, mask, width, temperature)
        texts = tokenizer.batch_decode([row[: int(n)] for row, n in zip(new, first, strict=True)])
        compute_scores(reward, prompts, texts)
    return int(first.sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=int, default=64, help="episodes per rollout (the batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="PPO iterations for the memory figure")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = tasks.load("reviews")
    tokenizer = load_tokenizer(task.assets / "policy")
    policy = build_policy(tokenizer)
    reference = copy.deepcopy(policy).requires_grad_(False)
    params = sum(p.numel() for p in policy.parameters())
    env = gym.make_vec(
        "TextRLHF-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        task="reviews",
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        kl_coef=0.2,
        kl_target=6.0,
    )
    agent = PPO(env, seed=0, num_minibatches=max(1, args.num_envs // 16))
    engine = env.unwrapped.engine  # type: ignore[attr-defined]
    max_new, temperature = engine.max_new_tokens, engine.temperature
    print(
        f"policy: {params / 1e6:.1f}M parameters; batch {args.num_envs}, {max_new} new tokens, "
        f"{args.threads} threads"
    )

    variants = ("rollout", "generate", "generate+score")
    timings: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    reward = engine.reward_model
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name in variants:
            cpu, start = time.process_time(), time.perf_counter()
            if name == "rollout":
                rollout = agent.collect_rollout()
                tokens = rollout.num_tokens
                prompts = rollout.prompts
            else:
                score = (reference, reward) if name == "generate+score" else None
                tokens = generate(policy, tokenizer, prompts, max_new, temperature, seed=repeat, score=score)
            wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            if repeat > 0:
                timings[name].append((wall, cpu_s, tokens))
            print(
                f"  {name:<15} {tokens:>6} tokens in {wall:6.2f} s ({cpu_s:6.2f} CPU s): "
                f"{tokens / wall:7.1f} tok/s"
            )
    rates = {name: statistics.median(t / w for w, _, t in rows) for name, rows in timings.items()}
    cpu_rates = {name: statistics.median(t / c for _, c, t in rows) for name, rows in timings.items()}
    print(f"\nmedians of {args.repeats} (load average {os.getloadavg()[0]:.1f}):")
    for name in variants:
        print(
            f"  {name:<15} {rates[name]:7.1f} tok/s; rollout / {name}: {rates['rollout'] / rates[name]:.2f} "
            f"(per CPU second {cpu_rates['rollout'] / cpu_rates[name]:.2f})"
        )
    before = peak_rss_gib()
    start = time.perf_counter()
    agent.learn(1, callback=lambda a, m: a.iterations < args.iterations)
    print(
        f"{agent.iterations} PPO iterations ({agent.num_timesteps} tokens) in "
        f"{time.perf_counter() - start:.0f} s; "
        f"peak resident memory {before:.2f} GiB before training, {peak_rss_gib():.2f} GiB after"
    )


if __name__ == "__main__":
    main()
