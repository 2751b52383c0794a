"""The main job for now: make TextRLHF-v0 with small models and play a few episodes.

    python -m textenv.demo [--episodes 6] [--seed 0] [--kl-coef 0.2] [--max-new-tokens 12]

It builds everything offline in a few seconds: a tiny GPT-2 reference fitted to templated reviews, a
"fine-tuned" policy (the reference fitted further to positive reviews only, standing in for an RLHF'd
model), and a lexicon sentiment reward. The policy writes the responses (sampled with a KV cache, as an
agent would), and the env pays score - kl_coef * KL to the reference.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import transformers

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv import toy


def sample_episode(env: gym.Env, writer: torch.nn.Module, seed: int, generator: torch.Generator) -> dict:
    """Play one episode with actions sampled from ``writer`` (with a KV cache) at the env's temperature."""
    engine = env.unwrapped.engine  # type: ignore[attr-defined]
    obs, _ = env.reset(seed=seed)
    ids = torch.from_numpy(obs["input_ids"][None, : engine.max_prompt_tokens])  # (1, P)
    mask = torch.from_numpy(obs["attention_mask"][None, : engine.max_prompt_tokens])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    past, reward, terminated = None, 0.0, False
    info: dict[str, Any] = {}
    with torch.no_grad():
        while not terminated:
            out = writer(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past)
            past = out.past_key_values
            probs = (out.logits[0, -1] / engine.temperature).softmax(-1)
            action = int(torch.multinomial(probs, 1, generator=generator))
            _, step_reward, terminated, _, info = env.step(action)
            reward = float(step_reward)
            ids = torch.tensor([[action]])
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
    return {"reward": float(reward), **info}


def _means(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("score", "kl", "reward")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=6, help="episodes to play")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and sampling")
    parser.add_argument("--kl-coef", type=float, default=0.2, help="beta, the KL coefficient")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="response length limit")
    parser.add_argument("--compare-episodes", type=int, default=100, help="episodes per mean in the summary")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    start = time.perf_counter()
    tokenizer = toy.toy_tokenizer()
    reference = toy.pretrain(
        toy.toy_causal_lm(tokenizer, n_embd=64), tokenizer, toy.toy_corpus(2000), steps=300
    )
    positive = [s for s in toy.toy_corpus(4000, seed=1) if toy.lexicon_sentiment(s) > 0]
    policy = toy.pretrain(copy.deepcopy(reference), tokenizer, positive, steps=60, lr=1e-3, seed=1)
    env = gym.make(
        "TextRLHF-v0",
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        reward_model=toy.lexicon_reward,
        prompts=toy.PROMPTS,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=8,
        kl_coef=args.kl_coef,
    )
    print(
        f"TextRLHF-v0 with a {sum(p.numel() for p in policy.parameters()):,}-parameter GPT-2 policy, "
        f"vocabulary {len(tokenizer)}, beta={args.kl_coef} (built in {time.perf_counter() - start:.1f}s)"
    )
    print("reward = score - beta * KL, with score = lexicon sentiment of the response and KL in nats\n")
    generator = torch.Generator().manual_seed(args.seed)
    rows = [sample_episode(env, policy, args.seed + i, generator) for i in range(args.episodes)]
    width = max(len(r["prompt"] + r["response"]) for r in rows)
    print(f"{'prompt + response (written by the policy)':<{width}}  {'score':>6}  {'KL':>6}  {'reward':>7}")
    for r in rows:
        text = r["prompt"] + r["response"]
        print(f"{text:<{width}}  {r['score']:>6.2f}  {r['kl']:>6.2f}  {r['reward']:>7.2f}")

    n = args.compare_episodes
    print(f"\nmean over {n} episodes      score      KL   reward")
    for name, writer in (("policy's samples", policy), ("reference's samples", reference)):
        m = _means([sample_episode(env, writer, 10_000 + i, generator) for i in range(n)])
        print(f"{name:<24}  {m['score']:>6.2f}  {m['kl']:>6.2f}  {m['reward']:>7.2f}")
    print(
        "(the policy buys its higher score with KL from the reference; beta sets the price. KL is the k1\n"
        " estimate on the sampled tokens: on the reference's own samples it estimates -KL(ref || policy) < 0)"
    )
    print(f"\ndone in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
