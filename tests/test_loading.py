"""The real loading code (local directories; hub names go through the same call) with safe defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import textenv.models
from textenv import toy


@pytest.fixture
def saved(tmp_path, policy, reference, tokenizer) -> dict[str, Path]:
    dirs = {"policy": tmp_path / "policy", "reference": tmp_path / "reference"}
    for name, model in (("policy", policy), ("reference", reference)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
        assert (dirs[name] / "model.safetensors").exists()
    return dirs


def test_policy_reference_and_tokenizer_from_directories(make_env, saved, policy, reference):
    by_object = make_env()
    by_path = make_env(policy=str(saved["policy"]), reference=saved["reference"], tokenizer=None)
    for env in (by_object, by_path):
        env.reset(seed=0)
    outcomes = []
    for env in (by_object, by_path):
        for action in [12, 20, 1]:
            *_, info = env.step(action)
        outcomes.append(info)
    assert outcomes[0]["kl"] == pytest.approx(outcomes[1]["kl"], rel=1e-6)
    loaded = by_path.unwrapped.policy
    assert loaded is not policy
    for p, q in zip(policy.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q)


def test_reference_defaults_to_a_copy_of_a_policy_loaded_by_path(make_env, saved):
    env = make_env(policy=str(saved["policy"]), reference=None, tokenizer=None)
    env.reset(seed=0)
    *_, info = env.step(1)
    assert info["kl"] == pytest.approx(0.0, abs=1e-6)


def test_models_saved_in_bf16_load_in_float32_and_frozen_dtype_loads_frozen_ones_in_bf16(
    tmp_path, policy, tokenizer, make_env
):
    """transformers 5 loads a checkpoint in the dtype it was saved in: a policy saved in bf16 would train
    bf16 weights. By path, models load in float32 (as trl's do) unless they never train and
    ``frozen_dtype`` says otherwise."""
    folder = tmp_path / "bf16"
    policy.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    def dtypes(model) -> set[torch.dtype]:
        return {p.dtype for p in model.parameters()}

    env = make_env(policy=str(folder), reference=folder, tokenizer=None).unwrapped
    assert dtypes(env.policy) == dtypes(env.reference) == {torch.float32}
    env = make_env(policy=str(folder), reference=folder, tokenizer=None, frozen_dtype="bf16").unwrapped
    assert dtypes(env.policy) == {torch.float32} and dtypes(env.reference) == {torch.bfloat16}
    pytest.importorskip("peft")
    env = make_env(policy=str(folder), reference=None, tokenizer=None, frozen_dtype="bf16", lora=2).unwrapped
    trained = {p.dtype for p in env.policy.parameters() if p.requires_grad}
    frozen = {p.dtype for p in env.policy.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}


def test_safetensors_only(tmp_path, policy, tokenizer, make_env):
    policy.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(policy.state_dict(), tmp_path / "pytorch_model.bin")  # a pickled checkpoint only
    with pytest.raises(OSError):
        make_env(policy=str(tmp_path), reference=None, tokenizer=None)


def test_trust_remote_code_is_off_unless_asked(monkeypatch, saved, make_env):
    calls: list[dict] = []
    original = textenv.models.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(textenv.models.AutoModelForCausalLM, "from_pretrained", spy)
    make_env(policy=str(saved["policy"]), reference=None, tokenizer=None)
    make_env(policy=str(saved["policy"]), reference=None, tokenizer=None, trust_remote_code=True)
    assert [c["trust_remote_code"] for c in calls] == [False, True]
    assert all(c["dtype"] == torch.float32 for c in calls)
    assert all(c["use_safetensors"] is True for c in calls)


def test_uncached_hub_name_fails_fast_offline(make_env):
    with pytest.raises(OSError):
        make_env(policy="textenv-tests/no-such-model", reference=None, tokenizer=None)


def test_model_object_without_a_known_tokenizer_asks_for_one(make_env):
    with pytest.raises(ValueError, match="tokenizer="):
        make_env(tokenizer=None)


def test_device_argument_places_models(make_env):
    env = make_env(device="cpu")
    assert env.unwrapped.engine.device == torch.device("cpu")
    assert next(env.unwrapped.reference.parameters()).device.type == "cpu"
    obs, _ = env.reset(seed=0)
    assert np.asarray(obs["input_ids"]).dtype == np.int64


def test_toy_models_build_deterministically():
    tokenizer = toy.toy_tokenizer()
    a, b = toy.toy_causal_lm(tokenizer, seed=4), toy.toy_causal_lm(tokenizer, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
