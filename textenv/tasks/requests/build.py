"""Build the requests task's assets: a policy pretrained on requests answered by a careless crowd, and a
reward model learned from labellers who judge how well a review meets its request.

    python -m textenv.tasks.requests.build --in-place    # rebuild the shipped assets (about 9 min, 2 cores)
    python -m textenv.tasks.requests.build --tiny          # seconds, into build/requests/tiny-assets

The stages are :mod:`textenv.tasks.building`'s: corpus and tokenizer, pretraining, comparison groups of six
of the policy's samples for one request (in 30% of the groups one sample is corrupted as in the default
task) labelled by gold's utility with Bradley-Terry noise, the reward model, and its agreement with gold
in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textenv.tasks import building, requests
from textenv.tasks.building import BuildConfig, Recipe
from textenv.tasks.reviews.build import corrupt
from textenv.tasks.reviews.gold import LABELLER_TEMPERATURE


def utility(prompt: str, response: str) -> float:
    return requests.gold_score(prompt, response).utility


def recipe(config: BuildConfig | None = None) -> Recipe:
    return Recipe(
        name="requests",
        corpus=lambda size, seed: requests.sample_corpus(size, seed=seed),
        prompts=requests.default_prompts(),
        evaluate=requests.evaluate,
        gold=utility,
        config=config or BuildConfig(n_positions=40, labeller_temperature=LABELLER_TEMPERATURE),
        labeller_utility=utility,
        corrupt=corrupt,
        grammatical=lambda prompt, response: requests.gold_score(prompt, response).grammatical,
        notes={
            "follow_sentiment": requests.FOLLOW_SENTIMENT,
            "follow_subject": requests.FOLLOW_SUBJECT,
        },
    )


def build(
    out: Path, work_dir: Path = Path("build/requests"), config: BuildConfig | None = None
) -> dict[str, Any]:
    return building.build(recipe(config), out, work_dir)


def main(argv: list[str] | None = None) -> None:
    building.main(recipe(), requests.ASSETS, __doc__ or "", argv)


if __name__ == "__main__":
    main()
