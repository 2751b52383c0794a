"""Whole episodes at once: ``env.play`` and the agents' sample-then-play rollout.

``TextRLHFVectorEnv.play(actions)`` must give what stepping the same columns gives (rewards, terminal
infos, beta and its held updates), scored in one batched pass; the agents' default rollout, which samples
every response on the device first and then calls ``play``, must give the rollout of stepping token by
token.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import InvalidAction, ResetNeeded
from torch.utils._python_dispatch import TorchDispatchMode

from agents import GRPO, PPO, EpsilonGreedyPPO
from agents.rollout import collect, plays_whole_episodes
from textenv.errors import RewardModelError

TERMINAL_KEYS = ("score", "kl", "kl_coef", "logprobs", "ref_logprobs", "response", "prompt")


def _token_matrix(tokenizer, n: int, columns: int) -> np.ndarray:
    """Responses that end at different steps: row i has its EOS at column i (the last rows none)."""
    rng = np.random.default_rng(0)
    words = [tokenizer(w)["input_ids"][0] for w in (" good", " bad", " the", " great", " film")]
    actions = rng.choice(words, size=(n, columns))
    for i in range(n):
        if i < columns - 1:
            actions[i, i] = tokenizer.eos_token_id
    return actions


def _step(vec: gym.vector.VectorEnv, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Step ``vec`` column by column until every first episode has ended; what ``play`` returns."""
    n, columns = actions.shape
    rewards, terminated = np.zeros((n, columns)), np.zeros((n, columns), dtype=bool)
    running = np.ones(n, dtype=bool)
    terminal: dict[str, list[Any]] = {key: [None] * n for key in TERMINAL_KEYS}
    for t in range(columns):
        _, r, term, _, info = vec.step(actions[:, t])
        rewards[running, t] = r[running]
        terminated[running, t] = term[running]
        for slot in np.flatnonzero(running & term):
            for key in TERMINAL_KEYS:
                terminal[key][slot] = info[key][slot]
        running &= ~term
        if not running.any():
            break
    assert not running.any()
    return rewards, terminated, terminal


@pytest.mark.parametrize("hold", [False, True])
def test_play_gives_what_stepping_gives(make_vec, tokenizer, hold: bool) -> None:
    n, columns = 6, 6  # max_new_tokens is 6: the last rows end by length
    actions = _token_matrix(tokenizer, n, columns)
    stepped, played = (make_vec(n, kl_coef=0.2, kl_target=0.5, kl_horizon=10) for _ in range(2))
    for vec in (stepped, played):
        vec.unwrapped.hold_kl_coef(hold)
        vec.reset(seed=4)
    rewards, terminated, infos = _step(stepped, actions)
    reference_calls: list[int] = []
    hook = played.unwrapped.reference.register_forward_hook(lambda *a: reference_calls.append(1))
    p_rewards, p_terminated, p_infos = played.unwrapped.play(actions)
    hook.remove()

    np.testing.assert_array_equal(p_terminated, terminated)
    assert (terminated.sum(1) == 1).all() and terminated.any(0).sum() == columns  # six different ends
    np.testing.assert_allclose(p_rewards, rewards, atol=1e-5)
    assert np.count_nonzero(rewards) == n
    for slot in range(n):
        for key in ("score", "kl", "kl_coef"):
            assert p_infos[key][slot] == pytest.approx(infos[key][slot], abs=1e-5), key
        for key in ("logprobs", "ref_logprobs"):
            np.testing.assert_allclose(p_infos[key][slot], infos[key][slot], atol=1e-5)
        assert p_infos["response"][slot] == infos["response"][slot]
        assert p_infos["prompt"][slot] == infos["prompt"][slot]
    # beta moved between the steps that ended episodes (not once for all), the same way
    assert len({round(b, 12) for b in p_infos["kl_coef"]}) == (1 if hold else columns)
    assert played.unwrapped.kl_coef == pytest.approx(stepped.unwrapped.kl_coef, rel=1e-6)
    held_p, held_s = played.unwrapped.take_held_kl(), stepped.unwrapped.take_held_kl()
    assert len(held_p) == len(held_s) == (columns if hold else 0)
    for (kl_p, n_p), (kl_s, n_s) in zip(held_p, held_s, strict=True):
        assert n_p == n_s and kl_p == pytest.approx(kl_s, abs=1e-5)
    assert len(reference_calls) == 1  # one batched pass, where stepping made one per step that ended some

    # afterwards every slot has ended: the next step autoresets them all, as after a terminal step
    _, r, term, _, info = played.step(actions[:, 0])
    assert not term.any() and not r.any() and info["_prompt"].all()


def test_play_checks_its_input_and_changes_nothing_on_failure(make_vec, tokenizer) -> None:
    failing = {"now": False}

    def reward(prompts: list[str], responses: list[str]) -> list[float]:
        if failing["now"]:
            raise RuntimeError("reward server down")
        return [float(len(r)) for r in responses]

    vec = make_vec(3, reward_model=reward)
    actions = _token_matrix(tokenizer, 3, 6)
    with pytest.raises(ResetNeeded):
        vec.unwrapped.play(actions)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.unwrapped.play(actions[:2])
    with pytest.raises(InvalidAction, match="outside the vocabulary"):
        vec.unwrapped.play(np.full((3, 6), 10**6))
    no_eos = np.full((3, 4), tokenizer(" good")["input_ids"][0])
    with pytest.raises(ValueError, match="neither an EOS nor max_new_tokens"):
        vec.unwrapped.play(no_eos)
    with pytest.raises(ValueError, match="logprobs must have the shape"):
        vec.unwrapped.play(actions, logprobs=np.zeros((3, 2)))

    before = vec.unwrapped.engine.input_ids.copy(), vec.unwrapped.kl_coef
    failing["now"] = True
    with pytest.raises(RewardModelError, match="reward server down"):
        vec.unwrapped.play(actions)
    failing["now"] = False
    np.testing.assert_array_equal(vec.unwrapped.engine.input_ids, before[0])
    assert vec.unwrapped.kl_coef == before[1] and vec.unwrapped.engine.active.all()

    vec.step(actions[:, 0])
    with pytest.raises(ValueError, match="call reset"):
        vec.unwrapped.play(actions)
    per_token = make_vec(3, kl_placement="per_token")
    per_token.reset(seed=0)
    with pytest.raises(ValueError, match="terminal"):
        per_token.unwrapped.play(actions)


def _same_rollouts(first, second) -> None:
    assert torch.equal(first.response_ids, second.response_ids)
    assert torch.equal(first.response_mask, second.response_mask)
    assert first.responses == second.responses and first.prompts == second.prompts
    for name in ("sampler_logprobs", "behaviour_logprobs", "values", "logprobs"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), atol=1e-6, rtol=0)
    for name in ("ref_logprobs", "rewards", "scores", "kl"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), atol=2e-5, rtol=0)
    if first.explore_probs is not None:
        torch.testing.assert_close(first.explore_probs, second.explore_probs, atol=1e-6, rtol=0)
    assert first.kl_coef == pytest.approx(second.kl_coef, rel=1e-6)


def _favour_eos(policy: torch.nn.Module, shift: float = 6.0) -> None:
    eos = policy.config.eos_token_id

    def hook(module: torch.nn.Module, inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        return logits + shift * torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1])

    policy.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("agent_class", [PPO, EpsilonGreedyPPO, GRPO])
def test_the_sample_then_play_rollout_equals_stepping_token_by_token(make_agent_env, agent_class) -> None:
    settings: dict[str, Any] = {"group_size": 2} if agent_class is GRPO else {}
    if agent_class is EpsilonGreedyPPO:
        settings["epsilon"] = 0.3
    agents = [agent_class(make_agent_env(num_envs=6), seed=0, **settings) for _ in range(2)]
    for agent in agents:  # EOS likelier, so that episodes end at different steps
        _favour_eos(agent.model.policy)
    ends = []
    for i in range(3):  # three rollouts: beta has moved, and the generators must stay in step
        rollouts = [
            collect(
                agent.env,
                agent.model,
                generator=agent.generator,
                seed=20 + i,
                group_size=agent.group_size(),
                exploration=agent.exploration(),
                reference=agent.env.unwrapped.reference,
                whole_episodes=whole,
            )
            for agent, whole in zip(agents, (False, True), strict=True)
        ]
        _same_rollouts(*rollouts)
        ends.append(rollouts[0].lengths.unique().numel())
    assert max(ends) > 2  # episodes ended at different steps
    assert agents[1].env.unwrapped.kl_coef == pytest.approx(agents[0].env.unwrapped.kl_coef, rel=1e-6)


def test_agents_play_whole_episodes_where_the_env_allows(make_agent_env) -> None:
    agent = PPO(make_agent_env(num_envs=4), seed=0)
    assert plays_whole_episodes(agent.env, agent.model)
    stepped: list[int] = []
    original = agent.env.step
    agent.env.step = lambda actions: stepped.append(1) or original(actions)  # type: ignore[method-assign]
    agent.collect_rollout()
    assert stepped == []  # the default rollout made no step at all: one play() call

    wrapped = gym.wrappers.vector.RecordEpisodeStatistics(make_agent_env(num_envs=4))
    assert not plays_whole_episodes(wrapped, PPO(wrapped, seed=0).model)  # its wrappers see every step
    per_token = make_agent_env(num_envs=4, kl_placement="per_token")
    assert not plays_whole_episodes(per_token, PPO(per_token, seed=0).model)
    with pytest.raises(ValueError, match="whole_episodes=True needs"):
        collect(per_token, agent.model, generator=torch.Generator(), whole_episodes=True)


def test_an_accelerator_sampler_that_checks_for_the_end_every_8_tokens_plays_the_same_episodes(
    make_agent_env, monkeypatch
) -> None:
    """On a GPU the sampler asks the host only every 8 tokens whether every episode has ended, so it may
    draw columns past the last end; the env must ignore them (run here on CPU with the GPU's setting)."""
    import agents.rollout

    monkeypatch.setattr(agents.rollout, "host_check_every", lambda device: 8)
    env_settings = {"max_new_tokens": 12}
    stepped, whole = (PPO(make_agent_env(num_envs=6, **env_settings), seed=0) for _ in range(2))
    for agent in (stepped, whole):
        _favour_eos(agent.model.policy, shift=9.0)
    first, second = (
        collect(agent.env, agent.model, generator=torch.Generator().manual_seed(5), seed=3, whole_episodes=w)
        for agent, w in ((stepped, False), (whole, True))
    )
    _same_rollouts(first, second)
    longest = int(first.lengths.max())
    assert longest < 12 and longest != 8  # the sampler drew columns past the last end


class _HostReads(TorchDispatchMode):
    """Counts the operations that read a tensor's values on the host (``bool()``, ``.item()``, ``nonzero``):
    on a GPU each one waits for every kernel queued before it."""

    READS = frozenset({"aten.is_nonzero", "aten.item", "aten._local_scalar_dense", "aten.nonzero"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.on = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self.on and str(func.overloadpacket) in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("agent_class", [PPO, EpsilonGreedyPPO])
def test_the_sampler_reads_nothing_back_from_the_device_between_its_checks_for_the_end(
    make_agent_env, monkeypatch, agent_class
) -> None:
    """With the GPU's setting (a check every 8 tokens), sampling 16 more tokens per episode adds exactly
    the 2 checks to the host reads made before ``play``: the policy's steps (and the reference's, for
    the epsilon-greedy sampler) read nothing back, so there is no host round trip per token."""
    import agents.rollout

    monkeypatch.setattr(agents.rollout, "host_check_every", lambda device: 8)
    settings: dict[str, Any] = {"epsilon": 0.3} if agent_class is EpsilonGreedyPPO else {}

    def reads_before_play(tokens: int) -> tuple[int, int]:
        agent = agent_class(make_agent_env(num_envs=4, max_new_tokens=tokens), seed=0, **settings)
        _favour_eos(agent.model.policy, shift=-30.0)  # no episode ends before the last token
        reads = _HostReads()
        play = agent.env.unwrapped.play

        def stop_counting(*args: Any, **kwargs: Any) -> Any:
            reads.on = False
            return play(*args, **kwargs)

        agent.env.unwrapped.play = stop_counting
        with reads:
            rollout = agent.collect_rollout()
        return reads.count, int(rollout.lengths.min())

    (short, short_length), (long, long_length) = reads_before_play(8), reads_before_play(24)
    assert (short_length, long_length) == (8, 24)
    assert long - short == 2  # the checks after tokens 8 and 16; none per token


def test_sampling_outside_the_env_reads_nothing_back_between_its_checks(
    policy, tokenizer, monkeypatch
) -> None:
    """``textenv.sampling.sample_tokens_kv`` (task building, labelling) with the GPU's check every 8 tokens
    draws the same responses as checking every token, and 16 more tokens add only the 2 checks."""
    import textenv.sampling
    from textenv.sampling import sample_tokens_kv

    encoded = tokenizer(["the staff", "great", "overall it was"], padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert not bool(mask.all())  # left padding in the batch

    def sample(check_every: int, tokens: int, eos: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        monkeypatch.setattr(textenv.sampling, "host_check_every", lambda device: check_every)
        reads = _HostReads()
        with reads:
            out = sample_tokens_kv(
                policy,
                ids,
                mask,
                max_new_tokens=tokens,
                temperature=1.0,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                generator=torch.Generator().manual_seed(0),
            )
        return *out, reads.count

    short, long = sample(8, 8, None)[2], sample(8, 24, None)[2]  # no EOS: every row runs to the end
    assert long - short == 2
    _favour_eos(policy, shift=3.0)  # (its hook reads values itself: counted above, not here)
    every_token, every_8 = sample(1, 24, tokenizer.eos_token_id), sample(8, 24, tokenizer.eos_token_id)
    assert torch.equal(every_token[0], every_8[0]) and torch.equal(every_token[1], every_8[1])
    assert 0 < int(every_8[1].min()) < 24  # some responses ended early


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_kv_cache_of_other_families_matches_a_full_pass_and_reads_nothing_back(family, attention) -> None:
    """Llama- and Qwen2-shaped models (rotary positions, grouped-query attention) through the KV cache: a
    step's next-token log-probs equal one unpadded forward pass of each sequence (a slot left out of a
    step keeps its own), and a step reads nothing back on the host, SDPA or eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from textenv.scoring import IncrementalLogprobs

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[family]
    config = config_class(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).eval()
    sequences = [[3, 4, 5], [7], [9, 10, 11, 12]]
    P = 4
    ids, mask = torch.zeros(3, P, dtype=torch.long), torch.zeros(3, P, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, P - len(s) :], mask[i, P - len(s) :] = torch.tensor(s), 1
    cache = IncrementalLogprobs(model, 3, P, 6, temperature=1.0, pad_token_id=0)
    live = torch.tensor([True, True, False])
    with torch.no_grad():
        cache.prefill(torch.arange(3), ids, mask)
        for token in (13, 14, 15):
            reads = _HostReads()
            with reads:
                cache.advance_where(live, torch.full((3,), token))
            assert reads.count == 0
            for i in (0, 1):
                sequences[i].append(token)
            for i, s in enumerate(sequences):
                expected = model(input_ids=torch.tensor([s])).logits[0, -1].float().log_softmax(-1)
                torch.testing.assert_close(cache.next_logprobs[i], expected, atol=1e-5, rtol=0)


def test_the_4d_step_mask_goes_to_transformers_own_sdpa_models_only(tokenizer) -> None:
    """SDPA models of transformers' own code (bare or wrapped in LoRA adapters) get the 4D mask; eager
    attention and models whose forward is someone else's code (as with ``trust_remote_code``) the 2D one."""
    from transformers import GPT2LMHeadModel

    from textenv import toy
    from textenv.lora import add_lora
    from textenv.scoring import step_attention_mask

    class OwnCode(GPT2LMHeadModel):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return super().forward(*args, **kwargs)

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    sdpa = toy.toy_causal_lm(tokenizer, seed=0)
    assert sdpa.config._attn_implementation == "sdpa"
    eager = toy.toy_causal_lm(tokenizer, seed=0)
    eager.config._attn_implementation = "eager"
    own = OwnCode(sdpa.config)
    assert step_attention_mask(sdpa, mask).shape == (2, 1, 1, 3)
    assert torch.equal(step_attention_mask(sdpa, mask)[:, 0, 0], mask.bool())
    assert step_attention_mask(eager, mask) is mask and step_attention_mask(own, mask) is mask
    pytest.importorskip("peft")
    assert step_attention_mask(add_lora(toy.toy_causal_lm(tokenizer, seed=0), 4), mask).dim() == 4


def test_the_kv_cache_leaves_out_padding_columns_and_takes_a_later_prompt(reference, tokenizer) -> None:
    """A prefill of every slot drops the columns that are padding in every prompt (the cache then spans
    the longest prompt, not the prompt width); a slot restarted later still gets its prompt in full. The
    next-token log-probs equal one unpadded forward pass of each sequence throughout."""
    from textenv.scoring import IncrementalLogprobs

    P, T = 8, 4
    texts = ["the staff", "great", "overall it was"]

    def padded(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), P, dtype=torch.long)
        mask = torch.zeros(len(prompts), P, dtype=torch.long)
        for i, text in enumerate(prompts):
            tokens = tokenizer(text)["input_ids"]
            ids[i, P - len(tokens) :], mask[i, P - len(tokens) :] = torch.tensor(tokens), 1
        return ids, mask

    def expected(sequence: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([sequence])).logits[0, -1]
        return logits.float().log_softmax(-1)

    cache = IncrementalLogprobs(reference, 3, P, T, temperature=1.0, pad_token_id=0)
    ids, mask = padded(texts)
    with torch.no_grad():
        cache.prefill(torch.arange(3), ids, mask)
        longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
        assert cache.mask.shape[1] == longest < P
        sequences = [tokenizer(t)["input_ids"] for t in texts]
        for token in (5, 6):
            cache.advance(torch.arange(3), torch.full((3,), token))
            for s in sequences:
                s.append(token)
        new_ids, new_mask = padded(["the film was really"])  # longer than the first prefill's width
        cache.prefill(torch.tensor([1]), new_ids, new_mask)
        sequences[1] = tokenizer("the film was really")["input_ids"]
        cache.advance(torch.arange(3), torch.tensor([7, 8, 9]))
        for s, token in zip(sequences, (7, 8, 9), strict=True):
            s.append(token)
    for slot, sequence in enumerate(sequences):
        torch.testing.assert_close(cache.next_logprobs[slot], expected(sequence), atol=1e-5, rtol=0)


def test_with_lora_the_reference_is_the_adapters_off_in_play_too(make_agent_env) -> None:
    """LoRA's reference (the policy with its adapters switched off) scores the played episodes as it scores
    stepped ones, after the adapters have moved away from zero."""
    pytest.importorskip("peft")
    agents = [PPO(make_agent_env(num_envs=6, lora=4), seed=0) for _ in range(2)]
    for agent in agents:
        _favour_eos(agent.model.policy.get_base_model())
        with torch.no_grad():  # move the adapters: the policy is no longer its reference
            for name, p in agent.model.policy.named_parameters():
                if "lora_" in name:  # the same adapters in both agents (peft draws lora_A at random)
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel()).view_as(p))
    first, second = (
        collect(agent.env, agent.model, generator=torch.Generator().manual_seed(2), seed=9, whole_episodes=w)
        for agent, w in zip(agents, (False, True), strict=True)
    )
    _same_rollouts(first, second)
    assert float(first.kl.abs().max()) > 1e-3  # the KL is not zero: the adapters count
