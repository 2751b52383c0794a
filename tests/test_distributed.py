"""Data-parallel training: two processes launched by torchrun (gloo, CPU) train as one.

The fast tier runs the worker (``tests/distributed_worker.py``: PPO on the default task, 3 iterations,
a checkpoint after the second reloaded in the same launch). The slow tier runs the training command
itself under torchrun and under ``accelerate launch``, and resumes it from its run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agents import distributed

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 16


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node nproc ARGS`` on this machine, one CPU thread per process."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dp")
    torchrun(str(ROOT / "tests" / "distributed_worker.py"), str(out))
    ranks = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    return [rank | {"out": str(out)} for rank in ranks]


def test_two_ranks_hold_identical_weights_and_beta_after_every_update(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert zero["world_size"] == one["world_size"] == 2
    assert [r["iteration"] for r in zero["first"]] == [r["iteration"] for r in one["first"]] == [1, 2, 3]
    for a, b in zip(zero["first"], one["first"], strict=True):
        assert a["weights"] == b["weights"]
        assert a["optimizer"] == b["optimizer"]
        assert a["beta"] == b["beta"]
        assert a["rollout_beta"] == b["rollout_beta"]
        assert a["timesteps"] == b["timesteps"]
        assert a["rng"] != b["rng"]  # each rank has its own sampler and prompts
    # the checks above are not vacuous: the weights and beta move, and the ranks saw other prompts
    assert len({r["weights"] for r in zero["first"]}) == 3
    assert len({r["beta"] for r in zero["first"]}) == 3
    assert zero["first"][0]["first_prompts"] != one["first"][0]["first_prompts"]


def test_summed_episodes_equal_the_global_batch(ranks: list[dict[str, Any]]) -> None:
    for a, b in zip(*(r["first"] for r in ranks), strict=True):
        assert a["local_episodes"] == b["local_episodes"] == GLOBAL_BATCH // 2
        assert a["local_episodes"] + b["local_episodes"] == GLOBAL_BATCH
        assert a["metric_episodes"] == b["metric_episodes"] == GLOBAL_BATCH


def test_a_checkpoint_resumes_bit_exactly_in_the_same_launch_setting(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        (third,) = rank["resumed"]
        original = rank["first"][2]
        assert third["iteration"] == original["iteration"] == 3
        for key in ("weights", "optimizer", "beta", "timesteps", "rng", "local_episodes", "first_prompts"):
            assert third[key] == original[key], key


def test_advantages_are_whitened_over_the_global_batch(ranks: list[dict[str, Any]]) -> None:
    """Each rank's whitened share equals the same rows of one process whitening every rank's rows."""
    from agents.core import masked_whiten

    shares = [r["statistics"] for r in ranks]
    values = torch.cat([torch.tensor(s["values"]) for s in shares])
    mask = torch.cat([torch.tensor(s["mask"]) for s in shares])
    whole = masked_whiten(values, mask)
    ranked = torch.cat([torch.tensor(s["whitened"]) for s in shares])
    torch.testing.assert_close(ranked, whole, atol=1e-5, rtol=1e-5)
    # each share on its own is whitened otherwise (the ranks' values differ in scale and offset)
    alone = masked_whiten(torch.tensor(shares[1]["values"]), torch.tensor(shares[1]["mask"]))
    assert (alone - torch.tensor(shares[1]["whitened"])).abs().max() > 0.1
    first_column = values[:, 0]
    for share in shares:
        assert share["std"] == pytest.approx(float(first_column.std()), rel=1e-5)


def test_a_token_mean_loss_has_the_gradient_of_one_process_over_every_rank_tokens(
    ranks: list[dict[str, Any]],
) -> None:
    """The shares hold different numbers of tokens: averaging the ranks' plain token means would weigh a
    token of the smaller share more; global_token_mean gives one process's gradient over all of them."""
    shares = [r["statistics"] for r in ranks]
    values = torch.cat([torch.tensor(s["values"]) for s in shares])
    mask = torch.cat([torch.tensor(s["mask"]) for s in shares])
    assert torch.tensor(shares[0]["mask"]).sum() != torch.tensor(shares[1]["mask"]).sum()
    weight = torch.linspace(-1.0, 1.0, 5).requires_grad_()
    (((values * weight) ** 2 * mask).sum() / mask.sum()).backward()
    assert weight.grad is not None
    for share in shares:
        torch.testing.assert_close(torch.tensor(share["gradient"]), weight.grad, atol=1e-5, rtol=1e-5)


def test_a_two_process_update_is_one_process_update_on_both_rollouts(ranks: list[dict[str, Any]]) -> None:
    """One PPO update (one minibatch, one epoch) in 2 processes, each on its own 8 episodes, moves the
    weights as one process's update on all 16 does: whitening, token means and gradients are global."""
    import dataclasses
    import importlib.util

    from agents import PPO
    from agents.rollout import Rollout

    spec = importlib.util.spec_from_file_location(
        "distributed_worker", ROOT / "tests" / "distributed_worker.py"
    )
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    saved = torch.load(Path(ranks[0]["out"]) / "update.pt", weights_only=False)
    parts: list[Rollout] = saved["rollouts"]
    assert len(parts) == 2 and parts[0].prompts != parts[1].prompts

    def joined(name: str) -> Any:
        values = [getattr(part, name) for part in parts]
        if isinstance(values[0], torch.Tensor):
            return torch.cat(values)
        return [x for v in values for x in v] if isinstance(values[0], list) else values[0]

    whole = Rollout(**{f.name: joined(f.name) for f in dataclasses.fields(Rollout)})
    assert whole.num_episodes == GLOBAL_BATCH
    agent = PPO("TextRLHF-v0", seed=11, **(worker.SETTINGS | {"num_minibatches": 1, "num_epochs": 1}))
    before = {name: p.detach().clone() for name, p in agent.model.named_parameters()}
    agent.update(whole)
    moved = 0.0
    for name, p in agent.model.named_parameters():
        torch.testing.assert_close(saved["after"][name], p.detach(), atol=2e-6, rtol=1e-4, msg=name)
        moved = max(moved, float((p.detach() - before[name]).abs().max()))
    assert moved > 1e-4  # the update moved the weights: the comparison is not between two starts


def test_one_process_agent_is_rank_zero_of_one() -> None:
    assert not distributed.active()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_reduce_mean([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.rank_seed(5, 0) == 5
    assert len({distributed.rank_seed(5, r) for r in range(4)}) == 4


@pytest.mark.parametrize(
    ("gpus", "ranks_here", "local_rank", "device", "backend"),
    [
        (2, 2, 1, "cuda:1", "nccl"),  # one GPU per rank
        (1, 2, 1, "cuda:0", "gloo"),  # two ranks on one GPU: NCCL would refuse them
        (2, 4, 3, "cuda:1", "gloo"),  # four ranks on two GPUs, in turn
    ],
)
def test_a_launched_rank_picks_its_gpu_and_backend(
    monkeypatch: pytest.MonkeyPatch, gpus: int, ranks_here: int, local_rank: int, device: str, backend: str
) -> None:
    """What a rank of ``torchrun --nproc_per_node ranks_here`` on a node with ``gpus`` GPUs joins with
    ``--device cuda`` (the GPU calls are recorded, not made: no test needs a GPU)."""
    joined: dict[str, Any] = {}
    monkeypatch.setenv("WORLD_SIZE", str(ranks_here))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks_here))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.delenv("TEXTENV_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: joined.setdefault("device", str(d)))
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend, timeout: joined.setdefault("backend", backend)
    )
    assert distributed.init_from_environment("cuda") == device
    assert joined == {"device": device, "backend": backend}
    joined.clear()
    assert distributed.init_from_environment("cpu") == "cpu"  # CPU ranks: gloo, whatever the GPUs
    assert joined == {"backend": "gloo"}


def test_a_launched_rank_asking_for_a_gpu_on_a_machine_without_one_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: pytest.fail("joined"))
    with pytest.raises(RuntimeError, match="no GPU"):
        distributed.init_from_environment("cuda")


# ---------------------------------------------------------------------------------------------- slow tier
TRAIN = ["-m", "agents.train", "--num-envs", "16", "--eval-every", "0", "--eval-episodes", "16"]
TRAIN += ["--samples", "1", "--quiet", "--num-epochs", "2"]


def _policy_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint" / "policy" / "model.safetensors")


def _state(run: Path) -> dict[str, Any]:
    return json.loads((run / "checkpoint" / "state.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_training_command_under_torchrun_resumes_exactly(tmp_path: Path) -> None:
    """The command a user runs, launched by torchrun: 3 iterations straight, against 2 then a resume."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    torchrun(*TRAIN, "--timesteps", "600", "--run-dir", str(straight), "--save-every", "1")
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3
    assert all(r["charts/episodes"] == 16 for r in rows)
    config = json.loads((straight / "config.json").read_text(encoding="utf-8"))
    assert config["processes"] == 2
    after_two = int(rows[1]["charts/timesteps"])
    torchrun(*TRAIN, "--timesteps", str(after_two), "--run-dir", str(split), "--save-every", "1")
    torchrun("-m", "agents.train", "--resume", str(split), "--timesteps", "600", "--quiet")
    a, b = _policy_weights(straight), _policy_weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = _state(straight), _state(split)
    for key in ("kl_coef", "num_timesteps", "iterations", "np_rng", "np_rng_ranks", "world_size"):
        assert sa[key] == sb[key], key
    ta, tb = (
        load_file(straight / "checkpoint" / "agent.safetensors"),
        load_file(split / "checkpoint" / "agent.safetensors"),
    )
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert "rng/sampler/rank1" in ta


@pytest.mark.slow
def test_the_training_command_under_accelerate_launch(tmp_path: Path) -> None:
    """``accelerate launch`` starts the same command unchanged (its multi-process launcher is torchrun's)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    run = tmp_path / "run"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", f"--main_process_port={free_port()}"]
    command += [*TRAIN, "--timesteps", "400", "--run-dir", str(run)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["processes"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["charts/episodes"] == 16 for r in rows)
    assert _state(run)["world_size"] == 2
