"""Exception types of textenv (kept free of torch so ``import textenv`` stays light)."""

from __future__ import annotations


class RewardModelError(RuntimeError):
    """The reward model failed: it raised, returned the wrong number of scores, or a NaN/inf score.

    The message names the prompt (and response) concerned. The environment's state is left as it was
    before the failing ``step``, so the step can be retried once the reward model is fixed.
    """


class CheckpointError(ValueError):
    """A saved folder (an agent's checkpoint, a model) is incomplete or damaged: a file is missing,
    truncated or altered, or cannot be read. The message names the file. Nothing was loaded."""
