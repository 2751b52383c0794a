"""Build the sorting task's assets: a tokenizer and a small GPT-2 pretrained on a sloppy sorter's work.

    python -m textenv.tasks.sorting.build --in-place    # rebuild the shipped assets (about 3 min, 2 cores)
    python -m textenv.tasks.sorting.build --tiny          # seconds, into build/sorting/tiny-assets

The reward is a checker, not a learned model, so the build stops after the policy: corpus and tokenizer,
pretraining, the reference's quality on fresh samples, the manifest (stages of
:mod:`textenv.tasks.building`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textenv.tasks import building, sorting
from textenv.tasks.building import BuildConfig, Recipe


def recipe(config: BuildConfig | None = None) -> Recipe:
    return Recipe(
        name="sorting",
        corpus=lambda size, seed: sorting.sample_corpus(size, seed=seed),
        prompts=sorting.default_prompts(),
        evaluate=sorting.evaluate,
        gold=lambda prompt, response: float(sorting.is_sorted_answer(prompt, response)),
        config=config
        or BuildConfig(n_positions=32, pretrain_steps=2000, comparison_groups=0, max_new_tokens=12),
        notes={
            "numbers": sorting.NUMBERS,
            "items": [sorting.MIN_ITEMS, sorting.MAX_ITEMS],
            "sloppiness": sorting.SLOPPINESS,
        },
    )


def build(
    out: Path, work_dir: Path = Path("build/sorting"), config: BuildConfig | None = None
) -> dict[str, Any]:
    return building.build(recipe(config), out, work_dir)


def main(argv: list[str] | None = None) -> None:
    building.main(recipe(), sorting.ASSETS, __doc__ or "", argv)


if __name__ == "__main__":
    main()
