"""SFT: the loss is on response tokens only, a known mapping is learned, the env takes the result."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F

from textenv import toy
from textenv.sampling import sample_responses
from textenv.sft import (
    Collator,
    Demonstration,
    DemonstrationError,
    SFTConfig,
    encode,
    load_demonstrations,
    main,
    save_demonstrations,
    train_sft,
)

#: what each toy prompt must be answered with: a mapping the random model cannot know beforehand
ANSWERS = {
    "the food was": " very good .",
    "the service": " was slow .",
    "overall it was": " lovely and clean .",
    "the room was very": " dirty .",
    "the staff": " seemed friendly .",
}


def demonstrations(copies: int) -> list[Demonstration]:
    return [Demonstration(p, r) for p, r in ANSWERS.items()] * copies


def test_prompt_tokens_and_pads_carry_no_label(tokenizer):
    row = encode(Demonstration("the food was", " good ."), tokenizer, None)
    prompt = tokenizer("the food was")["input_ids"]
    response = tokenizer(" good .")["input_ids"]
    assert row["input_ids"] == [*prompt, *response, tokenizer.eos_token_id]
    assert row["labels"] == [-100] * len(prompt) + [*response, tokenizer.eos_token_id]
    short = encode(Demonstration("", " bad ."), tokenizer, None)
    batch = Collator(tokenizer.pad_token_id)([row, short])
    assert batch["labels"][1, len(short["labels"]) :].eq(-100).all()
    assert batch["attention_mask"].sum(1).tolist() == [len(row["input_ids"]), len(short["input_ids"])]


def response_loss(model, tokenizer, demos) -> float:
    """Mean next-token loss over the responses' tokens and EOS, computed here without the Trainer."""
    total, count = 0.0, 0
    with torch.no_grad():
        for demo in demos:
            row = encode(demo, tokenizer, None)
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_sft_learns_a_known_mapping_with_the_loss_on_responses_only(tokenizer, tmp_path, env_kwargs):
    model = toy.toy_causal_lm(tokenizer, seed=5)
    before = copy.deepcopy(model)
    held_out = demonstrations(1)
    config = SFTConfig(epochs=30, batch_size=10, learning_rate=3e-3)
    result = train_sft(demonstrations(10), model, tokenizer, config=config, eval_demos=held_out, device="cpu")
    # the Trainer's loss is the response-only loss, to float precision
    assert result.metrics["eval/loss_before"] == pytest.approx(
        response_loss(before, tokenizer, held_out), rel=1e-4
    )
    assert result.metrics["eval/loss"] == pytest.approx(
        response_loss(result.model, tokenizer, held_out), rel=1e-4
    )
    assert result.metrics["eval/loss"] < 0.2 < 2.0 < result.metrics["eval/loss_before"]
    # greedy answers are the demonstrated ones
    answers = sample_responses(result.model, tokenizer, list(ANSWERS), max_new_tokens=8, temperature=0.0)
    assert answers == list(ANSWERS.values())
    # the prompts were read, not learned: their own tokens are no likelier than before
    prompt_rows = [tokenizer(p)["input_ids"] for p in ANSWERS]

    def prompt_loss(m) -> float:
        with torch.no_grad():
            return sum(
                float(m(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss) for r in prompt_rows
            )

    assert prompt_loss(result.model) > 0.5 * prompt_loss(before)

    from textenv.sft import save_sft_model

    folder = save_sft_model(result, tmp_path / "sft")
    env = gym.make("TextRLHF-v0", **(env_kwargs | {"policy": str(folder), "tokenizer": str(folder)}))
    obs, _ = env.reset(seed=0)
    assert obs["input_ids"].shape[0] == env.observation_space["input_ids"].shape[0]


def test_command_line_and_file_format(tokenizer, tmp_path, capsys):
    base = tmp_path / "base"
    toy.toy_causal_lm(tokenizer, seed=5).save_pretrained(base)
    tokenizer.save_pretrained(base)
    path = tmp_path / "demos.jsonl"
    save_demonstrations(demonstrations(4), path)
    assert load_demonstrations(path) == demonstrations(4)
    main([str(path), "--base", str(base), "--out", str(tmp_path / "out"), "--epochs", "1", "--device", "cpu"])
    assert "saved to" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "training_metrics.json").read_text())
    assert saved["metrics"]["train/demonstrations"] == 18  # 2 of 20 held out
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"prompt": "a"}', "each line needs string fields"),
        ('{"prompt": "a", "response": 3}', "each line needs string fields"),
        ('{"prompt": "a", "response": ""}', "the response is empty"),
    ],
)
def test_malformed_demonstrations_name_their_line(tmp_path, line, message):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"prompt": "p", "response": " r"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DemonstrationError, match=f"line 2: {message}"):
        load_demonstrations(path)
