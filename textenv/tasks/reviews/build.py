"""Build the default task's assets from nothing: the three stages of RLHF's set-up in miniature.

    python -m textenv.tasks.reviews.build --in-place    # rebuild the shipped assets (under 10 min, 2 cores)
    python -m textenv.tasks.reviews.build --tiny          # seconds, into build/reviews/tiny-assets

1. **Corpus**: reviews drawn from the grammar (:mod:`~textenv.tasks.reviews.grammar`).
2. **Tokenizer**: a byte-level BPE trained on the corpus with the ``tokenizers`` library.
3. **Policy = reference**: a small GPT-2 pretrained on the corpus (next-token loss, AdamW, cosine decay).
4. **Preferences**: comparison groups of six of the policy's own samples for the same prompt (in a share
   of the groups one of them corrupted: shuffled, truncated, a word dropped, or a salad of positive words),
   every pair of a group labelled by the simulated labellers of :mod:`~textenv.tasks.reviews.gold`, saved
   as JSON Lines with a ``group`` key.
5. **Reward model**: the policy's blocks plus two new ones and a scalar head, trained on that file by
   :func:`textenv.reward_training.train_reward_model`, then scaled so that the reference's samples score
   with standard deviation 1.
6. **Evaluation and manifest**: quality figures against gold, and the sha256 of every shipped file.

The stages are :mod:`textenv.tasks.building`'s, shared by every task. The files go to ``--out DIR``, or
over the package's own ``assets`` with ``--in-place`` (then pin the new manifest's sha256 in the task);
the preference data and a timing report go to ``--work-dir``. Same seed, same machine and library
versions: the same files (torch runs on a fixed number of threads for that reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from textenv.tasks import building
from textenv.tasks.building import BuildConfig, Recipe, spearman
from textenv.tasks.reviews import ASSETS
from textenv.tasks.reviews.gold import LABELLER_TEMPERATURE, evaluate, gold_score, is_grammatical
from textenv.tasks.reviews.grammar import ADJECTIVES, INTENSIFIERS, default_prompts, sample_corpus

_POSITIVE_WORDS = [w for table in ADJECTIVES.values() for w, v in table.items() if v > 0]


def corrupt(rng: np.random.Generator, response: str) -> str:
    """A broken variant of a response, for the reward model to learn that broken text is bad."""
    words = response.split()
    kind = int(rng.integers(4))
    if kind == 0 and len(words) > 2:  # shuffled
        words = [words[i] for i in rng.permutation(len(words))]
    elif kind == 1 and len(words) > 2:  # cut short
        words = words[: int(rng.integers(1, len(words) - 1))]
    elif kind == 2 and len(words) > 1:  # a word dropped
        del words[int(rng.integers(len(words)))]
    else:  # a salad of positive words: the classic reward hack
        size = int(rng.integers(3, 12))
        pool = _POSITIVE_WORDS + list(INTENSIFIERS)
        words = [pool[int(i)] for i in rng.integers(len(pool), size=size)] + ["."]
    return "".join(" " + w for w in words)


def utility(prompt: str, response: str) -> float:
    """The labellers' and gold's utility: the sentiment of a grammatical review, -1 for broken text."""
    return gold_score(prompt, response).utility


def sentiment(prompt: str, response: str) -> float:
    return gold_score(prompt, response).sentiment


def recipe(config: BuildConfig | None = None) -> Recipe:
    """The default task's build: reviews of the grammar, labellers who prefer the more positive review."""
    return Recipe(
        name="reviews",
        corpus=lambda size, seed: sample_corpus(size, seed=seed),
        prompts=default_prompts(),
        evaluate=evaluate,
        gold=utility,
        config=config or BuildConfig(labeller_temperature=LABELLER_TEMPERATURE),
        labeller_utility=utility,
        corrupt=corrupt,
        grammatical=is_grammatical,
        rank_target=("gold_sentiment", sentiment),
    )


def build(
    out: Path,
    work_dir: Path = Path("build/reviews"),
    config: BuildConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to ``out/manifest.json``)."""
    return building.build(recipe(config), out, work_dir, progress)


def main(argv: list[str] | None = None) -> None:
    building.main(recipe(), ASSETS, __doc__ or "", argv)


__all__ = ["BuildConfig", "build", "corrupt", "main", "recipe", "spearman"]

if __name__ == "__main__":
    main()
