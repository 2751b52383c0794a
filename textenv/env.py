"""TextRLHF-v0: token-level RLHF as a Gymnasium environment (one episode at a time)."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded

from textenv.config import RENDER_MODES, EnvConfig, check_options, check_seed
from textenv.engine import EngineEnv, slot_info


class TextRLHFEnv(EngineEnv, gym.Env[dict[str, np.ndarray], Any]):
    """
    ## Description

    Generating a response to a prompt, one token at a time, as a Markov decision process, with the RLHF
    reward: a reward model's score of the finished response minus ``kl_coef`` times the KL divergence of the
    policy from a frozen reference model (Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al., 2022).

    The environment holds the policy being trained (``env.unwrapped.policy``, the agent's own model, shared,
    never copied) because the KL term needs its log-probabilities, and a frozen reference
    (``env.unwrapped.reference``). The vector version, ``gymnasium.make_vec("TextRLHF-v0", num_envs=N)``,
    steps N episodes with one batched forward pass per model; this class is its one-episode case.

    ## Action Space

    ``Discrete(V)``: the id of the next token, V being the policy's output vocabulary size (which may exceed
    ``len(tokenizer)`` when the embedding matrix is padded).

    ## Observation Space

    A ``Dict`` of three ``Box(int64)`` arrays of length ``L = max_prompt_tokens + max_new_tokens``:

    | key              | contents                                                                   |
    |------------------|----------------------------------------------------------------------------|
    | `input_ids`      | the prompt, left-padded into columns ``[0, max_prompt_tokens)``, then the   |
    |                  | response so far from column ``max_prompt_tokens`` on; pad id elsewhere      |
    | `attention_mask` | 1 where ``input_ids`` holds a real token, 0 on padding                      |
    | `position_ids`   | ``max(cumsum(attention_mask) - 1, 0)``: each token's position among the real |
    |                  | tokens, so that the left padding does not shift the prompt                  |

    The observation feeds a causal LM as it is::

        out = policy(**{key: torch.as_tensor(value)[None] for key, value in obs.items()})
        next_logits = out.logits[0, max_prompt_tokens + t - 1]    # after t response tokens

    gives the distribution the env scores (divide by ``temperature``). Without ``position_ids`` a GPT-2
    would count the padding as positions and see a shifted prompt. Token columns never move during an
    episode.

    ## Rewards

    0 on every step but the last. At the last step (``kl_placement="terminal"``, the default)::

        r_T = score(x, y) - kl_coef * KL(x, y),    KL = sum_t k(log pi(a_t|s_t), log pi_ref(a_t|s_t))

    in nats per sequence, ``k`` the estimator ``kl_estimator`` (k1, k2 or k3, see ``textenv.kl``). Log-probs
    are those of the sampling distribution, ``log_softmax(logits / temperature)``, for policy and reference
    alike; they are computed by one teacher-forced pass of each model when the episode ends.

    With ``kl_placement="per_token"`` each step pays ``r_t = -kl_coef * k_t`` and the last step adds the
    score: the same total, computed incrementally with KV caches.

    With ``policy=None`` (an agent whose policy is not a language model, such as an SB3 MLP) the policy's
    log-probs are unknown, and the reward is ``score + kl_coef * sum_t log pi_ref(a_t|s_t)``; ``info`` says
    so in ``reward_form``. Adding an entropy bonus of ``kl_coef`` in the agent gives the same objective in
    expectation, since ``E_pi[sum_t log pi_ref] + H(pi) = -KL(pi || pi_ref)``.

    ``kl_coef`` is fixed, or, with ``kl_target`` set, adapted after every batch of finished episodes by
    Ziegler et al.'s controller (``textenv.AdaptiveKLController``); read or set it as
    ``env.unwrapped.kl_coef``. Each episode's reward uses the value before the update its own KL causes.

    ## Starting State

    A prompt drawn with ``self.np_random`` from ``prompts`` (uniformly from a list, or by calling
    ``prompts(np_random)``), or the one given as ``reset(options={"prompt": text})``; an empty response.

    ## Episode End

    The episode ends with ``terminated=True`` when the action is the tokenizer's EOS token or when the
    response reaches ``max_new_tokens`` tokens; the reward is paid there and nothing follows. ``truncated``
    stays False (it is reserved for limits the task did not define, e.g. a ``TimeLimit`` wrapper).

    ## Info

    ``reset``: ``prompt`` (text) and ``prompt_truncated``. Last step: ``score``, ``kl``, ``kl_coef``,
    ``logprobs`` and ``ref_logprobs`` (numpy, one per response token, EOS included), ``prompt``,
    ``response`` (decoded without the final EOS and special tokens), ``prompt_truncated`` and
    ``reward_form``. With ``policy=None``: no ``kl``/``logprobs``. With ``per_token``, every step also
    reports ``logprob``, ``ref_logprob`` and ``token_kl`` of its token.

    ## Arguments

    ```python
    gymnasium.make("TextRLHF-v0")  # the embedded default task (reviews), offline, in about a second
    gymnasium.make("TextRLHF-v0", task="sorting")  # a task of the suite: textenv.tasks.names()
    gymnasium.make("TextRLHF-v0", policy=..., reference=None, tokenizer=None, reward_model=...,
                   prompts=[...], max_new_tokens=32, max_prompt_tokens=64, temperature=1.0,
                   kl_coef=0.2, kl_estimator="k1", kl_placement="terminal", kl_target=None,
                   kl_horizon=10000, device=None, lora=None, frozen_dtype=None, render_mode=None,
                   task=None)
    ```

    * ``task``: a name from ``textenv.tasks.names()`` (``"reviews"``, ``"verbosity"``, ``"sorting"``,
      ``"treasure"``, ``"requests"``, or one you registered). The task's policy, tokenizer, reward (its
      reward model, or a scoring function for verifiable tasks), prompts and lengths fill in every
      argument not given. Left out, with no ``policy`` either, it is the embedded default task
      (``"reviews"``: ``max_new_tokens=24``, ``max_prompt_tokens=16``), so ``reward_model=`` alone swaps
      the reward on the default task. With your own ``policy`` the task's tokenizer is not used; with
      ``policy=None`` the task's policy is the reference. An unknown name raises ``ValueError`` listing
      the tasks. ``env.unwrapped.task`` tells which task an env plays (``None`` for none).
    * ``policy``: the causal LM being trained (object, local directory or hub name), or ``None``.
    * ``reference``: the frozen reference (same forms); default: a frozen copy of the initial policy.
    * ``tokenizer``: the policy's tokenizer (object, directory or hub name); default: from the policy's path.
      A tokenizer without a pad token is fine: the EOS id fills the padding, the tokenizer is not changed.
    * ``reward_model``: a callable ``(prompts, responses) -> scores``, an object with ``.score``, a
      transformers sequence classifier (object, directory or hub name; give ``reward_label`` when it has
      several labels) or a ``text-classification`` pipeline. See ``textenv.rewards``.
    * ``prompts``: a list of strings or a callable ``(np_random) -> str``.
    * ``max_new_tokens``, ``max_prompt_tokens``: the response limit and the prompt width (32 and 64 unless
      a task sets them). A longer prompt raises ``ValueError`` unless ``truncate_prompts=True`` (keep its
      last tokens; flagged in ``info``).
    * ``temperature``: of the sampling distribution whose log-probs enter the KL.
    * ``kl_coef``, ``kl_estimator``, ``kl_placement``, ``kl_target``, ``kl_horizon``: beta and the KL term.
    * ``device``: where the models run (default: the policy's device, else CPU).
    * ``lora``: train LoRA adapters (peft) instead of the whole policy: a rank (``8``) or a dict of
      ``peft.LoraConfig`` arguments. The reference is then the policy with its adapters switched off (one
      copy of the weights), unless ``reference`` is given. A policy that is a peft model already gets that
      reference without ``lora``. See ``textenv.lora``.
    * ``frozen_dtype``: hold the weights that never train in ``"bfloat16"`` (``"float16"``, ``"float32"``,
      or that torch dtype): the reference's, and with LoRA the policy's base (the adapters stay float32,
      as peft makes them). A policy trained whole and the reward model stay as they are. ``None``
      (default): as loaded. Halves their memory, and under ``torch.autocast`` (an agent's
      ``mixed_precision``) spares a cast of every frozen weight on every forward pass. A reference object
      you pass is changed in place. Such weights compute in bf16 also outside autocast: the reference's
      log-probs move by bf16's rounding (on the default task at the start, where policy and reference are
      one model: 0.009 nats per token apart, 0.002 nats of KL per episode; bf16 autocast alone makes it
      0.001), and a LoRA policy's passes run on its bf16 base.
    * ``render_mode``: ``"ansi"`` returns the text so far from ``render()``.
    * ``trust_remote_code``: passed to ``from_pretrained``; off unless you turn it on.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}  # noqa: RUF012  (Gymnasium's convention)

    def __init__(self, config: EnvConfig | None = None, **settings: Any):
        self._build_engine(config, settings, num_slots=1)
        self.observation_space = self.engine.observation_space  # type: ignore[assignment]
        self.action_space = self.engine.action_space
        self._slot = np.zeros(1, dtype=np.int64)
        self._needs_reset = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; ``options={"prompt": text}`` fixes its prompt instead of drawing one.

        Everything is checked before anything changes: a bad seed, option or prompt leaves the env (its
        episode and its random generator) as it was.
        """
        seed = check_seed("seed", seed)
        text = check_options(options, ("prompt",)).get("prompt")
        if text is not None:
            prompt = self.engine.encode_prompt(text)  # may raise: nothing changed yet
            super().reset(seed=seed)
        else:
            saved = self._np_random, self._np_random_seed
            super().reset(seed=seed)
            try:
                prompt = self.engine.draw_prompt(self.np_random)
            except BaseException:
                self._np_random, self._np_random_seed = saved  # a failing prompt callable changes nothing
                raise
        self.engine.reset(self._slot, [prompt])
        self._needs_reset = False
        obs = self.engine.observation(0)
        return obs, {"prompt": prompt.text, "prompt_truncated": prompt.truncated}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise ResetNeeded("step() called before reset() or after the episode ended; call reset() first")
        actions = self.engine.check_actions(action, 1)
        result = self.engine.step(self._slot, actions)
        terminated = bool(result.terminated[0])
        self._needs_reset = terminated
        return self.engine.observation(0), float(result.rewards[0]), terminated, False, slot_info(result, 0)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.engine.text(0)
        return None
