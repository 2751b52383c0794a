"""What every task's build shares: RLHF's set-up in miniature, from a corpus to a manifest.

A task's ``build.py`` describes its task as a :class:`Recipe` (its corpus, prompts, gold and, when the
reward is learned, its simulated labellers) and hands it to :func:`build`, which runs the same stages
for every task:

1. **Corpus and tokenizer**: the task's texts; a byte-level BPE trained on them.
2. **Policy = reference**: a small GPT-2 pretrained on the corpus (next-token loss, AdamW, cosine decay).
3. **Preferences** (tasks with a learned reward): comparison groups of the policy's own samples for one
   prompt (in a share of the groups one of them corrupted), every pair labelled by simulated labellers
   who choose by a Bradley-Terry probability of their utilities; saved as JSON Lines with a ``group`` key.
4. **Reward model**: the policy's blocks plus new ones and a scalar head, trained on that file by
   :func:`textenv.reward_training.train_reward_model`, then scaled so that the reference's samples score
   with standard deviation 1.
5. **Evaluation and manifest**: the reference's quality against gold on fresh samples, the reward model's
   agreement with gold on held-out pairs, and the sha256 of every shipped file.

Same seed, same machine and library versions: the same files (torch runs on a fixed number of threads).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
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
from textenv.tasks.base import (
    MANIFEST,
    POLICY_DIR,
    PROMPTS_FILE,
    REWARD_MODEL_DIR,
    Utility,
    file_sha256,
    prefer,
)
from textenv.toy import gpt2_config

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass
class BuildConfig:
    """Sizes and settings of a build (recorded in the manifest). The defaults are the reviews task's."""

    seed: int = field(default=0, metadata={"help": "seed of every random draw"})
    corpus_size: int = field(default=50_000, metadata={"help": "texts in the pretraining corpus"})
    vocab_size: int = field(
        default=1024, metadata={"help": "BPE vocabulary limit (the merges run out first)"}
    )
    n_layer: int = field(default=2, metadata={"help": "transformer blocks of the policy"})
    n_embd: int = field(default=128, metadata={"help": "width of the policy"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_positions: int = field(default=64, metadata={"help": "longest prompt + response the models read"})
    pretrain_steps: int = field(default=4000, metadata={"help": "optimiser steps of pretraining"})
    pretrain_batch_size: int = field(default=64, metadata={"help": "texts per pretraining step"})
    pretrain_lr: float = field(default=3e-3, metadata={"help": "peak pretraining learning rate"})
    comparison_groups: int = field(
        default=10_000,
        metadata={
            "help": "prompt draws with several responses to compare (10%% held out; 0: no reward model)"
        },
    )
    responses_per_group: int = field(
        default=6, metadata={"help": "policy samples per group; every pair of them is labelled"}
    )
    corrupted_fraction: float = field(
        default=0.3, metadata={"help": "share of groups with one response corrupted"}
    )
    labeller_temperature: float = field(
        default=0.05, metadata={"help": "Bradley-Terry temperature of the labellers"}
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

    def tiny(self) -> BuildConfig:
        """Reduced sizes that run the whole pipeline in seconds (for tests; the models learn little)."""
        return replace(
            self,
            corpus_size=400,
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=max(self.n_positions, 128),  # a tiny corpus' tokenizer splits words it never saw
            pretrain_steps=20,
            pretrain_batch_size=16,
            comparison_groups=min(self.comparison_groups, 30),
            responses_per_group=4,
            rm_epochs=1.0,
            rm_batch_size=16,
            eval_samples=64,
        )


@dataclass
class Recipe:
    """What a task's build supplies; :func:`build` does the rest.

    ``labeller_utility`` (with ``corrupt``) makes the build train a reward model: the simulated labellers
    prefer the response of higher labeller utility, with Bradley-Terry noise. Without it the task has no
    learned reward (its env scores with a function) and the build stops after the policy.
    """

    name: str
    corpus: Callable[[int, int], list[str]]  # (size, seed) -> texts, each a prompt and its response
    prompts: list[str]
    evaluate: Callable[[Sequence[str], Sequence[str]], dict[str, float]]
    gold: Utility
    config: BuildConfig
    labeller_utility: Utility | None = None
    corrupt: Callable[[np.random.Generator, str], str] | None = None
    grammatical: Callable[[str, str], bool] | None = None  # for the "both grammatical" accuracy
    rank_target: tuple[str, Utility] | None = None  # what Spearman compares RM scores with (gold default)
    notes: dict[str, Any] = field(default_factory=dict)  # task constants recorded in the manifest


# ----------------------------------------------------------------------------- stages
def train_tokenizer(corpus: list[str], vocab_size: int, max_length: int = 64) -> PreTrainedTokenizerFast:
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
        tokenizer_object=backend, bos_token=EOS, eos_token=EOS, pad_token=PAD, model_max_length=max_length
    )


def _cosine(step: int, total: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / total))


def progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


def pretrain_policy(
    corpus: list[str], tokenizer: PreTrainedTokenizerFast, config: BuildConfig, progress: bool = False
) -> GPT2LMHeadModel:
    """A GPT-2 fitted to the corpus, each text followed by EOS. Dropout is off (RL wants exact ratios)."""
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
            f"a text has {int(lengths.max())} tokens, more than n_positions={config.n_positions}"
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
    bar: Any = progress_bar(progress, total, "pretrain policy")
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


def make_preferences(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    config: BuildConfig,
    utility: Utility,
    corrupt: Callable[[np.random.Generator, str], str] | None,
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
        if corrupt is not None and rng.random() < config.corrupted_fraction:
            responses[-1] = corrupt(rng, responses[-1])
        for i, j in itertools.combinations(range(k), 2):
            chosen, rejected = prefer(
                rng, prompt, responses[i], responses[j], utility, config.labeller_temperature
            )
            pairs.append(PreferencePair(prompt, chosen, rejected, group=str(g)))
    return pairs


def reward_model_base(policy: GPT2LMHeadModel, extra_layers: int, seed: int) -> GPT2ForSequenceClassification:
    """The reward model before training: the policy's pretrained blocks, ``extra_layers`` new blocks on top
    and a scalar head. The new blocks' output projections start at zero, so they start as the identity and
    the model reads text exactly as the policy does; they give the reward model room to judge a whole text.
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


# ----------------------------------------------------------------------------- figures
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


def _figure(x: float) -> float | None:
    """A figure for JSON, which has no NaN: an undefined figure is null."""
    return None if math.isnan(x) else round(x, 4)


# ----------------------------------------------------------------------------- the pipeline
def build(recipe: Recipe, out: Path, work_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Run the whole pipeline for ``recipe``; returns the manifest (also written to ``out/manifest.json``).

    Shipped files go to ``out``; the preference data and a timing report to ``work_dir``.
    """
    config = recipe.config
    out, work_dir = Path(out), Path(work_dir)
    torch.set_num_threads(config.threads)
    learned_reward = recipe.labeller_utility is not None and config.comparison_groups > 0
    timings: dict[str, float] = {}
    stages: Any = progress_bar(progress, 6 if learned_reward else 4, f"build {recipe.name}")
    if stages is not None:
        stages.leave = True
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        if stages is not None:
            stages.update()

    corpus = recipe.corpus(config.corpus_size, config.seed)
    tokenizer = train_tokenizer(corpus, config.vocab_size, max_length=config.n_positions)
    stage("corpus and tokenizer")
    policy = pretrain_policy(corpus, tokenizer, config, progress)
    for directory in (out / POLICY_DIR, out / REWARD_MODEL_DIR):
        if directory.exists():
            shutil.rmtree(directory)
    policy.save_pretrained(out / POLICY_DIR)
    tokenizer.save_pretrained(out / POLICY_DIR)
    prompts = recipe.prompts
    (out / PROMPTS_FILE).write_text(json.dumps(prompts, indent=1) + "\n", encoding="utf-8")
    stage("pretrain policy")

    work_dir.mkdir(parents=True, exist_ok=True)
    result = None
    if learned_reward:
        assert recipe.labeller_utility is not None
        pairs = make_preferences(policy, tokenizer, prompts, config, recipe.labeller_utility, recipe.corrupt)
        pairs_file = work_dir / "preferences.jsonl"
        save_preference_pairs(pairs, pairs_file)
        stage("preferences")
        rm_config = RewardTrainingConfig(
            epochs=config.rm_epochs,
            batch_size=config.rm_batch_size,
            learning_rate=config.rm_lr,
            seed=config.seed,
        )
        base = reward_model_base(policy, config.rm_extra_layers, seed=config.seed)
        result = train_reward_model(pairs_file, base, tokenizer, config=rm_config, progress=progress)
        save_preference_pairs(result.eval_pairs, work_dir / "preferences_eval.jsonl")
        stage("reward model")

    # quality against gold, on fresh samples of the reference (and on the held-out pairs)
    generator = torch.Generator().manual_seed(config.seed + 2)
    rng = np.random.default_rng(config.seed + 2)
    eval_prompts = [prompts[int(i)] for i in rng.integers(len(prompts), size=config.eval_samples)]
    responses = sample_responses(
        policy, tokenizer, eval_prompts, max_new_tokens=config.max_new_tokens, generator=generator
    )
    quality: dict[str, Any] = {
        "reference": {k: round(v, 4) for k, v in recipe.evaluate(eval_prompts, responses).items()}
    }
    if result is not None:
        quality["reward_model"] = _reward_model_quality(recipe, result, eval_prompts, responses, out)
    stage("evaluate")

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "task": recipe.name,
        "build": asdict(config),
        **({"task_settings": recipe.notes} if recipe.notes else {}),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "quality": quality,
        "files": {
            p.relative_to(out).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in files
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    stage("manifest")
    if stages is not None:
        stages.close()
    report = {
        "seconds": timings,
        "total_seconds": round(sum(timings.values()), 1),
        **({"reward_training": result.metrics} if result is not None else {}),
    }
    (work_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return manifest


def _reward_model_quality(
    recipe: Recipe, result: Any, eval_prompts: list[str], responses: list[str], out: Path
) -> dict[str, Any]:
    """Scale the reward model to unit spread on the reference's samples, save it, and measure it: held-out
    pairwise accuracy against the labels and against gold, and Spearman's rank correlation with gold."""
    texts = [p + r for p, r in zip(eval_prompts, responses, strict=True)]
    rm_scores = score_texts(result.model, result.tokenizer, texts)
    std = float(rm_scores.std())
    if std > 0:  # unit scale on the reference's samples, so that beta means the same across rebuilds
        with torch.no_grad():
            head: torch.nn.Linear = result.model.score
            head.weight.mul_(1.0 / std)
        rm_scores = rm_scores / std
    save_reward_model(result, out / REWARD_MODEL_DIR)
    rank_name, rank_fn = recipe.rank_target or ("gold", recipe.gold)
    target = np.array([rank_fn(p, r) for p, r in zip(eval_prompts, responses, strict=True)])

    held = result.eval_pairs
    first_texts = [p.prompt + p.chosen for p in held]
    second_texts = [p.prompt + p.rejected for p in held]
    held_scores = score_texts(result.model, result.tokenizer, first_texts + second_texts)
    u1 = np.array([recipe.gold(p.prompt, p.chosen) for p in held])
    u2 = np.array([recipe.gold(p.prompt, p.rejected) for p in held])
    s1, s2 = held_scores[: len(held)], held_scores[len(held) :]
    figures: dict[str, Any] = {
        "heldout_pairs": len(held),
        "heldout_groups": len({p.group for p in held}),
        "heldout_accuracy_vs_labels": _figure(float(np.mean(s1 > s2))),
        "heldout_accuracy_vs_gold": _figure(gold_accuracy(s1, s2, u1, u2)),
    }
    if recipe.grammatical is not None:
        both = np.array(
            [
                recipe.grammatical(p.prompt, p.chosen) and recipe.grammatical(p.prompt, p.rejected)
                for p in held
            ]
        )
        figures["heldout_accuracy_vs_gold_both_grammatical"] = _figure(
            gold_accuracy(s1[both], s2[both], u1[both], u2[both]) if both.any() else float("nan")
        )
    figures[f"spearman_vs_{rank_name}"] = _figure(spearman(rm_scores, target))
    figures["reference_score_mean"] = _figure(float(rm_scores.mean()))
    return figures


# ----------------------------------------------------------------------------- command line
def main(
    recipe: Recipe, default_out: Path, description: str, argv: list[str] | None = None
) -> dict[str, Any]:
    """The command line of a task's build: ``python -m textenv.tasks.NAME.build (--out DIR | --in-place)``.

    A build writes into the package's own assets (``default_out``) only with ``--in-place``; otherwise
    ``--out`` names the folder. ``--tiny`` runs the whole pipeline at toy sizes in seconds, into
    ``build/NAME/tiny-assets`` unless ``--out`` says otherwise, and never in place. After an in-place build
    the new manifest's sha256 is printed: the task's ``manifest_sha256`` in the source must be set to it by
    hand before ``verify_assets()`` accepts the rebuild, so no build can pass for the shipped one.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None, help="the folder to write the task's files in")
    where.add_argument(
        "--in-place",
        action="store_true",
        help=f"write over the shipped files in the package ({default_out}); for maintainers",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build") / recipe.name,
        help="where the preference data and the timing report go",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="reduced sizes: a smoke run of seconds (into build/NAME/tiny-assets)",
    )
    for f in fields(BuildConfig):
        kind = float if f.type in ("float", float) else int
        default = getattr(recipe.config, f.name)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"{f.metadata['help']} ({default})"
        )
    args = parser.parse_args(argv)
    config = recipe.config.tiny() if args.tiny else recipe.config
    for f in fields(BuildConfig):
        value = getattr(args, f.name)
        if value is not None:
            config = replace(config, **{f.name: value})
    if args.in_place and args.tiny:
        parser.error("--tiny never writes over the shipped files: drop --in-place (or give --out)")
    if args.in_place:
        out = default_out
    elif args.out is not None:
        out = args.out
        if out.resolve() == Path(default_out).resolve():
            parser.error(f"--out {out} is the package's shipped assets folder: pass --in-place to mean it")
    elif args.tiny:
        out = args.work_dir / "tiny-assets"
    else:
        parser.error(f"say where the files go: --out DIR, or --in-place to replace {default_out}")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    manifest = build(replace(recipe, config=config), out, args.work_dir, progress=True)
    seconds = time.perf_counter() - start
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"built {len(manifest['files'])} files ({size / 1e6:.2f} MB) in {out} in {seconds:.0f}s")
    print(json.dumps(manifest["quality"], indent=2))
    if args.in_place:
        print(
            f"the shipped files were replaced; verify_assets() refuses them until the task's manifest_sha256 "
            f"(in the task's __init__.py) is set to {file_sha256(out / MANIFEST)}"
        )
    return manifest
