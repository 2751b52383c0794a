"""Data parallelism does not change what is learned: 2 processes against 1, same global batch and seeds.

For each seed, the training command trains PPO on the default task twice with the same settings (a
global batch of ``--num-envs`` episodes): once in one process, once launched by ``torchrun`` in
``--processes`` processes (gloo, one CPU thread each), each stepping its share of the batch. Both
evaluate the policy every ``--eval-every`` iterations on the same fixed-seed prompts. The table gives,
at each evaluation, the one-process runs' gold (mean and the range over seeds) and the multi-process runs'
mean, and whether that mean lies within the one-process range; the plot shows the same curves.

    python benchmarks/data_parallel.py --out benchmarks/results/data-parallel [--seeds 3]
    python benchmarks/data_parallel.py --out benchmarks/results/gpu/data-parallel --device cuda

On GPUs (``--device cuda``) each process takes one; with fewer GPUs than processes they share them
(gloo instead of NCCL, see ``agents.distributed.init_from_environment``).

Runs already in ``--out`` (a ``summary.json`` present) are kept, so a killed benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(run: Path, seed: int, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the training command (skipped when ``run`` holds a finished one); its record."""
    flags = ["-m", "agents.train", "--seed", str(seed), "--timesteps", str(args.timesteps)]
    flags += ["--num-envs", str(args.num_envs), "--eval-every", str(args.eval_every)]
    flags += ["--eval-every-episodes", str(args.eval_episodes), "--eval-episodes", str(args.eval_episodes)]
    flags += ["--quiet", "--samples", "0", "--save-every", "0", "--run-dir", str(run)]
    flags += ["--device", args.device, "--mixed-precision", args.mixed_precision]
    if processes == 1:
        command = [sys.executable, *flags, "--threads", str(args.threads)]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", *flags]
        env = os.environ | {"OMP_NUM_THREADS": str(max(1, args.threads // processes))}
    if not (run / "summary.json").exists() or "after" not in json.loads((run / "summary.json").read_text()):
        if run.exists():
            import shutil

            shutil.rmtree(run)  # an unfinished run starts again
        start_wall, start_cpu = time.perf_counter(), os.times()
        done = subprocess.run(
            command, cwd=ROOT, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        end = os.times()
        cost = {
            "wall_seconds": time.perf_counter() - start_wall,
            "cpu_seconds": (end.children_user + end.children_system)
            - (start_cpu.children_user + start_cpu.children_system),
            "load_average": os.getloadavg()[0],
        }
        (run / "cost.json").write_text(json.dumps(cost), encoding="utf-8")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [
        (int(r["charts/iteration"]), r["charts/timesteps"], r["eval/gold"]) for r in rows if "eval/gold" in r
    ]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "processes": processes,
        "evals": evals,
        "final_gold": summary["after"]["gold"],
        "final_kl": summary["after"]["kl"],
        "cost": json.loads((run / "cost.json").read_text(encoding="utf-8")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=256, help="global batch (episodes per iteration)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, split over processes")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda: a GPU per process (processes share GPUs when fewer)"
    )
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in range(args.seeds):
        for processes in (1, args.processes):
            record = train(args.out / f"p{processes}-s{seed}", seed, processes, args)
            records.append(record)
            print(
                f"seed {seed}, {processes} process(es): final gold {record['final_gold']:+.3f}, "
                f"KL {record['final_kl']:.2f}, {record['cost']['wall_seconds']:.0f} s",
                flush=True,
            )
    (args.out / "records.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    report(records, args)


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    one = [r for r in records if r["processes"] == 1]
    many = [r for r in records if r["processes"] == args.processes]
    points = min(len(r["evals"]) for r in records)
    lines = [
        f"PPO on reviews, global batch {args.num_envs}, {args.timesteps:,} tokens, {len(one)} seeds, "
        f"device {args.device}, mixed precision {args.mixed_precision}; "
        f"eval/gold on {args.eval_episodes} fixed-seed episodes",
        "",
        f"| iteration | 1 process: mean [min, max] | {args.processes} processes: mean | inside? |",
        "|---|---|---|---|",
    ]
    inside = 0
    for i in range(points):
        a = [r["evals"][i][2] for r in one]
        b = [r["evals"][i][2] for r in many]
        mean_b = statistics.mean(b)
        ok = min(a) <= mean_b <= max(a)
        inside += ok
        lines.append(
            f"| {one[0]['evals'][i][0]} | {statistics.mean(a):+.3f} [{min(a):+.3f}, {max(a):+.3f}] | "
            f"{mean_b:+.3f} [{min(b):+.3f}, {max(b):+.3f}] | {'yes' if ok else 'no'} |"
        )
    for label, group in (("1 process", one), (f"{args.processes} processes", many)):
        finals = [r["final_gold"] for r in group]
        kls = [r["final_kl"] for r in group]
        wall = [r["cost"]["wall_seconds"] for r in group]
        cpu = [r["cost"]["cpu_seconds"] for r in group]
        loads = [r["cost"]["load_average"] for r in group]
        lines.append(
            f"\n{label}: final gold {statistics.mean(finals):+.3f} [{min(finals):+.3f}, {max(finals):+.3f}], "
            f"KL {statistics.mean(kls):.2f}; wall {statistics.median(wall):.0f} s, "
            f"CPU {statistics.median(cpu):.0f} s (medians), "
            f"load average at the end {min(loads):.1f}-{max(loads):.1f}"
        )
    lines.append(
        f"\n{args.processes}-process mean inside the 1-process range at {inside} of {points} evaluations"
    )
    text = "\n".join(lines)
    (args.out / "report.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    plot(one, many, args)


def plot(one: list[dict[str, Any]], many: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for group, colour, label in (
        (one, "tab:blue", "1 process"),
        (many, "tab:orange", f"{args.processes} processes"),
    ):
        for k, r in enumerate(group):
            x = [e[1] for e in r["evals"]]
            y = [e[2] for e in r["evals"]]
            ax.plot(x, y, color=colour, alpha=0.8, label=label if k == 0 else None)
    ax.set_xlabel("response tokens")
    ax.set_ylabel("eval/gold")
    ax.set_title(f"PPO on reviews, global batch {args.num_envs}: one process against {args.processes}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120)


if __name__ == "__main__":
    main()
