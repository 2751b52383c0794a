"""PPO's rollout phase through the vector env, against the same work done straight on the models.

On the default review task, one rollout = one response to each of N prompts, with everything PPO needs:

- rollout:  the agents' rollout (``agents.rollout.collect``, what ``PPO.collect_rollout()`` runs): KV-cached
            sampling (with the value head on the trunk's hidden states) of every response, then
            ``env.play`` on ``gymnasium.make_vec("TextRLHF-v0", num_envs=N)``: the env scores all episodes
            (teacher-forced reference, reward model; the policy's log-probs are the sampler's) and pays
            score - beta*KL;
- stepped:  the same rollout stepping the env token by token (``whole_episodes=False``), the env scoring
            the episodes that end on each step;
- bare:     a plain loop on the same models and prompts: KV-cached sampling with values, then one
            teacher-forced pass of policy and reference over the whole batch, the KL and one reward-model
            call. The env cannot beat it; ratio = bare / rollout (1.0: the env costs nothing);
- no cache: the bare loop sampling without a KV cache (the full prefix re-run every token, O(T^2));
            speed-up = no cache / bare.

The policy is first trained a few PPO iterations, so that it differs from its reference and its value
head is not zero. Every variant runs ``--repeats`` times, interleaved, after a warm-up; medians reported.

    python benchmarks/throughput.py [--num-envs 256 128] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from tqdm import tqdm

from agents import PPO
from agents.core import categorical
from agents.policy import ActorCritic
from agents.rollout import collect
from textenv.kl import k1
from textenv.models import evaluating
from textenv.rewards import RewardModel, compute_scores
from textenv.scoring import position_ids, response_logprobs


@torch.no_grad()
def bare_rollout(
    model: ActorCritic,
    reference: torch.nn.Module,
    reward: RewardModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompts: list[str],
    *,
    max_new_tokens: int,
    eos: int,
    pad: int,
    generator: torch.Generator,
    use_cache: bool = True,
) -> dict[str, torch.Tensor]:
    """Sample one response per prompt, then score the batch: what a rollout has to do, without an env."""
    policy = model.policy
    n, P = query_ids.shape
    with evaluating(policy, reference):
        ids, mask = query_ids.clone(), query_mask.clone()
        tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long)
        values = torch.zeros(n, max_new_tokens)
        done = torch.zeros(n, dtype=torch.bool)
        lengths = torch.full((n,), max_new_tokens)
        past, step_ids, positions = None, ids, position_ids(mask)
        for t in range(max_new_tokens):
            if use_cache:
                out = policy(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=positions[:, -step_ids.shape[1] :],
                    past_key_values=past,
                    output_hidden_states=True,
                )
                past = out.past_key_values
            else:  # re-run the whole prefix
                out = policy(
                    input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
                )
            values[:, t] = model.value(out.hidden_states[-1][:, -1])
            probs = out.logits[:, -1].float().softmax(-1)
            token = categorical(probs, generator)
            token = torch.where(done, torch.full_like(token, pad), token)
            tokens[:, t] = token
            ended = ~done & (token == eos)
            lengths = torch.where(ended, torch.full_like(lengths, t + 1), lengths)
            done |= ended
            if bool(done.all()):
                break
            step_ids = token[:, None]
            ids = torch.cat([ids, step_ids], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            positions = position_ids(mask)
        T = int(lengths.max())
        response_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (n, T)
        full_ids = torch.cat([query_ids, tokens[:, :T]], dim=1)
        full_mask = torch.cat([query_mask, response_mask], dim=1)
        logprobs = response_logprobs(policy, full_ids, full_mask, P, 1.0)
        ref_logprobs = response_logprobs(reference, full_ids, full_mask, P, 1.0)
        kl = (k1(logprobs, ref_logprobs) * response_mask).sum(-1)
        # skip_special_tokens drops the EOS that ended a response, as the env does
        texts = tokenizer.batch_decode(
            [tokens[i, : int(lengths[i])].tolist() for i in range(n)], skip_special_tokens=True
        )
        scores = torch.as_tensor(compute_scores(reward, prompts, texts))
    return {"scores": scores, "kl": kl, "values": values, "lengths": lengths}


def measure(num_envs: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median seconds per rollout and tokens per second of each variant at ``num_envs`` episodes."""
    agent = PPO("TextRLHF-v0", seed=0, num_envs=num_envs)
    agent.learn(10**9, callback=lambda a, m: a.iterations < args.warmup_iterations)
    engine = agent.env.unwrapped.engine  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"rollout": [], "stepped": [], "bare": [], "no cache": []}
    tokens: dict[str, list[int]] = {k: [] for k in times}
    bar = tqdm(total=(args.repeats + 1) * len(times), desc=f"N={num_envs}", file=sys.stderr)
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        for name, whole in (("rollout", True), ("stepped", False)):  # the same prompts
            start = time.perf_counter()
            played = collect(
                agent.env, agent.model, generator=agent.generator, seed=repeat, whole_episodes=whole
            )
            elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
                tokens[name].append(played.num_tokens)
            if whole:
                rollout = played
            bar.update()
        for name, cache in (("bare", True), ("no cache", False)):
            start = time.perf_counter()
            out = bare_rollout(
                agent.model,
                engine.reference,
                engine.reward_model,
                engine.tokenizer,
                rollout.query_ids,  # the same prompts, as the env tokenised them
                rollout.query_mask,
                rollout.prompts,
                max_new_tokens=engine.max_new_tokens,
                eos=engine.eos_token_id,
                pad=engine.pad_token_id,
                generator=generator,
                use_cache=cache,
            )
            elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
                tokens[name].append(int(out["lengths"].sum()))
            bar.update()
    bar.close()
    return {
        name: {
            "seconds": statistics.median(times[name]),
            "tokens_per_second": statistics.median(
                n / t for n, t in zip(tokens[name], times[name], strict=True)
            ),
        }
        for name in times
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-envs", type=int, nargs="+", default=[256, 128], help="episodes per rollout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup-iterations", type=int, default=3, help="PPO iterations before timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    results = {n: measure(n, args) for n in args.num_envs}
    print(
        f"\nPPO rollout phase on the default task, {torch.get_num_threads()} threads, "
        f"medians of {args.repeats}"
    )
    print("(tokens per second: response tokens generated and scored, per second of wall time)\n")
    print(
        "| N | rollout via env: s / tok/s | stepped via env: s / tok/s | bare loop: s / tok/s "
        "| no KV cache: s / tok/s | env / bare | stepped / bare | KV-cache speed-up (bare / no cache) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        cells = " | ".join(f"{r[k]['seconds']:.3f} / {r[k]['tokens_per_second']:,.0f}" for k in r)
        rollout, stepped, bare, no_cache = (
            r[k]["tokens_per_second"] for k in ("rollout", "stepped", "bare", "no cache")
        )
        print(f"| {n} | {cells} | {rollout / bare:.2f} | {stepped / bare:.2f} | {bare / no_cache:.2f}x |")


if __name__ == "__main__":
    main()
