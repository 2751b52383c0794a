"""Data-parallel training through ``torch.distributed``: what the agents need from it, and nothing more.

A run launched by ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu --num_processes N``
(both set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address) starts one process per rank;
:func:`init_from_environment` joins them into a process group (gloo on CPU, NCCL on GPUs). Then each rank:

* steps its own share of the vector env: ``num_envs`` is the global batch, ``num_envs / world_size``
  sub-envs a rank, with its own sampler and prompt RNGs (rank 0's are those of a one-process run);
* averages the gradients of every update over the ranks before clipping and stepping, as DDP does (one
  all-reduce of the flattened gradient per optimizer step; see :func:`average_gradients` for why not the
  DDP wrapper), so the weights, the optimizer state and the value head stay identical on every rank;
* holds the env's adaptive KL coefficient still during a rollout and then moves it once with the KL of the
  episodes of all ranks, so beta is the same everywhere;
* reports metrics averaged over the ranks (episode counts and tokens summed).

Rank 0 alone writes logs and checkpoints; a checkpoint holds every rank's RNG state and resumes exactly
when it is launched again with the same number of processes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

#: How long a rank waits for the others at a collective (rank 0 evaluates and saves while they wait).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("TEXTENV_DIST_TIMEOUT_MINUTES", "60")))


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 when not launched by one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_environment(device: str | None = None) -> str | None:
    """Join the process group of a ``torchrun`` / ``accelerate launch`` run, if this is one.

    Returns the device this rank should use: ``device`` as given, with ``cuda`` made ``cuda:LOCAL_RANK``
    (one GPU per rank). A run that no launcher started (``WORLD_SIZE`` unset or 1) is left alone. The
    backend is NCCL when the device is a GPU and gloo otherwise (``TEXTENV_DIST_BACKEND`` overrides).

    More processes on a node than it has GPUs (``LOCAL_WORLD_SIZE`` above the GPU count; two ranks on one
    GPU to try data parallelism there): the ranks share the GPUs in turn, ``cuda:LOCAL_RANK % count``,
    under gloo, because NCCL refuses two ranks on one GPU. ``cuda`` on a machine without a GPU is an error
    that says so.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    shared = False
    if device is not None and device.startswith("cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError(f"device {device!r} asked for, but torch sees no GPU on this machine")
        if device == "cuda":
            shared = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > count
            device = f"cuda:{local_rank % count}"
        torch.cuda.set_device(torch.device(device))
    gpu = device is not None and device.startswith("cuda")
    backend = os.environ.get("TEXTENV_DIST_BACKEND") or ("nccl" if gpu and not shared else "gloo")
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a launched run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def _device() -> torch.device:
    """Where collectives' tensors live: the GPU of this rank under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sum of ``values`` over the ranks (``values`` itself outside a process group)."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """The element-wise mean of ``values`` over the ranks."""
    size = world_size()
    return [v / size for v in all_reduce_sum(values)]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop decision all must follow)."""
    return all_reduce_sum([float(flag)])[0] > 0


def reduce_metrics(metrics: dict[str, float], sums: Sequence[str] = ()) -> dict[str, float]:
    """``metrics`` averaged over the ranks, the keys in ``sums`` summed; every rank must pass the same
    keys (checked: a rank with other keys is an error that names them, not a silent mix-up)."""
    if not active():
        return dict(metrics)
    keys = list(metrics)
    gathered = gather_objects(sorted(keys))
    if any(k != gathered[0] for k in gathered):
        every, common = set().union(*map(set, gathered)), set(keys).intersection(*map(set, gathered))
        raise RuntimeError(f"ranks report different metrics: {sorted(every - common)}")
    order = sorted(keys)  # the same on every rank, whatever order each built its dict in
    totals = dict(zip(order, all_reduce_sum([metrics[k] for k in order]), strict=True))
    size = world_size()
    return {k: totals[k] if k in sums else totals[k] / size for k in keys}


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in one all-reduce.

    What DDP does after ``backward``, without its wrapper: an agent's loss comes from several forward
    passes (the policy's, a separate critic's, PPO-ptx's language-model loss) and DDP allows one forward
    through the wrapper per backward. A parameter without a gradient on this rank counts as a zero one, so
    every rank reduces a vector of the same layout; its ``grad`` is set when another rank had one.
    """
    if not active() or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    where = _device()  # GPU gradients go through the host under gloo (ranks sharing a GPU)
    reduced = flat if flat.device.type == where.type else flat.to(where)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    flat = reduced.to(flat.device) / world_size()
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a process group)."""
    if active():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` outside a group)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` outside a group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s RNGs: ``seed`` itself on rank 0 (a one-process run is rank 0 of one), and
    an independent stream for every other rank (numpy's ``SeedSequence`` of ``(seed, rank)``)."""
    if rank == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)
