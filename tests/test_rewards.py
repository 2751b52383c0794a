"""Reward plug-ins: a callable, a classifier (object or saved directory), a pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import pipeline

from textenv import CallableReward, ClassifierReward, PipelineReward, RewardModelError, as_reward_model, toy
from textenv.rewards import compute_scores

PROMPTS = ["the food was", "the room", "the staff were", "overall it was"]
RESPONSES = [" very good .", " was dirty and the view was awful", " rude", " not bad"]

# The classifier's tokenizer differs from the policy's (another word order, so other ids): the env must
# re-tokenise text for it, never hand it the policy's ids.
RM_WORDS = sorted(toy.WORDS, reverse=True)


def _direct_scores(model, tokenizer, texts, label_index=None):
    """One text at a time, no padding: what the classifier says about each text."""
    scores = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
            scores.append(float(logits[0] if label_index is None else logits.softmax(-1)[label_index]))
    return np.array(scores)


@pytest.fixture(scope="module")
def rm_tokenizer():
    return toy.toy_tokenizer(RM_WORDS)


def test_callable_reward():
    reward = as_reward_model(lambda p, r: [len(x) for x in r])
    assert isinstance(reward, CallableReward)
    assert list(compute_scores(reward, PROMPTS, RESPONSES)) == [len(r) for r in RESPONSES]


@pytest.mark.parametrize("labels, label", [(None, None), (["NEGATIVE", "POSITIVE"], "POSITIVE")])
def test_classifier_object_and_saved_directory(tmp_path, rm_tokenizer, labels, label):
    model = toy.toy_classifier(rm_tokenizer, labels=labels, seed=3, initializer_range=0.5)
    model.save_pretrained(tmp_path)
    rm_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    index = None if labels is None else labels.index(label)
    expected = _direct_scores(
        model, rm_tokenizer, [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)], index
    )
    assert np.ptp(expected) > 1e-3  # a real signal to compare
    from_object = ClassifierReward(model, rm_tokenizer, label=label, batch_size=3)
    from_path = as_reward_model(str(tmp_path), label=label)
    assert isinstance(from_path, ClassifierReward)
    for reward in (from_object, from_path):
        np.testing.assert_allclose(compute_scores(reward, PROMPTS, RESPONSES), expected, rtol=1e-5, atol=1e-6)
    if labels is not None:  # the other label's probability is the complement
        other = ClassifierReward(model, rm_tokenizer, label="negative")  # names match case-insensitively
        np.testing.assert_allclose(compute_scores(other, PROMPTS, RESPONSES), 1 - expected, rtol=1e-5)


def test_classifier_inputs_modes(rm_tokenizer):
    model = toy.toy_classifier(rm_tokenizer, seed=3, initializer_range=0.5)
    response_only = ClassifierReward(model, rm_tokenizer, inputs="response")
    np.testing.assert_allclose(
        compute_scores(response_only, PROMPTS, RESPONSES),
        _direct_scores(model, rm_tokenizer, RESPONSES),
        rtol=1e-5,
        atol=1e-6,
    )
    pair = ClassifierReward(model, rm_tokenizer, inputs="pair")
    assert np.isfinite(compute_scores(pair, PROMPTS, RESPONSES)).all()
    with pytest.raises(ValueError, match="inputs"):
        ClassifierReward(model, rm_tokenizer, inputs="both")


def test_classifier_reads_at_most_its_position_limit(rm_tokenizer):
    model = toy.toy_classifier(rm_tokenizer, seed=3, initializer_range=0.5, n_positions=8)
    long = " the food was very good and the staff were rude and the room was dirty ."  # 16 tokens
    reward = ClassifierReward(model, rm_tokenizer)  # would index past its 8 positions without the cut
    assert reward.max_length == 8
    first_eight = rm_tokenizer.decode(rm_tokenizer(long)["input_ids"][:8])
    np.testing.assert_allclose(
        compute_scores(reward, [""], [long]), _direct_scores(model, rm_tokenizer, [first_eight]), rtol=1e-5
    )
    assert ClassifierReward(model, rm_tokenizer, max_length=100).max_length == 8  # cut to what it can read
    assert ClassifierReward(model, rm_tokenizer, max_length=5).max_length == 5


def test_classifier_without_pad_token_scores_each_text_alone(rm_tokenizer):
    tokenizer = toy.toy_tokenizer(RM_WORDS, pad_token=False)
    model = toy.toy_classifier(tokenizer, seed=3, initializer_range=0.5)
    assert model.config.pad_token_id is None  # GPT-2 refuses padded batches then
    texts = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)] * 2
    reward = ClassifierReward(model, tokenizer, inputs="response", batch_size=8)
    scores = compute_scores(reward, [""] * len(texts), texts)
    np.testing.assert_allclose(scores, _direct_scores(model, tokenizer, texts), rtol=1e-5, atol=1e-6)
    assert tokenizer.pad_token is None


def test_multi_label_classifier_needs_a_label(rm_tokenizer):
    model = toy.toy_classifier(rm_tokenizer, labels=["NEGATIVE", "POSITIVE"])
    with pytest.raises(ValueError, match="label="):
        ClassifierReward(model, rm_tokenizer)
    with pytest.raises(ValueError, match="not among"):
        ClassifierReward(model, rm_tokenizer, label="NEUTRAL")


def test_pipeline_reward(rm_tokenizer):
    model = toy.toy_classifier(rm_tokenizer, labels=["NEGATIVE", "POSITIVE"], seed=3, initializer_range=0.5)
    pipe = pipeline("text-classification", model=model, tokenizer=rm_tokenizer, device="cpu")
    reward = as_reward_model(pipe, label="POSITIVE")
    assert isinstance(reward, PipelineReward)
    expected = _direct_scores(
        model, rm_tokenizer, [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)], 1
    )
    np.testing.assert_allclose(compute_scores(reward, PROMPTS, RESPONSES), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RewardModelError, match="name one with label"):
        compute_scores(PipelineReward(pipe), PROMPTS, RESPONSES)


def test_env_with_classifier_path_scores_episodes_through_its_own_tokenizer(
    tmp_path, make_env, rm_tokenizer, tokenizer
):
    model = toy.toy_classifier(rm_tokenizer, labels=["NEGATIVE", "POSITIVE"], seed=3, initializer_range=0.5)
    model.save_pretrained(tmp_path)
    rm_tokenizer.save_pretrained(tmp_path)
    env = make_env(reward_model=str(tmp_path), reward_label="POSITIVE")
    _, info = env.reset(seed=0)
    for word in [" very", " good", "<eos>"]:
        *_, info = env.step(tokenizer.convert_tokens_to_ids(word.replace(" ", "Ġ")))
    text = info["prompt"] + " very good"
    assert info["score"] == pytest.approx(_direct_scores(model, rm_tokenizer, [text], 1)[0], rel=1e-5)


def test_unknown_reward_spec_is_a_type_error():
    with pytest.raises(TypeError, match="reward_model must be"):
        as_reward_model(42)
