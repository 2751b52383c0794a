"""Build the verbosity task's assets: a policy pretrained on reviews of one to five sentences, and a reward
model learned from labellers who partly reward length.

    python -m textenv.tasks.verbosity.build --in-place    # rebuild the shipped assets (about 12 min, 2 cores)
    python -m textenv.tasks.verbosity.build --tiny          # seconds, into build/verbosity/tiny-assets

The stages are :mod:`textenv.tasks.building`'s: corpus and tokenizer, pretraining, comparison groups of six
of the policy's samples labelled by the biased labellers (:func:`textenv.tasks.verbosity.labeller_utility`;
in 30% of the groups one sample is corrupted as in the default task), the reward model, and its agreement
with gold (which does not share the bias) in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textenv.tasks import building, verbosity
from textenv.tasks.building import BuildConfig, Recipe
from textenv.tasks.reviews.build import corrupt
from textenv.tasks.reviews.gold import LABELLER_TEMPERATURE


def recipe(config: BuildConfig | None = None) -> Recipe:
    return Recipe(
        name="verbosity",
        corpus=lambda size, seed: verbosity.sample_reviews(size, seed=seed),
        prompts=verbosity.default_prompts(),
        evaluate=verbosity.evaluate,
        gold=lambda prompt, response: verbosity.gold_score(prompt, response).utility,
        config=config or BuildConfig(max_new_tokens=48, labeller_temperature=LABELLER_TEMPERATURE),
        labeller_utility=verbosity.labeller_utility,
        corrupt=corrupt,
        grammatical=lambda prompt, response: verbosity.gold_score(prompt, response).grammatical,
        notes={
            "sentence_weights": list(verbosity.SENTENCE_WEIGHTS),
            "max_body_words": verbosity.MAX_BODY_WORDS,
            "concise_words": verbosity.CONCISE_WORDS,
            "verbosity_cost": verbosity.VERBOSITY_COST,
            "labeller_length_bias": verbosity.LENGTH_BIAS,
        },
    )


def build(
    out: Path, work_dir: Path = Path("build/verbosity"), config: BuildConfig | None = None
) -> dict[str, Any]:
    return building.build(recipe(config), out, work_dir)


def main(argv: list[str] | None = None) -> None:
    building.main(recipe(), verbosity.ASSETS, __doc__ or "", argv)


if __name__ == "__main__":
    main()
