"""The reusable reward-model trainer: learns from a JSON Lines file, names bad lines, has a command line."""

import json

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from textenv import toy
from textenv.reward_training import (
    PreferenceDataError,
    PreferencePair,
    RewardTrainingConfig,
    load_preference_pairs,
    main,
    pairwise_accuracy,
    save_preference_pairs,
    train_reward_model,
)
from textenv.rewards import ClassifierReward

GOOD, BAD = toy.POSITIVE, toy.NEGATIVE


def _synthetic_pairs(n, seed):
    """Responses are word salads; the labeller prefers the one with more positive than negative words."""
    rng = np.random.default_rng(seed)
    words = GOOD + BAD + ["the", "food", "service", "was", "and"]

    def response():
        return "".join(" " + words[i] for i in rng.integers(len(words), size=int(rng.integers(3, 8))))

    def value(text):
        return sum(w in GOOD for w in text.split()) - sum(w in BAD for w in text.split())

    pairs = []
    while len(pairs) < n:
        a, b = response(), response()
        if value(a) == value(b):
            continue
        chosen, rejected = (a, b) if (value(a) > value(b)) == (rng.random() < 0.9) else (b, a)  # 10% noise
        pairs.append(PreferencePair("the food", chosen, rejected))
    return pairs


@pytest.fixture
def base_dir(tmp_path, tokenizer):
    """A tiny causal LM saved as a local checkpoint: the base the trainer adds a scalar head to."""
    path = tmp_path / "base"
    toy.toy_causal_lm(tokenizer, n_embd=32, n_layer=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_trainer_learns_to_order_held_out_pairs(tmp_path, base_dir):
    pairs_file = tmp_path / "pairs.jsonl"
    save_preference_pairs(_synthetic_pairs(1200, seed=0), pairs_file)
    held_out = _synthetic_pairs(300, seed=1)
    config = RewardTrainingConfig(epochs=2, batch_size=32, learning_rate=3e-3, seed=0)
    result = train_reward_model(pairs_file, base_dir, config=config, eval_pairs=held_out)
    assert result.metrics["eval/accuracy"] > 0.75  # chance is 0.5; labels are 90% right
    assert result.metrics["eval/accuracy"] == pytest.approx(
        pairwise_accuracy(result.model, result.tokenizer, held_out)
    )
    assert np.isfinite(result.metrics["train/loss"]) and result.metrics["seconds"] < 60
    # the trained model plugs into the environment's reward adapter and scores batches
    reward = ClassifierReward(result.model, result.tokenizer)
    scores = reward.score(["the food"] * 2, [" good great lovely", " bad awful rude"])
    assert scores[0] > scores[1]


def test_same_seed_same_model(base_dir):
    pairs = _synthetic_pairs(100, seed=2)
    config = RewardTrainingConfig(epochs=1, batch_size=16, seed=3)
    first = train_reward_model(pairs, base_dir, config=config)
    second = train_reward_model(pairs, base_dir, config=config)
    assert first.metrics["train/loss"] == second.metrics["train/loss"]
    assert first.eval_pairs == second.eval_pairs and len(first.eval_pairs) == 10


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "chosen": "b"', "line 2: not valid JSON"),
        ('{"prompt": "a", "chosen": "b"}', r"line 2: missing field\(s\) \['rejected'\]"),
        (
            '{"prompt": "a", "chosen": "b", "rejected": 3}',
            r"line 2: field\(s\) \['rejected'\] must be strings",
        ),
        ('["a", "b", "c"]', "line 2: expected an object, got list"),
    ],
)
def test_malformed_line_is_named(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(PreferenceDataError, match=message):
        load_preference_pairs(path)


def test_empty_file_and_blank_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n\n")
    with pytest.raises(PreferenceDataError, match="no preference records"):
        load_preference_pairs(path)
    path.write_text('\n{"prompt": "p", "chosen": " c", "rejected": " r"}\n\n')
    assert load_preference_pairs(path) == [PreferencePair("p", " c", " r")]


def test_command_line_trains_and_saves_a_loadable_reward_model(tmp_path, base_dir, capsys):
    pairs_file = tmp_path / "pairs.jsonl"
    save_preference_pairs(_synthetic_pairs(200, seed=4), pairs_file)
    out = tmp_path / "rm"
    main([str(pairs_file), "--base", str(base_dir), "--out", str(out), "--epochs", "1", "--batch-size", "16"])
    printed = capsys.readouterr().out
    assert "eval/accuracy" in printed and "saved to" in printed
    assert (out / "model.safetensors").is_file()
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["config"]["batch_size"] == 16
    reward = ClassifierReward(out)  # by path, with the tokenizer saved beside it
    assert len(reward.score(["the food", "the food"], [" good", " bad"])) == 2


def _grouped_pairs(groups, k, seed):
    """K responses per group and all K(K-1)/2 pairs of them, labelled as _synthetic_pairs labels one pair."""
    rng = np.random.default_rng(seed)
    words = GOOD + BAD + ["the", "food", "service", "was", "and"]

    def value(text):
        return sum(w in GOOD for w in text.split()) - sum(w in BAD for w in text.split())

    pairs = []
    for g in range(groups):
        responses = [
            "".join(" " + words[i] for i in rng.integers(len(words), size=int(rng.integers(3, 8))))
            for _ in range(k)
        ]
        for i in range(k):
            for j in range(i + 1, k):
                a, b = responses[i], responses[j]
                first = value(a) > value(b) if value(a) != value(b) else rng.random() < 0.5
                chosen, rejected = (a, b) if first == (rng.random() < 0.9) else (b, a)
                pairs.append(PreferencePair("the food", chosen, rejected, group=f"g{g}"))
    return pairs


def test_group_key_round_trips_and_bad_groups_are_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [PreferencePair("p", " a", " b", group="7"), PreferencePair("p", " c", " d")]
    save_preference_pairs(pairs, path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["group"] == "7" and "group" not in lines[1]  # plain pairs stay the plain format
    assert load_preference_pairs(path) == pairs
    path.write_text('{"prompt": "p", "chosen": " a", "rejected": " b", "group": 3}\n')
    assert load_preference_pairs(path)[0].group == "3"  # integers are accepted, as strings
    for bad in ("[1]", "true", "1.5"):
        record = {"prompt": "p", "chosen": " a", "rejected": " b", "group": json.loads(bad)}
        path.write_text(json.dumps(record) + "\n")
        with pytest.raises(PreferenceDataError, match="line 1: 'group' must be a string or an integer"):
            load_preference_pairs(path)


def test_groups_are_held_out_whole_and_each_text_is_read_once(base_dir):
    pairs = _grouped_pairs(groups=40, k=4, seed=5)  # 6 pairs of 4 distinct texts per group
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    rows = []
    base.register_forward_hook(
        lambda module, args, kwargs, output: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    config = RewardTrainingConfig(epochs=1, batch_size=12, eval_fraction=0.1, seed=0)
    result = train_reward_model(pairs, base, base_dir, config=config)
    held = {p.group for p in result.eval_pairs}
    assert len(held) == 4 and len(result.eval_pairs) == 24  # 10% of the groups, each with all its pairs
    assert result.metrics["train/groups"] == 36 and result.metrics["train/pairs"] == 216
    assert result.metrics["train/steps"] == 18  # two whole groups (12 pairs) per step
    training_rows = rows[:18]
    assert all(n <= 8 for n in training_rows)  # 2 groups x 4 distinct texts, not 2 x 12 pair sides
    assert max(training_rows) == 8


def test_trainer_learns_from_comparison_groups(base_dir):
    config = RewardTrainingConfig(epochs=2, batch_size=36, learning_rate=3e-3, seed=0)
    held_out = _synthetic_pairs(300, seed=1)
    result = train_reward_model(
        _grouped_pairs(200, k=4, seed=6), base_dir, config=config, eval_pairs=held_out
    )
    assert result.metrics["eval/accuracy"] > 0.75


# ----------------------------------------------------------------------------- data that cannot teach
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "chosen": " b", "rejected": " b"}', "line 2: 'chosen' and 'rejected' are the same"),
        ('{"prompt": "", "chosen": "", "rejected": " c"}', "line 2: the prompt and 'chosen' are both empty"),
        ('{"prompt": "a", "chosen": " \\ud800", "rejected": " c"}', "line 2: 'chosen' .* not valid Unicode"),
    ],
)
def test_pairs_that_cannot_teach_are_named(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(PreferenceDataError, match=message):
        load_preference_pairs(path)


def test_invalid_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(PreferenceDataError, match=r"pairs\.jsonl, line 3: not valid UTF-8"):
        load_preference_pairs(path)


def test_pairs_given_as_a_list_are_checked_by_index(base_dir):
    pairs = [*_synthetic_pairs(20, seed=0), PreferencePair("p", " same", " same")]
    with pytest.raises(PreferenceDataError, match=r"pairs\[20\]: 'chosen' and 'rejected' are the same"):
        train_reward_model(pairs, base_dir)


def test_a_line_longer_than_the_models_context_is_cut_as_the_env_cuts_it(tmp_path, base_dir):
    pairs = _synthetic_pairs(40, seed=5)
    pairs[7] = PreferencePair("the food", " good" * 200, " bad" * 150)  # 200 tokens: n_positions is 128
    path = tmp_path / "pairs.jsonl"
    save_preference_pairs(pairs, path)
    with pytest.warns(UserWarning, match=r"2 preference text\(s\) are longer than the 128 tokens .* line 8"):
        result = train_reward_model(
            path, base_dir, config=RewardTrainingConfig(batch_size=8, eval_fraction=0.5)
        )
    assert np.isfinite(result.metrics["train/loss"])


class Killed(BaseException):
    pass


def test_a_killed_reward_model_save_leaves_no_finished_looking_folder(tmp_path, base_dir, monkeypatch):
    from textenv.reward_training import save_reward_model

    result = train_reward_model(
        _synthetic_pairs(40, seed=6), base_dir, config=RewardTrainingConfig(batch_size=8)
    )
    out = tmp_path / "rm"

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:  # killed after the weights, before the tokenizer
        patch.setattr(type(result.tokenizer), "save_pretrained", killed)
        with pytest.raises(Killed):
            save_reward_model(result, out)
    assert list(tmp_path.iterdir()) == [base_dir]  # no folder at all, and no temporary one left
    save_reward_model(result, out)
    before = (out / "model.safetensors").read_bytes()
    with monkeypatch.context() as patch:  # a second save killed the same way keeps the first whole
        patch.setattr(type(result.tokenizer), "save_pretrained", killed)
        with pytest.raises(Killed):
            save_reward_model(result, out)
    assert (out / "model.safetensors").read_bytes() == before and (out / "tokenizer.json").is_file()
    assert len(ClassifierReward(out).score(["the food"], [" good"])) == 1


def test_a_damaged_reward_model_folder_is_refused_naming_the_file(tmp_path, base_dir):
    from textenv import CheckpointError
    from textenv.reward_training import save_reward_model

    result = train_reward_model(
        _synthetic_pairs(40, seed=7), base_dir, config=RewardTrainingConfig(batch_size=8)
    )
    out = save_reward_model(result, tmp_path / "rm")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model\.safetensors has \d+ bytes, the manifest says"):
        ClassifierReward(out)


def test_one_group_warns_and_reports_nan_instead_of_failing(base_dir, capfd):
    pairs = [
        PreferencePair("the food", " good", " bad", group=1),
        PreferencePair("the food", " great", " bad", 1),
    ]
    with pytest.warns(UserWarning, match="single comparison group"):
        result = train_reward_model(pairs, base_dir, config=RewardTrainingConfig(batch_size=2))
    assert np.isnan(result.metrics["eval/accuracy"]) and result.metrics["eval/pairs"] == 0
    # a few groups still get one held out, so eval/accuracy is a number
    three = [PreferencePair("the food", " good", " bad", group=g) for g in range(3)]
    result = train_reward_model(three, base_dir, config=RewardTrainingConfig(batch_size=1))
    assert result.metrics["eval/pairs"] == 1 and not np.isnan(result.metrics["eval/accuracy"])
    # the new scalar head is added on purpose: no load report, no progress bars
    captured = capfd.readouterr()
    assert "MISSING" not in captured.out + captured.err and "Loading weights" not in captured.err


def test_settings_are_checked_and_the_help_shows_defaults(capsys):
    with pytest.raises(ValueError, match="eval_fraction"):
        RewardTrainingConfig(eval_fraction=1.0)
    with pytest.raises(TypeError, match="batch_size"):
        RewardTrainingConfig(batch_size=2.5)
    with pytest.raises(ValueError, match="learning_rate"):
        RewardTrainingConfig(learning_rate=float("nan"))
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.0003)" in text and "(default: 64)" in text


def test_a_causal_lm_given_as_a_reward_model_is_named(base_dir):
    with pytest.warns(UserWarning, match="initialised at random"):
        ClassifierReward(base_dir, tokenizer=toy.toy_tokenizer(), label=1)
