"""Tiny offline models for tests, demos and benchmarks: built in well under a second, no download.

A word-level tokenizer over a small review vocabulary, GPT-2-architecture causal LMs and classifiers of a
few thousand to a few million parameters, a few prompts, and a lexicon reward. The models are random:
stand-ins to exercise the machinery, not the tasks of ``textenv.tasks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
SUBJECTS = ["the food", "the service", "the room", "the staff", "the view", "the price"]
VERBS = ["was", "is", "seemed"]
INTENSIFIERS = ["very", "really", "quite"]
POSITIVE = ["good", "great", "lovely", "friendly", "clean"]
NEGATIVE = ["bad", "awful", "rude", "dirty", "slow"]
WORDS = sorted(
    {w for phrase in SUBJECTS for w in phrase.split()}
    | set(VERBS + INTENSIFIERS + POSITIVE + NEGATIVE)
    | {"not", "and", "but", "overall", "it", "."}
)
PROMPTS = ["the food was", "the service", "overall it was", "the room was very", "the staff"]


def toy_tokenizer(words: Sequence[str] = WORDS, *, pad_token: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose words keep their leading space (byte-level, like GPT-2's).

    Vocabulary: ``<pad>``, ``<eos>``, ``<unk>``, then each word with and without a leading space.
    ``pad_token=False`` leaves the pad token unset, as GPT-2's own tokenizer does.
    """
    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        for form in (word, "Ġ" + word):  # "Ġ" is the byte-level mark of a leading space
            vocab.setdefault(form, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>" if pad_token else None,
    )


def gpt2_config(
    tokenizer: PreTrainedTokenizerBase,
    initializer_range: float = 0.02,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 128,
) -> GPT2Config:
    """A GPT-2 config for ``tokenizer`` (its vocabulary, EOS as BOS, its pad id) with dropout off: RL
    compares log-probs of the same text twice, and dropout would make them differ."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def toy_causal_lm(
    tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, initializer_range: float = 0.02, **sizes: int
) -> GPT2LMHeadModel:
    """A random GPT-2 causal LM for ``tokenizer`` (``sizes``: n_layer, n_embd, n_head, n_positions).

    A larger ``initializer_range`` (e.g. 0.5) gives peaked next-token distributions, so that two models of
    different seeds are far apart in KL.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(gpt2_config(tokenizer, initializer_range, **sizes)).eval()


def toy_classifier(
    tokenizer: PreTrainedTokenizerFast,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    initializer_range: float = 0.02,
    **sizes: int,
) -> GPT2ForSequenceClassification:
    """A random GPT-2 sequence classifier: one logit, or one per name in ``labels``."""
    config = gpt2_config(tokenizer, initializer_range, **sizes)
    if labels is None:
        config.num_labels = 1
    else:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2ForSequenceClassification(config).eval()


def lexicon_sentiment(text: str) -> float:
    """Mean polarity of the sentiment words of ``text``, in [-1, 1].

    +1 per positive word, -1 per negative word; "not" flips the next sentiment word of its clause
    ("not very good" counts -1). Text without sentiment words scores 0.
    """
    score, negate, count = 0.0, False, 0
    for word in text.replace(".", " . ").split():
        if word == "not":
            negate = True
        elif word in ("and", "but", "."):
            negate = False
        elif word in POSITIVE or word in NEGATIVE:
            polarity = 1.0 if word in POSITIVE else -1.0
            score += -polarity if negate else polarity
            count += 1
            negate = False
    return score / max(count, 1)


def lexicon_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A reward-model stand-in: the lexicon sentiment of each response."""
    return [lexicon_sentiment(r) for r in responses]
