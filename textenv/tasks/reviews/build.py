"""Build the default task's assets from nothing: the three stages of RLHF's set-up in miniature.

    python -m textenv.tasks.reviews.build    # rebuild the shipped assets (under 10 minutes, 2 cores)
    python -m textenv.tasks.reviews.build --tiny --out tiny-assets --work-dir tiny-build    # seconds

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

Shipped files go to ``--out`` (the package's ``assets`` directory by default); the preference data and a
timing report go to ``--work-dir``. Same seed, same machine and library versions: the same files (torch
runs on a fixed number of threads for that reason).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from textenv.reward_training import (
    PreferencePair,
    RewardTrainingConfig,
    save_preference_pairs,
    save_reward_model,
    score_texts,
    train_reward_model,
)
from textenv.sampling import sample_responses
from textenv.tasks.reviews import ASSETS, MANIFEST, POLICY_DIR, PROMPTS_FILE, REWARD_MODEL_DIR
from textenv.tasks.reviews.gold import LABELLER_TEMPERATURE, evaluate, gold_score, prefer
from textenv.tasks.reviews.grammar import ADJECTIVES, INTENSIFIERS, default_prompts, sample_corpus
from textenv.toy import gpt2_config

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass
class BuildConfig:
    """Sizes and settings of the build (recorded in the manifest)."""

    seed: int = field(default=0, metadata={"help": "seed of every random draw"})
    corpus_size: int = field(default=50_000, metadata={"help": "reviews in the pretraining corpus"})
    vocab_size: int = field(
        default=1024, metadata={"help": "BPE vocabulary limit (the merges run out first)"}
    )
    n_layer: int = field(default=2, metadata={"help": "transformer blocks of the policy"})
    n_embd: int = field(default=128, metadata={"help": "width of the policy"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_positions: int = field(default=64, metadata={"help": "longest prompt + response the models read"})
    pretrain_steps: int = field(default=4000, metadata={"help": "optimiser steps of pretraining"})
    pretrain_batch_size: int = field(default=64, metadata={"help": "reviews per pretraining step"})
    pretrain_lr: float = field(default=3e-3, metadata={"help": "peak pretraining learning rate"})
    comparison_groups: int = field(
        default=10_000, metadata={"help": "prompt draws with several responses to compare (10% held out)"}
    )
    responses_per_group: int = field(
        default=6, metadata={"help": "policy samples per group; every pair of them is labelled"}
    )
    corrupted_fraction: float = field(
        default=0.3, metadata={"help": "share of groups with one response corrupted"}
    )
    labeller_temperature: float = field(
        default=LABELLER_TEMPERATURE, metadata={"help": "Bradley-Terry temperature of the labellers"}
    )
    rm_epochs: float = field(default=3.0, metadata={"help": "reward-model passes over the pairs"})
    rm_batch_size: int = field(
        default=165, metadata={"help": "pairs per reward-model step (11 groups of 6 responses)"}
    )
    rm_lr: float = field(default=1e-3, metadata={"help": "peak reward-model learning rate"})
    rm_extra_layers: int = field(
        default=2, metadata={"help": "blocks the reward model adds on the policy's (identity at start)"}
    )
    max_new_tokens: int = field(default=24, metadata={"help": "response limit of samples (the env default)"})
    eval_samples: int = field(default=2000, metadata={"help": "reference samples the quality figures use"})
    threads: int = field(default=2, metadata={"help": "torch threads (fixed, for reproducible files)"})

    @classmethod
    def tiny(cls, seed: int = 0) -> BuildConfig:
        """Reduced sizes that run the whole pipeline in seconds (for tests; the models learn little)."""
        return cls(
            seed=seed,
            corpus_size=400,
            vocab_size=400,
            n_layer=1,
            n_embd=32,
            n_head=2,
            pretrain_steps=20,
            pretrain_batch_size=16,
            comparison_groups=30,
            responses_per_group=4,
            rm_epochs=1.0,
            rm_batch_size=16,
            eval_samples=64,
        )


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``corpus`` with ``<|endoftext|>`` (bos = eos) and a separate ``<|pad|>``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text encodes, not only the corpus'
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOS, eos_token=EOS, pad_token=PAD, model_max_length=64
    )


def _cosine(step: int, total: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / total))


def pretrain_policy(
    corpus: list[str], tokenizer: PreTrainedTokenizerFast, config: BuildConfig, progress: bool = False
) -> GPT2LMHeadModel:
    """A GPT-2 fitted to the corpus, each review followed by EOS. Dropout is off (RL wants exact ratios)."""
    torch.manual_seed(config.seed)
    gpt_config = gpt2_config(
        tokenizer,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_positions=config.n_positions,
    )
    model = GPT2LMHeadModel(gpt_config)
    rows = [[*ids, tokenizer.eos_token_id] for ids in tokenizer(corpus)["input_ids"]]
    lengths = torch.tensor([len(r) for r in rows])
    if int(lengths.max()) > config.n_positions:
        raise ValueError(
            f"a review has {int(lengths.max())} tokens, more than n_positions={config.n_positions}"
        )
    ids = torch.full((len(rows), int(lengths.max())), int(tokenizer.pad_token_id))
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.pretrain_lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    total, warmup = config.pretrain_steps, max(1, config.pretrain_steps // 50)
    rng = np.random.default_rng(config.seed)
    bar: Any = _bar(progress, total, "pretrain policy")
    model.train()
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = config.pretrain_lr * _cosine(step, total, warmup)
        index = torch.from_numpy(rng.integers(len(rows), size=config.pretrain_batch_size))
        width = int(lengths[index].max())
        loss = model(
            input_ids=ids[index, :width], attention_mask=mask[index, :width], labels=labels[index, :width]
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if bar is not None:
            bar.update()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return model


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


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


def make_preferences(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    config: BuildConfig,
) -> list[PreferencePair]:
    """Comparison groups as InstructGPT collects them: for each of ``config.comparison_groups`` draws of a
    prompt, ``config.responses_per_group`` samples of the policy (temperature 1), one of them replaced by a
    corrupted copy in ``config.corrupted_fraction`` of the groups, and every pair of them labelled by the
    simulated labellers (each pair on its own, with the labellers' noise). Pairs carry their group's index.
    """
    k = config.responses_per_group
    if k < 2:
        raise ValueError(f"responses_per_group must be at least 2, got {k}")
    rng = np.random.default_rng(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 1)
    draws = [prompts[int(i)] for i in rng.integers(len(prompts), size=config.comparison_groups)]
    samples = sample_responses(
        policy, tokenizer, draws * k, max_new_tokens=config.max_new_tokens, generator=generator
    )
    pairs = []
    for g, prompt in enumerate(draws):
        responses = samples[g :: len(draws)]
        if rng.random() < config.corrupted_fraction:
            responses[-1] = corrupt(rng, responses[-1])
        for i, j in itertools.combinations(range(k), 2):
            chosen, rejected = prefer(
                rng, prompt, responses[i], responses[j], temperature=config.labeller_temperature
            )
            pairs.append(PreferencePair(prompt, chosen, rejected, group=str(g)))
    return pairs


def reward_model_base(policy: GPT2LMHeadModel, extra_layers: int, seed: int) -> GPT2ForSequenceClassification:
    """The reward model before training: the policy's pretrained blocks, ``extra_layers`` new blocks on top
    and a scalar head. The new blocks' output projections start at zero, so they start as the identity and
    the model reads text exactly as the policy does; they give the reward model room to judge a whole review.
    """
    torch.manual_seed(seed)
    config = copy.deepcopy(policy.config)
    config.n_layer = policy.config.n_layer + extra_layers
    config.num_labels = 1
    model = GPT2ForSequenceClassification(config)
    model.transformer.load_state_dict(policy.transformer.state_dict(), strict=False)
    new_blocks = {str(i) for i in range(policy.config.n_layer, config.n_layer)}
    with torch.no_grad():
        for name, parameter in model.transformer.named_parameters():
            parts = name.split(".")  # h.<block>.attn.c_proj.weight, h.<block>.mlp.c_proj.bias, ...
            if parts[0] == "h" and parts[1] in new_blocks and parts[-2] == "c_proj":
                parameter.zero_()
    return model


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inverse, weights=r) / counts)[inverse]

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")  # undefined for a constant input
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def gold_accuracy(
    scores_first: np.ndarray,
    scores_second: np.ndarray,
    utilities_first: np.ndarray,
    utilities_second: np.ndarray,
) -> float:
    """Share of pairs (gold ties left out) the reward model orders as gold does."""
    differ = utilities_first != utilities_second
    agree = (scores_first > scores_second) == (utilities_first > utilities_second)
    return float(agree[differ].mean()) if differ.any() else float("nan")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(
    out: Path = ASSETS,
    work_dir: Path = Path("build/reviews"),
    config: BuildConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to ``out/manifest.json``)."""
    config = config or BuildConfig()
    out, work_dir = Path(out), Path(work_dir)
    torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    stages: Any = _bar(progress, 6, "build")
    if stages is not None:
        stages.leave = True
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        if stages is not None:
            stages.update()

    corpus = sample_corpus(config.corpus_size, seed=config.seed)
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    stage("corpus and tokenizer")
    policy = pretrain_policy(corpus, tokenizer, config, progress)
    for directory in (out / POLICY_DIR, out / REWARD_MODEL_DIR):
        if directory.exists():
            shutil.rmtree(directory)
    policy.save_pretrained(out / POLICY_DIR)
    tokenizer.save_pretrained(out / POLICY_DIR)
    prompts = default_prompts()
    (out / PROMPTS_FILE).write_text(json.dumps(prompts, indent=1) + "\n", encoding="utf-8")
    stage("pretrain policy")

    pairs = make_preferences(policy, tokenizer, prompts, config)
    work_dir.mkdir(parents=True, exist_ok=True)
    pairs_file = work_dir / "preferences.jsonl"
    save_preference_pairs(pairs, pairs_file)
    stage("preferences")

    rm_config = RewardTrainingConfig(
        epochs=config.rm_epochs, batch_size=config.rm_batch_size, learning_rate=config.rm_lr, seed=config.seed
    )
    base = reward_model_base(policy, config.rm_extra_layers, seed=config.seed)
    result = train_reward_model(pairs_file, base, tokenizer, config=rm_config, progress=progress)
    save_preference_pairs(result.eval_pairs, work_dir / "preferences_eval.jsonl")
    stage("reward model")

    # quality against gold, on fresh samples of the reference and on the held-out pairs
    generator = torch.Generator().manual_seed(config.seed + 2)
    rng = np.random.default_rng(config.seed + 2)
    eval_prompts = [prompts[int(i)] for i in rng.integers(len(prompts), size=config.eval_samples)]
    responses = sample_responses(
        policy, tokenizer, eval_prompts, max_new_tokens=config.max_new_tokens, generator=generator
    )
    reference_quality = evaluate(eval_prompts, responses)
    texts = [p + r for p, r in zip(eval_prompts, responses, strict=True)]
    rm_scores = score_texts(result.model, result.tokenizer, texts)
    std = float(rm_scores.std())
    if std > 0:  # unit scale on the reference's samples, so that beta means the same across rebuilds
        with torch.no_grad():
            head: torch.nn.Linear = result.model.score  # type: ignore[assignment]
            head.weight.mul_(1.0 / std)
        rm_scores = rm_scores / std
    save_reward_model(result, out / REWARD_MODEL_DIR)
    gold = np.array([gold_score(p, r).sentiment for p, r in zip(eval_prompts, responses, strict=True)])

    def fig(x: float) -> float | None:  # JSON has no NaN: an undefined figure is null
        return None if math.isnan(x) else round(x, 4)

    held = result.eval_pairs
    first_texts = [p.prompt + p.chosen for p in held]
    second_texts = [p.prompt + p.rejected for p in held]
    held_scores = score_texts(result.model, result.tokenizer, first_texts + second_texts)
    gold_first = [gold_score(p.prompt, p.chosen) for p in held]
    gold_second = [gold_score(p.prompt, p.rejected) for p in held]
    u1 = np.array([g.utility for g in gold_first])
    u2 = np.array([g.utility for g in gold_second])
    both_grammatical = np.array(
        [a.grammatical and b.grammatical for a, b in zip(gold_first, gold_second, strict=True)]
    )
    s1, s2 = held_scores[: len(held)], held_scores[len(held) :]
    quality = {
        "reference": {k: round(v, 4) for k, v in reference_quality.items()},
        "reward_model": {
            "heldout_pairs": len(held),
            "heldout_groups": len({p.group for p in held}),
            "heldout_accuracy_vs_labels": fig(float(np.mean(s1 > s2))),
            "heldout_accuracy_vs_gold": fig(gold_accuracy(s1, s2, u1, u2)),
            "heldout_accuracy_vs_gold_both_grammatical": fig(
                gold_accuracy(
                    s1[both_grammatical], s2[both_grammatical], u1[both_grammatical], u2[both_grammatical]
                )
            ),
            "spearman_vs_gold_sentiment": fig(spearman(rm_scores, gold)),
            "reference_score_mean": fig(float(rm_scores.mean())),
        },
    }
    stage("evaluate")

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "task": "reviews",
        "build": asdict(config),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "quality": quality,
        "files": {
            p.relative_to(out).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    stage("manifest")
    if stages is not None:
        stages.close()
    report = {
        "seconds": timings,
        "total_seconds": round(sum(timings.values()), 1),
        "reward_training": result.metrics,
    }
    (work_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the shipped files go")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build/reviews"),
        help="where the preference data and the timing report go",
    )
    parser.add_argument("--tiny", action="store_true", help="reduced sizes: a smoke run of seconds")
    for f in fields(BuildConfig):
        kind = float if f.type in ("float", float) else int
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f.metadata["help"])
    args = parser.parse_args(argv)
    config = BuildConfig.tiny() if args.tiny else BuildConfig()
    for f in fields(BuildConfig):
        value = getattr(args, f.name)
        if value is not None:
            setattr(config, f.name, value)
    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    manifest = build(args.out, args.work_dir, config, progress=True)
    seconds = time.perf_counter() - start
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"built {len(manifest['files'])} files ({size / 1e6:.2f} MB) in {args.out} in {seconds:.0f}s")
    print(json.dumps(manifest["quality"], indent=2))


if __name__ == "__main__":
    main()
