"""Build the treasure task's assets: a tokenizer and a small GPT-2 pretrained on persistent random walks.

    python -m textenv.tasks.treasure.build --in-place    # rebuild the shipped assets (about 2 min, 2 cores)
    python -m textenv.tasks.treasure.build --tiny          # seconds, into build/treasure/tiny-assets

The reward is a rule, not a learned model, so the build stops after the policy: corpus and tokenizer,
pretraining, the reference's quality on fresh samples, the manifest (stages of
:mod:`textenv.tasks.building`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textenv.tasks import building, treasure
from textenv.tasks.building import BuildConfig, Recipe


def recipe(config: BuildConfig | None = None) -> Recipe:
    return Recipe(
        name="treasure",
        corpus=lambda size, seed: treasure.sample_corpus(size, seed=seed),
        prompts=treasure.default_prompts(),
        evaluate=treasure.evaluate,
        gold=lambda prompt, response: float(treasure.follow(prompt, response).found),
        config=config
        or BuildConfig(
            n_positions=32, pretrain_steps=1500, comparison_groups=0, max_new_tokens=20, eval_samples=20_000
        ),
        notes={
            "treasure": list(treasure.TREASURE),
            "corpus_moves": [treasure.MIN_MOVES, treasure.MAX_MOVES],
            "persistence": treasure.PERSISTENCE,
        },
    )


def build(
    out: Path, work_dir: Path = Path("build/treasure"), config: BuildConfig | None = None
) -> dict[str, Any]:
    return building.build(recipe(config), out, work_dir)


def main(argv: list[str] | None = None) -> None:
    building.main(recipe(), treasure.ASSETS, __doc__ or "", argv)


if __name__ == "__main__":
    main()
