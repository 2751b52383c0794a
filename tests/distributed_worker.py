"""One rank of the data-parallel test (``tests/test_distributed.py`` launches it with torchrun).

It trains PPO on the default task for three iterations (a global batch of 16 episodes), saves a checkpoint
after the second, then loads that checkpoint into a new agent in the same launch and runs the third
iteration again. After every update it records what the test compares across ranks and between the two
third iterations: a digest of the weights and of the optimizer's state, beta, the episodes this rank
played, the episodes the metrics count, and a digest of the RNG states. Rank 0's callback stops training
after three iterations; rank 1's never does (the stop must reach it). Last, each rank whitens a share of
made-up advantages of its own and takes the gradient of a token-mean loss over it, for a comparison with
one process doing so with every rank's share, and runs one PPO update on a rollout of its own (written
to ``OUT/update.pt`` with the updated weights, for the test to repeat in one process). Writes
``OUT/rank{RANK}.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from agents import PPO, distributed

SETTINGS: dict[str, Any] = {
    "num_envs": 16,
    "num_minibatches": 2,
    "num_epochs": 2,
    "learning_rate": 1e-3,
    "env_kwargs": {"kl_coef": 0.2, "kl_target": 0.5, "kl_horizon": 40},
}


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record(agent: PPO, metrics: dict[str, float]) -> dict[str, Any]:
    optimizer_state = [
        v for s in agent.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    ]
    rollout = agent.last_rollout
    assert rollout is not None
    return {
        "iteration": agent.iterations,
        "weights": digest(list(agent.model.parameters())),
        "optimizer": digest(optimizer_state),
        "beta": agent.env.unwrapped.kl_coef,  # type: ignore[attr-defined]
        "rollout_beta": rollout.kl_coef,
        "local_episodes": rollout.num_episodes,
        "metric_episodes": metrics["charts/episodes"],
        "timesteps": agent.num_timesteps,
        "rng": digest([agent.generator.get_state()]) + json.dumps(agent.np_rng.bit_generator.state),
        "first_prompts": rollout.prompts[:4],
    }


def main(out: Path) -> None:
    distributed.init_from_environment()
    rank = distributed.rank()
    first: list[dict[str, Any]] = []
    checkpoint = out / "checkpoint"

    def watch(agent: PPO, metrics: dict[str, float]) -> bool:
        first.append(record(agent, metrics))
        if agent.iterations == 2:
            agent.save(checkpoint)  # rank 0 writes; the other ranks return at once
        return not (rank == 0 and agent.iterations == 3)

    agent = PPO("TextRLHF-v0", seed=7, **SETTINGS)
    agent.learn(10**9, callback=watch)

    distributed.barrier()  # rank 0 has written the checkpoint
    resumed: list[dict[str, Any]] = []

    def again(agent: PPO, metrics: dict[str, float]) -> bool:
        resumed.append(record(agent, metrics))
        return False

    loaded = PPO.load(checkpoint, "TextRLHF-v0")
    loaded.learn(10**9, callback=again)

    # advantage statistics over the global batch: each rank whitens its own (ragged) share
    g = torch.Generator().manual_seed(100 + rank)
    values = torch.randn(3 + rank, 5, generator=g) * (1 + rank) + rank
    mask = (torch.rand(3 + rank, 5, generator=g) < 0.7).float()
    # a token-mean loss of a minibatch whose shares hold different numbers of tokens
    weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))
    local_loss = ((values * weight) ** 2 * mask).sum() / mask.sum()
    agent.global_token_mean(local_loss, mask).backward()
    distributed.average_gradients([weight])
    assert weight.grad is not None
    statistics = {
        "values": values.tolist(),
        "mask": mask.tolist(),
        "whitened": agent.whiten(values, mask).tolist(),
        "std": agent.batch_std(values[:, 0]),
        "gradient": weight.grad.tolist(),
    }
    # one PPO update (one minibatch, one epoch) on this rank's rollout; the test repeats it in one process
    # on both ranks' rollouts together
    single = PPO("TextRLHF-v0", seed=11, **(SETTINGS | {"num_minibatches": 1, "num_epochs": 1}))
    rollout = single.collect_rollout()
    rollouts = distributed.gather_objects(rollout)
    single.update(rollout)
    if rank == 0:
        after = {name: p.detach().clone() for name, p in single.model.named_parameters()}
        torch.save({"rollouts": rollouts, "after": after}, out / "update.pt")

    result = {
        "rank": rank,
        "world_size": distributed.world_size(),
        "first": first,
        "resumed": resumed,
        "statistics": statistics,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
