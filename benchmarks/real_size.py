"""A policy of real size: a GPT-2 124M-shaped model on the default task, its rollout against ``generate``.

The policy is built from GPT-2 small's shape (12 blocks, width 768, 12 heads) with the default task's
tokenizer (so its vocabulary, and its embedding, is the task's: about 86M parameters; nothing is
downloaded), randomly initialised. The reference is a frozen copy, the reward model the task's.

* **rollout**: ``PPO.collect_rollout()`` on ``gymnasium.make_vec("TextRLHF-v0", num_envs=N)``: KV-cached
  sampling with the value head of every response to its end, then the env's ``play`` (one teacher-forced
  pass of the reference over all episodes, the reward model; the policy's log-probs are the sampler's);
* **rollout, stepped**: the same rollout stepping the env token by token (``whole_episodes=False``: the
  tokens go to the host every step, and the env scores the episodes that end on each step);
* **generate**: transformers' ``model.generate`` on the same prompts, the same sampling (temperature, no
  top-k or top-p, the same maximum length and EOS), and nothing else;
* **generate+reference**: the same, then one teacher-forced pass of the reference over prompt and
  response: the least any rollout that charges the exact KL to a reference of the policy's size must do
  beyond ``generate`` (no reward model, no policy log-probs);
* **generate+score**: the same, then what a generate-based trainer (trl's) does next for the same
  episodes: one teacher-forced pass of the policy and one of the reference for the log-probs, and the
  reward model.

Response tokens per second of each, interleaved, ``--repeats`` times after a warm-up; medians, with process
CPU seconds. The rollout is also timed without the env's share (``sampling``: the rollout's wall time less
the time spent in the env's reset and steps, which score the finished episodes), the part of it that does
what ``generate`` does. Then ``--iterations`` PPO iterations, with the peak resident memory of the process.

``--lora RANK`` measures a LoRA policy instead (its reference the adapters switched off, so the
baselines' reference pass is the base's too), and ``--frozen-dtype bfloat16`` holds the frozen weights
(the reference; with LoRA the base) in bf16 (the env's ``frozen_dtype``).

``--memory`` instead measures PPO iterations in a fresh process per setting: full fine-tuning (the
reference a frozen copy) against LoRA (the reference the adapters switched off), each with and without
gradient checkpointing and with its frozen weights in bf16; peak resident memory of the process before
and after training, and time.

``--shape 1b`` builds a ~1B-shaped policy instead (20 blocks of width 2048, 16 heads: 1.0B parameters in
the blocks), for an accelerator.

    python benchmarks/real_size.py [--num-envs 64] [--repeats 3] [--threads 2] [--device cpu] [--shape 124m]
    python benchmarks/real_size.py --lora 8 --frozen-dtype bfloat16 --mixed-precision bf16
    python benchmarks/real_size.py --memory [--lora 8] [--iterations 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import textenv  # noqa: F401  (registers TextRLHF-v0)
from agents import PPO
from agents.rollout import collect
from textenv import tasks
from textenv.models import load_tokenizer
from textenv.rewards import compute_scores
from textenv.scoring import response_logprobs


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


#: GPT-2 shapes built from a config (blocks, width, heads): GPT-2 small's, and a ~1B one (GPT-2 XL's width
#: of 1600 is narrower; 20 blocks of width 2048 make 1.0B parameters in the blocks).
SHAPES = {"124m": (12, 768, 12), "1b": (20, 2048, 16)}


def build_policy(tokenizer, seed: int = 0, shape: str = "124m") -> GPT2LMHeadModel:
    blocks, width, heads = SHAPES[shape]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=blocks,
        n_embd=width,
        n_head=heads,
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
    reference: Any = None,
    reward: Any = None,
) -> int:
    """``model.generate`` on left-padded prompts; returns the response tokens it wrote (up to EOS).

    ``reference``: then one teacher-forced pass of the reference over prompt and response for its
    log-probs, the least an exact KL to it costs. ``reward`` (with ``reference``): go on as a
    generate-based trainer does (trl's): that pass, one of the policy for its log-probs, and the reward
    model on the decoded texts."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(policy.device)
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
    full = torch.full((new.shape[0],), new.shape[1], device=new.device)
    first = torch.where(ended.any(1), ended.float().argmax(1), full)
    if reference is not None:
        keep = torch.arange(new.shape[1], device=new.device)[None, :] < first[:, None]
        mask = torch.cat([batch["attention_mask"], keep.long()], dim=1)
        response_logprobs(reference, out, mask, width, temperature)
        if reward is not None:
            response_logprobs(policy, out, mask, width, temperature)
            texts = tokenizer.batch_decode([row[: int(n)] for row, n in zip(new, first, strict=True)])
            compute_scores(reward, prompts, texts)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
    return int(first.sum())


MEMORY_SETTINGS = {
    "full fine-tuning": {"lora": False, "checkpointing": False},
    "full + checkpointing": {"lora": False, "checkpointing": True},
    "full, reference in bf16": {"lora": False, "checkpointing": False, "frozen_dtype": "bfloat16"},
    "LoRA": {"lora": True, "checkpointing": False},
    "LoRA + checkpointing": {"lora": True, "checkpointing": True},
    "LoRA, base in bf16": {"lora": True, "checkpointing": False, "frozen_dtype": "bfloat16"},
}


def make_agent(
    args: argparse.Namespace,
    num_envs: int,
    lora: bool = False,
    checkpointing: bool = False,
    frozen_dtype: str | None = None,
) -> PPO:
    """PPO on the default task with the 124M-shaped policy: its reference a frozen copy, or, with LoRA, the
    policy with its adapters off; ``frozen_dtype``: the env's (those frozen weights held in that dtype)."""
    task = tasks.load("reviews")
    tokenizer = load_tokenizer(task.assets / "policy")
    policy = build_policy(tokenizer, shape=args.shape).to(args.device)
    # no reference given: the env makes it, a frozen copy of the policy (in frozen_dtype as it copies)
    settings: dict[str, Any] = {"lora": args.lora or 8, "frozen_dtype": frozen_dtype}
    if not lora:
        settings.pop("lora")
    env = gym.make_vec(
        "TextRLHF-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        task="reviews",
        policy=policy,
        tokenizer=tokenizer,
        kl_coef=0.2,
        kl_target=6.0,
        **settings,
    )
    return PPO(
        env,
        seed=0,
        num_minibatches=max(1, num_envs // 16),
        gradient_checkpointing=checkpointing,
        mixed_precision=args.mixed_precision,
    )


def weights_gib(*models: torch.nn.Module) -> float:
    """GiB of the distinct parameter tensors of ``models`` (a view sharing the policy's adds nothing)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for m in models for p in m.parameters()}
    return sum(seen.values()) / 2**30


def memory_run(args: argparse.Namespace) -> None:
    """One setting of ``--memory``, in this process: a JSON line of its figures."""
    setting = MEMORY_SETTINGS[args.memory_setting]
    agent = make_agent(args, args.num_envs[0], **setting)
    policy = agent.model.policy
    built = peak_rss_gib()
    start, cpu = time.perf_counter(), time.process_time()
    agent.learn(1, callback=lambda a, m: a.iterations < args.iterations)
    record = {
        "setting": args.memory_setting,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trained": sum(p.numel() for p in agent.trainable_parameters()),
        "weights_gib": weights_gib(policy, agent.env.unwrapped.reference),  # type: ignore[attr-defined]
        "peak_gib_built": built,
        "peak_gib_trained": peak_rss_gib(),
        "iterations": agent.iterations,
        "tokens": agent.num_timesteps,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "load": os.getloadavg()[0],
    }
    if args.device.startswith("cuda"):
        record["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(record))


def memory(args: argparse.Namespace) -> None:
    """Every setting of ``--memory`` in a fresh process (peak memory is per process), then a table."""
    rows = []
    for name in MEMORY_SETTINGS:
        command = [sys.executable, __file__, "--memory-setting", name, "--num-envs", str(args.num_envs[0])]
        command += [
            "--iterations",
            str(args.iterations),
            "--threads",
            str(args.threads),
            "--lora",
            str(args.lora or 8),
        ]
        command += ["--device", args.device, "--mixed-precision", args.mixed_precision, "--shape", args.shape]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nPPO on the default task, {args.shape}-shaped policy, batch {args.num_envs[0]}, "
        f"{args.iterations} iteration(s), {args.threads} threads, device {args.device}, "
        f"mixed precision {args.mixed_precision}, LoRA rank {args.lora or 8}"
    )
    gpu = args.device.startswith("cuda")
    print(
        "| setting | trained parameters | weights (GiB) | peak RSS built (GiB) | peak RSS trained (GiB) |"
        + (" peak GPU memory (GiB) |" if gpu else "")
        + " s / iteration | CPU s / iteration |"
    )
    print("|---|---|---|---|---|" + ("---|" if gpu else "") + "---|---|")
    for r in rows:
        n = r["iterations"]
        print(
            f"| {r['setting']} | {r['trained'] / 1e6:.2f}M of {r['parameters'] / 1e6:.1f}M | "
            f"{r['weights_gib']:.2f} | "
            f"{r['peak_gib_built']:.2f} | {r['peak_gib_trained']:.2f} |"
            + (f" {r['cuda_peak_gib']:.2f} |" if gpu else "")
            + f" {r['seconds'] / n:.0f} | {r['cpu_seconds'] / n:.0f} |"
        )
    print(f"load average {min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}")


def throughput(args: argparse.Namespace, num_envs: int) -> dict[str, Any]:
    """Every variant on a batch of ``num_envs`` prompts, interleaved, ``--repeats`` times after a warm-up:
    the lines of each run and the medians, printed; the medians (tokens/s, per wall and per CPU second)."""
    agent = make_agent(args, num_envs, lora=args.lora is not None)
    # --frozen-dtype: a second agent like the first (the same weights) whose frozen weights are held in
    # that dtype, its rollout timed among the others
    frozen = f"rollout, frozen {args.frozen_dtype}" if args.frozen_dtype else None
    held = (
        make_agent(args, num_envs, lora=args.lora is not None, frozen_dtype=args.frozen_dtype)
        if frozen
        else None
    )
    env = agent.env
    policy = agent.model.policy
    reference = env.unwrapped.reference  # type: ignore[attr-defined]
    tokenizer = env.unwrapped.tokenizer  # type: ignore[attr-defined]
    params = sum(p.numel() for p in policy.parameters())
    engine = env.unwrapped.engine  # type: ignore[attr-defined]
    max_new, temperature = engine.max_new_tokens, engine.temperature
    print(
        f"policy: {args.shape}-shaped, {params / 1e6:.1f}M parameters; batch {num_envs}, "
        f"{max_new} new tokens, {args.threads} threads, device {args.device}, "
        f"mixed precision {args.mixed_precision}"
        + (f", LoRA rank {args.lora} (the reference its base)" if args.lora else "")
    )

    variants: tuple[str, ...] = ("rollout", "sampling", "rollout, stepped", "generate", "generate+reference")
    variants += ("generate+score",) + ((frozen,) if frozen else ())
    timings: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    reward = engine.reward_model
    rollout, wall, cpu_s, tokens = None, 0.0, 0.0, 0
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name in variants:
            if name == "sampling":  # measured within the rollout just timed
                if repeat > 0 and rollout is not None:
                    timings[name].append((wall - rollout.env_seconds, cpu_s, tokens))
                continue
            cpu, start = time.process_time(), time.perf_counter()
            with agent.autocast():  # every variant under --mixed-precision, as the agent runs
                if name == "rollout":
                    rollout = collect(  # whole episodes: sampled, then env.play (the agents' default)
                        env, agent.model, generator=agent.generator, seed=repeat, whole_episodes=True
                    )
                    tokens = rollout.num_tokens
                    prompts = rollout.prompts
                elif name == frozen and held is not None:  # the same prompts, frozen weights held
                    tokens = collect(
                        held.env, held.model, generator=held.generator, seed=repeat, whole_episodes=True
                    ).num_tokens
                elif name == "rollout, stepped":  # the same prompts, stepping the env token by token
                    stepped = collect(
                        env, agent.model, generator=agent.generator, seed=repeat, whole_episodes=False
                    )
                    tokens = stepped.num_tokens
                else:
                    tokens = generate(
                        policy,
                        tokenizer,
                        prompts,
                        max_new,
                        temperature,
                        seed=repeat,
                        reference=reference if name != "generate" else None,
                        reward=reward if name == "generate+score" else None,
                    )
            wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            if repeat > 0:
                timings[name].append((wall, cpu_s, tokens))
            print(
                f"  {name:<18} {tokens:>6} tokens in {wall:6.2f} s ({cpu_s:6.2f} CPU s): "
                f"{tokens / wall:7.1f} tok/s"
                + (f"; {rollout.env_seconds:.2f} s of it in the env" if rollout and name == "rollout" else "")
                + (f"; {stepped.env_seconds:.2f} s of it in the env" if name == "rollout, stepped" else "")
            )
    rates = {name: statistics.median(t / w for w, _, t in rows) for name, rows in timings.items()}
    cpu_rates = {name: statistics.median(t / c for _, c, t in rows) for name, rows in timings.items()}
    print(f"\nmedians of {args.repeats} (load average {os.getloadavg()[0]:.1f}):")
    for name in variants:
        per_cpu = (
            "" if name == "sampling" else f" (per CPU second {cpu_rates['rollout'] / cpu_rates[name]:.2f})"
        )
        print(
            f"  {name:<18} {rates[name]:7.1f} tok/s; rollout / {name}: {rates['rollout'] / rates[name]:.2f}"
            + per_cpu
        )
    print(f"  sampling / generate: {rates['sampling'] / rates['generate']:.2f} (wall)")
    print(
        "  rollout / generate+reference: "
        f"{rates['rollout'] / rates['generate+reference']:.2f} (wall; generate+reference is the least an "
        "exact-KL rollout does)"
    )
    print(f"  rollout / rollout, stepped: {rates['rollout'] / rates['rollout, stepped']:.2f} (wall)")
    if frozen:
        print(f"  {frozen} / rollout: {rates[frozen] / rates['rollout']:.2f} (wall)")
    return {"num_envs": num_envs, "rates": rates, "cpu_rates": cpu_rates, "agent": agent}


def summary(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """A table of the ratios at every batch, and with ``--plot`` their plot."""
    frozen = f"rollout, frozen {args.frozen_dtype}" if args.frozen_dtype else None
    print(f"\n{args.shape}-shaped policy, device {args.device}: tokens/s, medians of {args.repeats}")
    print(
        "| batch | rollout | its sampling | generate | generate + reference | generate + scoring | "
        "rollout / generate | rollout / (generate + reference) | sampling / generate |"
        + (f" {frozen} | its rollout / rollout |" if frozen else "")
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if frozen else ""))
    for r in results:
        rate = r["rates"]
        over_reference = rate["rollout"] / rate["generate+reference"]
        print(
            f"| {r['num_envs']} | {rate['rollout']:.1f} | {rate['sampling']:.1f} | {rate['generate']:.1f} | "
            f"{rate['generate+reference']:.1f} | {rate['generate+score']:.1f} | "
            f"{rate['rollout'] / rate['generate']:.2f} | {over_reference:.2f} | "
            f"{rate['sampling'] / rate['generate']:.2f} |"
            + (f" {rate[frozen]:.1f} | {rate[frozen] / rate['rollout']:.2f} |" if frozen else "")
        )
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["num_envs"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for over, label in (
        ("generate", "rollout / generate"),
        ("generate+reference", "rollout / (generate + reference pass)"),
        ("generate+score", "rollout / (generate + scoring)"),
    ):
        ax.plot(batches, [r["rates"]["rollout"] / r["rates"][over] for r in results], marker="o", label=label)
    ax.plot(
        batches,
        [r["rates"]["sampling"] / r["rates"]["generate"] for r in results],
        marker="o",
        linestyle="--",
        label="sampling / generate",
    )
    ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch (episodes per rollout)")
    ax.set_ylabel("throughput ratio")
    ax.set_title(f"{args.shape}-shaped policy on {args.device}: rollout against generate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        nargs="+",
        default=[64],
        help="episodes per rollout (the batch); several: each",
    )
    parser.add_argument("--plot", type=Path, help="with several --num-envs: a plot of the ratios to generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--iterations", type=int, default=2, help="PPO iterations for the memory figure (0: none)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="124m", choices=tuple(SHAPES), help="the policy's GPT-2 shape")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--memory", action="store_true", help="peak memory with and without LoRA")
    parser.add_argument("--memory-setting", choices=tuple(MEMORY_SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--lora",
        type=int,
        help="LoRA rank: a LoRA policy for the throughput (its reference the adapters switched off); the "
        "rank of --memory's LoRA rows (default 8)",
    )
    parser.add_argument(
        "--frozen-dtype",
        choices=("bfloat16", "float16"),
        help="hold the frozen weights (the reference; with --lora the base) in this dtype (the env's "
        "frozen_dtype) for the throughput; --memory has rows with and without bf16",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_setting:
        return memory_run(args)
    if args.memory:
        return memory(args)
    results = []
    for n in args.num_envs:
        results.append(throughput(args, n))
        agent = results[-1].pop("agent")
        if n != args.num_envs[-1]:
            del agent  # one agent's models at a time: the memory figure below is the last batch's
            gc.collect()
    if len(results) > 1:
        summary(args, results)
    if args.iterations < 1:
        return
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
