"""How long `gymnasium.make("TextRLHF-v0", task=NAME)` takes for each task of the suite, after imports.

    python benchmarks/make_time.py [--repeats 5] [--tasks reviews sorting]

Imports (gymnasium, torch, transformers, textenv's modules) are done first and timed apart: the figure of
interest is the make itself, which loads the task's shipped policy, its frozen reference, the tokenizer,
the reward model (or scoring function) and the prompts from the package's files. Each task's first make
comes before any other make of that task; the table gives it and the median of the repeats. The bar of
the suite: 2 s after the imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="makes after the first")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to time (default: all)")
    args = parser.parse_args()

    start = time.perf_counter()
    import gymnasium as gym
    import transformers

    import textenv
    import textenv.env  # torch, transformers and the env's modules
    import textenv.rewards
    from textenv import tasks

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gym.register_envs(textenv)
    imports = time.perf_counter() - start

    print(f"imports: {imports:.2f} s (load average {os.getloadavg()[0]:.2f})\n")
    print("| task | first make (s) | median of next makes (s) | policy parameters |")
    print("|---|---|---|---|")
    for name in args.tasks or tasks.names():
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            env = gym.make("TextRLHF-v0", task=name)
            times.append(time.perf_counter() - start)
            env.close()
        size = sum(p.numel() for p in env.unwrapped.policy.parameters())
        print(f"| {name} | {times[0]:.2f} | {statistics.median(times[1:]):.2f} | {size:,} |")


if __name__ == "__main__":
    main()
