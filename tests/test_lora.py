"""Memory: LoRA policies whose reference is the adapters switched off; gradient checkpointing; autocast."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents import PPO, REINFORCE, EpsilonGreedyPPO
from agents.rollout import collect
from agents.train import main
from textenv import toy
from textenv.lora import AdaptersOff, is_peft_model, lora_settings
from textenv.models import frozen_copy

pytest.importorskip("peft")


def perturb_adapters(policy: torch.nn.Module, seed: int = 0) -> None:
    """LoRA's B starts at zero (the policy starts as its base): give the adapters weights, as training
    would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def rollout_of(env, seed: int = 0):
    agent = REINFORCE(env, seed=0, baseline="moving_average")
    return collect(env, agent.model, generator=torch.Generator().manual_seed(seed), seed=seed)


def llama_lm(tokenizer, seed: int) -> torch.nn.Module:
    """A tiny Llama-shaped causal LM (rotary positions, grouped-query attention, gated MLP)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("placement", ["terminal", "per_token"])
def test_the_shared_reference_gives_the_kl_of_a_separate_frozen_copy(make_vec, tokenizer, placement, family):
    if family == "llama":
        base = llama_lm(tokenizer, seed=1)
    else:
        base = toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5)
    separate = frozen_copy(base)  # the reference as it would be without LoRA: a second copy of the base
    shared = make_vec(8, policy=base, reference=None, lora=4, kl_placement=placement)
    policy = shared.unwrapped.policy
    assert is_peft_model(policy) and isinstance(shared.unwrapped.reference, AdaptersOff)
    wrapped = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in policy.named_parameters()}
    every_linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert wrapped >= (every_linear if family == "llama" else {"c_attn", "c_proj", "c_fc"})
    perturb_adapters(policy)
    apart = make_vec(8, policy=policy, reference=separate, kl_placement=placement)

    a, b = rollout_of(shared), rollout_of(apart)
    assert torch.equal(a.response_ids, b.response_ids)  # the same policy drew the same tokens
    assert a.kl.abs().mean() > 0.1  # the adapters moved the policy: the KL is not trivially zero
    torch.testing.assert_close(a.kl, b.kl, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.ref_logprobs, b.ref_logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
    # and the adapters are on again after the reference's passes
    ids = a.input_ids[:2]
    with torch.no_grad():
        on = policy(input_ids=ids).logits
        off = separate(input_ids=ids).logits
    assert (on - off).abs().max() > 1e-3


def test_one_copy_of_the_weights_serves_policy_and_reference(make_vec, tokenizer):
    base = toy.toy_causal_lm(tokenizer, seed=1)
    base_size = sum(p.numel() for p in base.parameters())
    env = make_vec(4, policy=base, reference=None, lora=4)
    policy, reference = env.unwrapped.policy, env.unwrapped.reference
    storages = {p.data_ptr() for p in policy.parameters()}
    assert {p.data_ptr() for p in reference.parameters()} <= storages
    adapters = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 0 < adapters < base_size / 4
    assert sum(p.numel() for p in policy.parameters()) == base_size + adapters
    full = make_vec(4, policy=toy.toy_causal_lm(tokenizer, seed=1), reference=None)
    copies = [full.unwrapped.policy, full.unwrapped.reference]
    assert sum(p.numel() for m in copies for p in m.parameters()) == 2 * base_size
    # freezing "the reference" leaves the adapters trainable
    reference.requires_grad_(False)
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) == adapters


def test_a_lora_agent_trains_the_adapters_only_and_resumes_exactly(make_vec, tokenizer, tmp_path):
    def fresh_env():
        return make_vec(8, policy=toy.toy_causal_lm(tokenizer, seed=1), reference=None, lora=4)

    env = fresh_env()
    base_before = copy.deepcopy(env.unwrapped.policy.get_base_model().state_dict())
    agent = PPO(env, seed=3, num_minibatches=2, learning_rate=1e-2)
    agent.learn(1)
    state = env.unwrapped.policy.get_base_model().state_dict()
    frozen = {k for k in base_before if "lora_" not in k and "base_layer" not in k} | {
        k for k in base_before if "base_layer" in k
    }
    assert all(torch.equal(base_before[k], state[k]) for k in frozen)
    moved = [k for k in base_before if "lora_B" in k and not torch.equal(base_before[k], state[k])]
    assert moved  # the adapters learned

    agent.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "policy" / "adapter_config.json").is_file()
    assert not (tmp_path / "ckpt" / "policy" / "model.safetensors").exists()  # no copy of the base
    agent.learn(1)
    resumed = PPO.load(tmp_path / "ckpt", fresh_env())
    resumed.learn(1)
    a = agent.model.policy.state_dict()
    b = resumed.model.policy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert agent.env.unwrapped.kl_coef == resumed.env.unwrapped.kl_coef


def test_lora_settings_are_checked(make_vec, monkeypatch):
    assert lora_settings(4)["r"] == 4 and lora_settings(4)["lora_alpha"] == 8
    assert lora_settings({"r": 2, "lora_alpha": 3})["lora_alpha"] == 3
    with pytest.raises(TypeError, match="lora must be a rank"):
        make_vec(2, lora="eight")
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        make_vec(2, lora=0)
    with pytest.raises(ValueError, match="no_such_layer"):
        make_vec(2, lora={"r": 2, "target_modules": ["no_such_layer"]})
    with pytest.raises(ValueError, match="critic='separate'"):
        PPO(make_vec(2, reference=None, lora=2), critic="separate")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ImportError, match=r"textenv\[lora\]"):
        make_vec(2, lora=2)


@pytest.mark.slow
def test_the_training_command_trains_lora_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--num-envs", "8", "--eval-episodes", "8", "--samples", "1", "--save-every", "1", "--quiet"]
    main(["--lora", "4", "--frozen-dtype", "bfloat16", "--timesteps", "150", "--run-dir", str(run), *tiny])
    out = capsys.readouterr().out
    assert "trained" in out
    assert (run / "checkpoint" / "policy" / "adapter_config.json").is_file()
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["config"]["env_kwargs"]["lora"] == 4
    assert config["config"]["env_kwargs"]["frozen_dtype"] == "bfloat16"  # a resumed run remakes its env so
    main(["--resume", str(run), "--timesteps", "300", *tiny[2:]])
    state = json.loads((run / "checkpoint" / "state.json").read_text(encoding="utf-8"))
    assert state["num_timesteps"] >= 300


# ------------------------------------------------------------------------------ gradient checkpointing
def _gradients(make_vec, tokenizer, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int, int]:
    """The update's gradients, the tensors its forward pass kept for backward, and how often a layer inside
    the first block ran (transformers keeps the block's own hooks outside the checkpoint)."""
    policy = toy.toy_causal_lm(tokenizer, seed=1)
    env = make_vec(8, policy=policy)
    agent = PPO(env, seed=0, gradient_checkpointing=checkpointing)
    rollout = agent.collect_rollout()
    calls, kept = 0, 0

    def count(*args):
        nonlocal calls
        calls += 1

    def pack(tensor):
        nonlocal kept
        kept += 1
        return tensor

    policy.transformer.h[0].mlp.c_fc.register_forward_hook(count)
    agent.update_mode()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logprobs, values, _ = agent.model.evaluate(rollout.input_ids, rollout.attention_mask, 6)
    (logprobs.sum() + values.sum()).backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return grads, kept, calls


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(make_vec, tokenizer):
    plain, plain_kept, plain_calls = _gradients(make_vec, tokenizer, False)
    saved, saved_kept, saved_calls = _gradients(make_vec, tokenizer, True)
    assert saved_kept < plain_kept / 2  # the blocks' activations are not kept for the backward pass...
    assert plain_calls == 1 and saved_calls == 2  # ...but computed again in it
    assert plain.keys() == saved.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], saved[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_autocasts_the_passes_and_keeps_log_probs_in_float32(make_vec, tokenizer, precision):
    def run(setting: str):
        env = make_vec(8, policy=toy.toy_causal_lm(tokenizer, seed=1))
        agent = PPO(env, seed=0, mixed_precision=setting, num_minibatches=2)
        agent.learn(1)
        return agent

    full, mixed = run("no"), run(precision)
    a, b = full.last_rollout, mixed.last_rollout
    assert a is not None and b is not None
    assert b.logprobs.dtype == b.ref_logprobs.dtype == b.kl.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in mixed.history[-1].values())
    # the same tokens' log-probs, computed in lower precision: close, and not identical
    same = a.response_ids == b.response_ids
    first = same[:, 0]
    diff = (a.sampler_logprobs[:, 0] - b.sampler_logprobs[:, 0])[first].abs()
    assert first.any() and 0 < diff.max() < 0.1
    if precision == "fp16":
        assert mixed.grad_scaler is not None and mixed.grad_scaler.get_scale() > 0
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        PPO(make_vec(2), mixed_precision="fp8")


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_bf16_base_with_float32_adapters_trains(make_vec, tokenizer, precision):
    """The way to keep LoRA's frozen base from being cast on every pass: load it in bf16. The adapters
    stay float32 (peft's default) and train, with autocast or without."""
    base = toy.toy_causal_lm(tokenizer, seed=1).to(torch.bfloat16)
    agent = PPO(make_vec(8, policy=base, reference=None, lora=4), seed=0, mixed_precision=precision)
    policy = agent.model.policy
    adapters = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    assert all(p.dtype == torch.bfloat16 for n, p in policy.named_parameters() if "base_layer" in n)
    start = {n: p.detach().clone() for n, p in adapters.items()}
    agent.learn(1)
    assert all(math.isfinite(v) for v in agent.history[-1].values())
    assert any(not torch.equal(start[n], p) for n, p in adapters.items())
    assert agent.last_rollout is not None and agent.last_rollout.logprobs.dtype == torch.float32


class _WeightCasts(TorchDispatchMode):
    """Counts the casts of the given tensors (by storage) to a lower precision."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.storages = {w.data_ptr() for w in weights}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        dtype = kwargs.get("dtype", args[1] if len(args) > 1 and isinstance(args[1], torch.dtype) else None)
        lower = dtype in (torch.bfloat16, torch.float16)
        if lower and str(func.overloadpacket) in ("aten._to_copy", "aten.to"):
            self.count += isinstance(args[0], torch.Tensor) and args[0].data_ptr() in self.storages
        return func(*args, **kwargs)


def test_a_mixed_precision_rollout_casts_each_weight_once_not_every_token(make_vec, tokenizer):
    """Autocast keeps a cast copy of each trainable weight for its region, but not under inference mode:
    the rollout's passes run under ``no_grad`` when autocast is on, so 16 more tokens cast nothing more."""

    def casts(tokens: int) -> int:
        env = make_vec(4, policy=toy.toy_causal_lm(tokenizer, seed=1), max_new_tokens=tokens)
        agent = PPO(env, seed=0, mixed_precision="bf16")
        counter = _WeightCasts([p for p in agent.model.policy.parameters() if p.dim() == 2])
        with counter:
            rollout = agent.collect_rollout()
        assert int(rollout.lengths.max()) > 8 or tokens == 8
        return counter.count

    short, long = casts(8), casts(24)
    assert short > 0 and long == short


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_minibatch_of_a_mixed_precision_update_sees_the_weights_of_the_last_step(
    make_vec, tokenizer, precision
):
    """``torch.autocast`` keeps each trainable weight's low-precision copy until its outermost region ends.
    An update whose optimizer steps ran inside one region would run every later minibatch on the weights
    as cast before its first step (the PPO ratio then never moves). After every step, the policy's
    forward pass in the update's context must equal that of a fresh copy of it."""
    env = make_vec(8, policy=toy.toy_causal_lm(tokenizer, seed=1))
    agent = PPO(env, seed=0, mixed_precision=precision, num_minibatches=2, num_epochs=2)
    policy = agent.model.policy
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = policy(input_ids=ids).logits.float()
    gaps: list[float] = []
    step = agent.optimizer_step

    def step_then_compare(loss: torch.Tensor) -> float:
        norm = step(loss)
        with torch.no_grad():
            here = policy(input_ids=ids).logits.float()
            fresh = copy.deepcopy(policy)(input_ids=ids).logits.float()  # new tensors: nothing cached
        gaps.append(float((here - fresh).abs().max()))
        return norm

    agent.optimizer_step = step_then_compare  # type: ignore[method-assign]
    agent.learn(1)
    assert len(gaps) == 4 and max(gaps) == 0.0
    with torch.no_grad():
        assert (policy(input_ids=ids).logits.float() - before).abs().max() > 1e-3  # the steps moved it


# ------------------------------------------------------------------------------ frozen weights in bf16
@pytest.mark.parametrize("setting", ["full", "lora", "egreedy-per-token"])
def test_frozen_dtype_holds_the_weights_that_never_train_in_bf16_and_training_goes_on(
    make_vec, tokenizer, setting
):
    """``frozen_dtype``: the reference (a frozen copy, or with LoRA the base under the adapters) in bf16,
    the weights that train as they were; a bf16 rollout then casts no frozen weight (ε-greedy's reference
    cache in the decode loop and a per-token KL's included), and the agent trains."""
    lora = 4 if setting == "lora" else None
    placement = "per_token" if setting == "egreedy-per-token" else "terminal"
    env = make_vec(8, policy=toy.toy_causal_lm(tokenizer, seed=1), reference=None, lora=lora,
                   frozen_dtype=torch.bfloat16, max_new_tokens=12, kl_placement=placement)  # fmt: skip
    policy, reference = env.unwrapped.policy, env.unwrapped.reference
    trained = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    frozen = [p for p in reference.parameters() if not p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    if lora:  # one copy of the base: the policy's frozen weights are the reference's
        assert all(p.dtype == torch.bfloat16 for n, p in policy.named_parameters() if "base_layer" in n)
    else:
        assert len(trained) == len(list(policy.parameters()))  # a policy trained whole is left as it is

    if setting == "egreedy-per-token":
        agent = EpsilonGreedyPPO(env, seed=0, mixed_precision="bf16", exploration="reference_top_k")
    else:
        agent = PPO(env, seed=0, mixed_precision="bf16")
    counter = _WeightCasts([p for p in frozen if p.dim() == 2])
    with counter:
        rollout = agent.collect_rollout()
    assert counter.count == 0 and int(rollout.lengths.max()) > 1
    assert rollout.ref_logprobs.dtype == torch.float32 and torch.isfinite(rollout.kl).all()
    start = {n: p.detach().clone() for n, p in trained.items()}
    frozen_start = [p.detach().clone() for p in frozen]
    agent.learn(1)
    assert all(math.isfinite(v) for v in agent.history[-1].values())
    assert any(not torch.equal(start[n], p) for n, p in trained.items())
    assert all(b.dtype == torch.bfloat16 for b in frozen)
    assert all(torch.equal(a, b) for a, b in zip(frozen_start, frozen, strict=True))


@pytest.mark.parametrize(("held", "precision"), [("float16", "bf16"), ("bfloat16", "fp16")])
def test_frozen_weights_in_the_other_half_precision_than_autocast_are_refused(
    make_vec, tokenizer, held, precision
):
    env = make_vec(2, policy=toy.toy_causal_lm(tokenizer, seed=1), reference=None, frozen_dtype=held)
    with pytest.raises(ValueError, match=f"frozen weights are held in {held} and mixed_precision"):
        PPO(env, mixed_precision=precision)
    PPO(env, mixed_precision="no")  # without autocast they compute in their own dtype


def test_a_policy_that_trains_half_precision_weights_is_warned_about(make_vec, tokenizer):
    env = make_vec(2, policy=toy.toy_causal_lm(tokenizer, seed=1).to(torch.bfloat16), reference=None)
    with pytest.warns(UserWarning, match="the policy trains weights held in bfloat16"):
        PPO(env)


def test_a_float32_lora_base_is_cast_on_every_pass_of_a_bf16_rollout(make_vec, tokenizer):
    """What ``frozen_dtype`` spares: left in float32, LoRA's base is cast again at every token."""
    env = make_vec(8, policy=toy.toy_causal_lm(tokenizer, seed=1), reference=None, lora=4, max_new_tokens=12)
    agent = PPO(env, seed=0, mixed_precision="bf16")
    base = [p for n, p in agent.model.policy.named_parameters() if "base_layer" in n and p.dim() == 2]
    counter = _WeightCasts(base)
    with counter:
        rollout = agent.collect_rollout()
    assert counter.count >= len(base) * int(rollout.lengths.max())


def test_frozen_dtype_names_and_what_it_leaves_alone(make_vec, tokenizer):
    from textenv.config import EnvConfig
    from textenv.models import cast_frozen_weights

    assert EnvConfig(frozen_dtype="bf16").frozen_dtype == "bfloat16"
    assert EnvConfig(frozen_dtype=torch.float16).frozen_dtype == "float16"
    assert EnvConfig().frozen_dtype is None
    for wrong in ("int8", torch.int8, 16):
        with pytest.raises(ValueError, match="frozen_dtype must be None or one of 'float32'"):
            EnvConfig(frozen_dtype=wrong)
    # buffers (rotary frequencies), weights that train and the modules a model keeps in float32 stay
    model = llama_lm(tokenizer, seed=0).requires_grad_(False)
    model.model.layers[0].mlp.requires_grad_(True)
    model._keep_in_fp32_modules = ["lm_head"]
    changed = cast_frozen_weights(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert changed == sum(d == torch.bfloat16 for d in dtypes.values()) > 0
    assert dtypes["lm_head.weight"] == torch.float32 and dtypes["model.embed_tokens.weight"] == torch.bfloat16
    assert all(d == torch.float32 for n, d in dtypes.items() if ".mlp." in n and ".layers.0." in n)
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "inv_freq" in n)
    # the reference made as a frozen copy is made in bf16 as it is copied: the same weights as a copy
    # cast after, tied weights still tied, no storage shared with the policy
    policy = toy.toy_causal_lm(tokenizer, seed=1)
    copied = frozen_copy(policy, torch.bfloat16)
    cast = frozen_copy(policy)
    cast_frozen_weights(cast, torch.bfloat16)
    assert copied.state_dict().keys() == cast.state_dict().keys()
    assert all(torch.equal(v, cast.state_dict()[k]) for k, v in copied.state_dict().items())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copied.parameters())
    assert copied.lm_head.weight is copied.transformer.wte.weight
    assert not {p.data_ptr() for p in copied.parameters()} & {p.data_ptr() for p in policy.parameters()}
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    # a bf16 reference runs without autocast too (as agents' evaluations do)
    env = make_vec(4, policy=None, reference=llama_lm(tokenizer, seed=0), frozen_dtype="bfloat16",
                   kl_placement="per_token")  # fmt: skip
    env.reset(seed=0)
    *_, infos = env.step(env.action_space.sample())
    assert env.unwrapped.reference.lm_head.weight.dtype == torch.bfloat16
    assert np.all(np.isfinite(infos["ref_logprob"])) and np.all(infos["ref_logprob"] < 0)
