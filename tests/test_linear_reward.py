"""The linear reward model r = wᵀφ: the fit recovers a known w, learns a known preference from a frozen LM's
features, saves and loads like the other reward models, and plugs into the env."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from textenv import toy
from textenv.linear_reward import Encoder, LinearReward, fit_linear_reward, is_linear_reward_dir
from textenv.reward_training import PreferencePair, load_preference_pairs, main, save_preference_pairs
from textenv.rewards import as_reward_model


class TableEncoder(Encoder):
    """φ looked up in a table: features chosen by the test, so the right w is known."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table, self.kind, self.layers, self.source, self.max_length = table, "table", "all", None, None

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts])


def test_the_fit_recovers_a_known_w_and_is_the_bradley_terry_optimum():
    rng = np.random.default_rng(0)
    dims, n_texts = 8, 400
    w_true = rng.normal(size=dims)
    texts = [f"t{i}" for i in range(n_texts)]
    table = {t: rng.normal(size=dims) for t in texts}
    pairs = []
    for g in range(3000):  # labellers who follow Bradley-Terry with the true w
        a, b = rng.choice(n_texts, size=2, replace=False)
        margin = (table[texts[a]] - table[texts[b]]) @ w_true
        first = rng.random() < 1 / (1 + np.exp(-margin))
        chosen, rejected = (texts[a], texts[b]) if first else (texts[b], texts[a])
        pairs.append(PreferencePair("", chosen, rejected, group=str(g)))
    result = fit_linear_reward(pairs, TableEncoder(table), C=100.0)
    w = result.model.weights
    assert w @ w_true / np.linalg.norm(w) / np.linalg.norm(w_true) > 0.98
    # the scale of the true w too, not only its direction
    assert np.linalg.norm(w) == pytest.approx(np.linalg.norm(w_true), rel=0.15)

    # the solution is the optimum of the Bradley-Terry loss with sklearn's L2 term: the gradient vanishes
    # there (in the scaled features the solver saw, each difference given both ways round)
    train = [p for p in pairs if p not in result.eval_pairs]
    d = np.stack([table[p.chosen] - table[p.rejected] for p in train])
    scale = np.sqrt(np.mean(d**2, axis=0))
    v = w * scale  # the solver's coefficients
    x = d / scale
    grad = 2 * 100.0 * (-(x * (1 / (1 + np.exp(x @ v)))[:, None]).sum(0)) + v
    assert np.abs(grad).max() < 1e-3 * np.abs(2 * 100.0 * x).sum(0).max()
    assert result.metrics["eval/accuracy"] > 0.8
    assert result.metrics["C"] == 100.0


def sentiment_pairs(n: int, seed: int) -> list[PreferencePair]:
    """The positive review preferred to the negative one, always."""
    rng = np.random.default_rng(seed)
    pairs = []
    for g in range(n):
        subject = str(rng.choice(toy.SUBJECTS))
        good, bad = rng.choice(toy.POSITIVE), rng.choice(toy.NEGATIVE)
        verb = str(rng.choice(toy.VERBS))
        pairs.append(PreferencePair(f"{subject} {verb}", f" {good} .", f" {bad} .", group=str(g)))
    return pairs


@pytest.fixture
def encoder_dir(tmp_path, tokenizer):
    path = tmp_path / "encoder"
    toy.toy_causal_lm(tokenizer, seed=0, initializer_range=0.5).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("layers", ["all", "last"])
def test_it_learns_which_reviews_are_preferred_from_a_frozen_lms_features(encoder_dir, layers):
    encoder = Encoder(encoder_dir, layers=layers)
    assert encoder(["the food was good ."]).shape == (1, encoder.dimensions)
    result = fit_linear_reward(sentiment_pairs(200, 0), encoder, eval_pairs=sentiment_pairs(100, 1))
    assert result.metrics["train/accuracy"] > 0.95
    assert result.metrics["eval/accuracy"] > 0.9
    assert result.metrics["C"] in {float(c) for c in np.logspace(-3, 3, 7)}  # chosen by cross-validation


def test_saved_and_loaded_by_path_as_reward_model_and_in_the_env(encoder_dir, tmp_path, env_kwargs):
    result = fit_linear_reward(sentiment_pairs(100, 0), Encoder(encoder_dir), C=1.0)
    folder = result.model.save(tmp_path / "linear-rm")
    assert is_linear_reward_dir(folder) and not is_linear_reward_dir(encoder_dir)
    saved = json.loads((folder / "linear_reward.json").read_text())
    assert saved["encoder"] == "../encoder"  # relative: the two folders move together
    loaded = as_reward_model(str(folder))
    assert isinstance(loaded, LinearReward)
    prompts, responses = ["the food was", "the food was"], [" good .", " rude ."]
    assert loaded.score(prompts, responses) == pytest.approx(result.model.score(prompts, responses))
    assert loaded.score(prompts, responses)[0] > loaded.score(prompts, responses)[1]

    env = gym.make("TextRLHF-v0", **(env_kwargs | {"reward_model": str(folder)}))
    env.reset(seed=0)
    for _ in range(env_kwargs["max_new_tokens"]):
        _, reward, terminated, _, info = env.step(env.action_space.sample())
        if terminated:
            break
    assert terminated and np.isfinite(reward) and "score" in info


def test_the_command_line_fits_and_saves_a_linear_model(encoder_dir, tmp_path, capsys):
    pairs_file = tmp_path / "pairs.jsonl"
    save_preference_pairs(sentiment_pairs(150, 0), pairs_file)
    main([str(pairs_file), "--linear", "--base", str(encoder_dir), "--out", str(tmp_path / "rm"), "--C", "1"])
    out = capsys.readouterr().out
    assert "eval/accuracy" in out and "saved to" in out
    model = LinearReward.load(tmp_path / "rm")
    assert model.info["C"] == 1.0 and model.encoder.layers == "all"
    with pytest.raises(SystemExit):
        main([str(pairs_file), "--out", str(tmp_path / "other")])  # a transformer reward model needs --base


def test_ties_and_skips_of_the_labelling_page_are_passed_over(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [
        {"prompt": "p", "chosen": " a", "rejected": " b", "labeller": "ann", "item": 0},
        {"prompt": "p", "chosen": " c", "rejected": " d", "tie": True, "labeller": "ann", "item": 1},
        {"item": 2, "skip": True, "labeller": "ann"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [(p.chosen, p.rejected) for p in load_preference_pairs(path)] == [(" a", " b")]


def test_errors(encoder_dir, tmp_path):
    with pytest.raises(ValueError, match="layers must be"):
        Encoder(encoder_dir, layers="first")
    with pytest.raises(ValueError, match="C must be"):
        fit_linear_reward(sentiment_pairs(10, 0), Encoder(encoder_dir), C=0.0)
    with pytest.raises(FileNotFoundError, match="not a linear reward model"):
        LinearReward.load(encoder_dir)
    unsaveable = fit_linear_reward(sentiment_pairs(20, 0), Encoder(encoder_dir), C=1.0)
    unsaveable.model.encoder.source = None
    with pytest.raises(ValueError, match="given as an object"):
        unsaveable.model.save(tmp_path / "x")


def test_a_sentence_transformers_encoder(encoder_dir, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    try:  # sentence-transformers 6 moved the modules
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    word = Transformer(str(encoder_dir))
    width = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = Pooling(width(), pooling_mode="mean")
    sentence_transformers.SentenceTransformer(modules=[word, pooling], device="cpu").save(
        str(tmp_path / "st")
    )
    encoder = Encoder(tmp_path / "st")  # a folder with modules.json is a sentence-transformers model
    assert encoder.kind == "sentence-transformers" and encoder.dimensions == 32
    result = fit_linear_reward(sentiment_pairs(200, 0), encoder, eval_pairs=sentiment_pairs(100, 1))
    assert result.metrics["eval/accuracy"] > 0.9
    loaded = as_reward_model(str(result.model.save(tmp_path / "rm")))
    assert isinstance(loaded, LinearReward) and loaded.encoder.kind == "sentence-transformers"
    prompts, responses = ["the food was"] * 2, [" good .", " rude ."]
    assert loaded.score(prompts, responses) == pytest.approx(result.model.score(prompts, responses))
