"""What the environment costs on top of the scoring RLHF has to do anyway.

N episodes of T tokens with random actions (EOS excluded, so every episode is T tokens long) through
``gymnasium.make_vec("TextRLHF-v0", num_envs=N)``, against, on the same token sequences:

(a) direct:  the scoring done straight on the models: one teacher-forced pass of policy and reference,
             the KL, decoding and the reward model. The env cannot beat this; ratio = direct / env.
(b) naive:   a per-step vector env that re-runs the full prefix of policy and reference at every step to
             get each token's log-probs (O(T^2)); ratio = naive / env, how many times slower it is.

plus the env with ``kl_placement="per_token"`` (KV-cached, one token per step) for reference.
Every variant runs ``--repeats`` times, interleaved, after a warm-up; the table gives medians.

    python benchmarks/env_overhead.py [--num-envs 64] [--tokens 32] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import numpy as np
import torch
import transformers
from tqdm import tqdm

import textenv  # noqa: F401
from textenv import toy
from textenv.kl import k1
from textenv.models import evaluating
from textenv.rewards import ClassifierReward, compute_scores
from textenv.scoring import position_ids, response_logprobs


def build(args: argparse.Namespace) -> dict:
    # letters only: GPT-2's pre-tokenizer would split a word like "w12" into "w" and "12"
    words = [
        "".join("abcdefghijklmnopqrstuvwxyz"[(i // 26**k) % 26] for k in range(3))
        for i in range(args.vocab // 2)
    ]
    tokenizer = toy.toy_tokenizer(words)
    sizes = {"n_layer": args.layers, "n_embd": args.width, "n_head": max(1, args.width // 64)}
    policy = toy.toy_causal_lm(tokenizer, seed=1, **sizes).to(args.device)
    reference = toy.toy_causal_lm(tokenizer, seed=0, **sizes).to(args.device)
    rm_tokenizer = toy.toy_tokenizer(words[::-1])  # its own tokenizer: text is re-tokenised
    classifier = toy.toy_classifier(rm_tokenizer, seed=2, n_layer=2, n_embd=128, n_head=2).to(args.device)
    reward = ClassifierReward(classifier, rm_tokenizer, batch_size=args.num_envs)
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(words, size=args.prompt_tokens)) for _ in range(256)]
    eos = tokenizer.eos_token_id
    actions = rng.integers(3, len(tokenizer), size=(args.tokens, args.num_envs))  # ids 0-2: pad, eos, unk
    assert not (actions == eos).any()
    return dict(
        tokenizer=tokenizer,
        policy=policy,
        reference=reference,
        reward=reward,
        prompts=prompts,
        actions=actions,
        params=sum(p.numel() for p in policy.parameters()),
    )


def make_env(setup: dict, args: argparse.Namespace, placement: str) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "TextRLHF-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        policy=setup["policy"],
        reference=setup["reference"],
        tokenizer=setup["tokenizer"],
        reward_model=setup["reward"],
        prompts=setup["prompts"],
        max_new_tokens=args.tokens,
        max_prompt_tokens=args.prompt_tokens,
        kl_placement=placement,
        device=args.device,
    )


def run_env(env: gym.vector.VectorEnv, actions: np.ndarray) -> tuple[float, np.ndarray]:
    """Reset, step every action; return the time and each episode's total reward (per_token pays per step)."""
    start = time.perf_counter()
    env.reset(seed=0)
    total = np.zeros(env.num_envs)
    for step_actions in actions:
        _, rewards, terminated, _, _ = env.step(step_actions)
        total += rewards
    elapsed = time.perf_counter() - start
    assert terminated.all()
    return elapsed, total


def run_direct(
    setup: dict, args: argparse.Namespace, obs: dict, prompts: list[str]
) -> tuple[float, np.ndarray]:
    """One teacher-forced pass of each model over the finished sequences, the KL and the reward.

    A bare loop knows its prompts' texts, as the env does: only responses are decoded."""
    start = time.perf_counter()
    ids = torch.from_numpy(obs["input_ids"]).to(args.device)
    mask = torch.from_numpy(obs["attention_mask"]).to(args.device)
    with evaluating(setup["policy"], setup["reference"]):
        lp = response_logprobs(setup["policy"], ids, mask, args.prompt_tokens, 1.0)
        lr = response_logprobs(setup["reference"], ids, mask, args.prompt_tokens, 1.0)
    kl = k1(lp.double(), lr.double()).sum(-1).cpu().numpy()
    responses = setup["tokenizer"].batch_decode(
        obs["input_ids"][:, args.prompt_tokens :].tolist(), skip_special_tokens=True
    )
    rewards = compute_scores(setup["reward"], prompts, responses) - 0.2 * kl
    return time.perf_counter() - start, rewards


class NaiveVectorEnv:
    """The obvious per-step implementation: every step re-runs both models on the whole prefix."""

    def __init__(self, setup: dict, args: argparse.Namespace):
        self.setup, self.args = setup, args
        self.P, self.N = args.prompt_tokens, args.num_envs

    def reset(self, obs: dict, prompts: list[str]) -> None:
        self.prompts = prompts
        self.ids = torch.from_numpy(obs["input_ids"][:, : self.P]).to(self.args.device)
        self.mask = torch.from_numpy(obs["attention_mask"][:, : self.P]).to(self.args.device)
        self.kl = torch.zeros(self.N, dtype=torch.float64)

    def step(self, actions: np.ndarray) -> np.ndarray:
        with evaluating(self.setup["policy"], self.setup["reference"]):
            token_logprobs = []
            for model in (self.setup["policy"], self.setup["reference"]):
                logits = model(
                    input_ids=self.ids, attention_mask=self.mask, position_ids=position_ids(self.mask)
                ).logits[:, -1]  # full prefix again
                token = torch.from_numpy(actions).to(self.args.device)
                token_logprobs.append(logits.float().log_softmax(-1).gather(-1, token[:, None])[:, 0])
        self.kl += k1(*token_logprobs).double().cpu()
        self.ids = torch.cat([self.ids, torch.from_numpy(actions[:, None]).to(self.args.device)], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        if self.ids.shape[1] - self.P < self.args.tokens:
            return np.zeros(self.N)
        responses = self.setup["tokenizer"].batch_decode(
            self.ids[:, self.P :].tolist(), skip_special_tokens=True
        )
        return compute_scores(self.setup["reward"], self.prompts, responses) - 0.2 * self.kl.numpy()


def run_naive(
    naive: NaiveVectorEnv, obs0: dict, prompts: list[str], actions: np.ndarray
) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    naive.reset(obs0, prompts)
    for step_actions in actions:
        rewards = naive.step(step_actions)
    return time.perf_counter() - start, rewards


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32, help="response tokens per episode")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    setup = build(args)
    envs = {placement: make_env(setup, args, placement) for placement in ("terminal", "per_token")}
    naive = NaiveVectorEnv(setup, args)
    actions = setup["actions"]
    obs0, info0 = envs["terminal"].reset(seed=0)
    prompts = info0["prompt"].tolist()

    # the sequences the env scores: prompts from the seeded reset, then the actions
    final = {k: v.copy() for k, v in obs0.items()}
    final["input_ids"][:, args.prompt_tokens :] = actions.T
    final["attention_mask"][:, args.prompt_tokens :] = 1

    times: dict[str, list[float]] = {"env": [], "direct": [], "naive": [], "env_per_token": []}
    rounds = tqdm(range(args.repeats + 1), desc="warm-up + repeats", unit="round", file=sys.stderr)
    for repeat in rounds:  # the first round warms up and is not counted
        t_env, r_env = run_env(envs["terminal"], actions)
        t_direct, r_direct = run_direct(setup, args, final, prompts)
        t_naive, r_naive = run_naive(naive, obs0, prompts, actions)
        t_tok, r_tok = run_env(envs["per_token"], actions)
        # all four compute the same rewards: a benchmark of different work would mean nothing
        np.testing.assert_allclose(r_env, r_direct, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r_env, r_naive, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r_env, r_tok, rtol=1e-4, atol=1e-4)
        if repeat:
            for key, value in zip(times, (t_env, t_direct, t_naive, t_tok), strict=True):
                times[key].append(value)

    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.num_envs * args.tokens
    print(
        f"TextRLHF-v0 env overhead: N={args.num_envs} episodes x T={args.tokens} tokens (prompt "
        f"{args.prompt_tokens}), GPT-2 policy/reference {setup['params'] / 1e6:.2f}M params, vocab "
        f"{len(setup['tokenizer'])}, classifier reward; device {args.device}, torch threads "
        f"{torch.get_num_threads()}; median of {args.repeats}\n"
    )
    rows = [
        ("vector env, terminal KL (one teacher-forced pass)", med["env"], "1.00"),
        ("(a) direct scoring, no env", med["direct"], f"direct/env = **{med['direct'] / med['env']:.2f}**"),
        (
            "(b) naive per-step env, full prefix each step",
            med["naive"],
            f"naive/env = **{med['naive'] / med['env']:.1f}x**",
        ),
        (
            "vector env, per_token KL (KV cache)",
            med["env_per_token"],
            f"naive/per_token = {med['naive'] / med['env_per_token']:.1f}x",
        ),
    ]
    print("| variant | median s | tokens/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.4f} | {tokens / seconds:,.0f} | {ratio} |")
    per_step_us = (med["env"] - med["direct"]) / args.tokens * 1e6
    print(
        f"\nenv time beyond the scoring: {per_step_us:.0f} us per vector step "
        f"({per_step_us / args.num_envs:.1f} us per sub-env step; noise where near or below 0)"
    )


if __name__ == "__main__":
    main()
