"""Where episodes' prompts come from: a fixed list (drawn uniformly) or a callable ``(np_random) -> str``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from textenv.config import check_text

PromptSpec = Sequence[str] | Callable[[np.random.Generator], str]


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt. ``truncated`` says the text was cut to ``max_prompt_tokens`` (left side)."""

    text: str
    token_ids: np.ndarray  # (n,) int64, 1 <= n <= max_prompt_tokens
    truncated: bool = False


class PromptSource:
    """Draws and tokenises prompts with the policy's tokenizer.

    ``prompts`` comes checked by :class:`textenv.EnvConfig` (a callable, or a list of valid strings). A
    list is tokenised once, here, so a bad entry fails at construction. A prompt longer than
    ``max_prompt_tokens`` raises ``ValueError`` unless ``truncate`` is set; then its *first* tokens are
    dropped (the end of a prompt is what the response continues) and the episode's info says
    ``prompt_truncated=True``.
    """

    def __init__(
        self,
        prompts: PromptSpec,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_tokens: int,
        vocab_size: int,
        truncate: bool = False,
    ):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.vocab_size = vocab_size
        self.truncate = truncate
        self._fn: Callable[[np.random.Generator], str] | None = None
        self._fixed: list[Prompt] = []
        if callable(prompts):
            self._fn = prompts
        else:
            texts = list(prompts)  # their types were checked by EnvConfig (check_prompts)
            if not texts:
                raise ValueError("prompts is an empty list; give at least one prompt")
            ids = tokenizer(texts)["input_ids"]
            self._fixed = [
                self._checked(t, tokens, where=f"prompts[{i}]")
                for i, (t, tokens) in enumerate(zip(texts, ids, strict=True))
            ]

    def _checked(self, text: str, tokens: Sequence[int], where: str) -> Prompt:
        """``text`` tokenised as ``tokens``: checked against the vocabulary and the width."""
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.size == 0:
            raise ValueError(
                f"{where} {text!r} has 0 tokens; a prompt needs at least 1 token to condition on "
                "(use a tokenizer that adds a BOS token, or a non-empty prompt)"
            )
        if ids.max() >= self.vocab_size or ids.min() < 0:
            raise ValueError(
                f"{where} {text!r} has token id {int(ids.max())}, outside the policy's vocabulary of "
                f"{self.vocab_size}; do the tokenizer and the policy belong together?"
            )
        if ids.size > self.max_prompt_tokens:
            if not self.truncate:
                raise ValueError(
                    f"{where} {text[:60]!r}... has {ids.size} tokens, more than max_prompt_tokens="
                    f"{self.max_prompt_tokens}; raise max_prompt_tokens or pass truncate_prompts=True"
                )
            ids = ids[-self.max_prompt_tokens :]
            return Prompt(str(self.tokenizer.decode(ids.tolist())), ids, truncated=True)
        return Prompt(text, ids)

    def encode(self, text: str, where: str = "prompt") -> Prompt:
        """Tokenise and check one prompt text."""
        check_text(text, where)
        return self._checked(text, self.tokenizer(text)["input_ids"], where)

    def draw(self, rng: np.random.Generator) -> Prompt:
        """Draw the next prompt with ``rng`` (the episode's ``np_random``)."""
        if self._fn is not None:
            return self.encode(self._fn(rng), where="the prompt callable's result")
        return self._fixed[int(rng.integers(len(self._fixed)))]
