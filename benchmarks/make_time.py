"""How long `gymnasium.make("TextRLHF-v0")` takes on the embedded default task, after imports.

    python benchmarks/make_time.py [--repeats 5]

Imports (gymnasium, torch, transformers, textenv's modules) are done first and timed apart: the figure of
interest is the make itself, which loads the shipped policy, its frozen reference, the tokenizer and the
reward model from the package's files. Prints the first make and the median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="makes after the first")
    args = parser.parse_args()

    start = time.perf_counter()
    import gymnasium as gym
    import transformers

    import textenv
    import textenv.env  # torch, transformers and the env's modules
    import textenv.rewards

    transformers.logging.set_verbosity_error()
    gym.register_envs(textenv)
    imports = time.perf_counter() - start

    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        env = gym.make("TextRLHF-v0")
        times.append(time.perf_counter() - start)
        env.close()
    print(f"imports                 {imports:6.2f} s")
    print(f"first make              {times[0]:6.2f} s")
    print(f"median of next {args.repeats}       {statistics.median(times[1:]):6.2f} s")
    print(f"(policy {sum(p.numel() for p in env.unwrapped.policy.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
