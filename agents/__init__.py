"""textenv's learners: token-level PPO, GRPO, a REINFORCE baseline and an epsilon-greedy PPO variant.

All four train against ``TextRLHF-v0``'s vector env through the Gymnasium API and share a small core
(``agents.core``: GAE, masked whitening, top-k/top-p; ``agents.policy``: the LM with a value head;
``agents.rollout``: KV-cached sampling that follows the env's autoreset)::

    import gymnasium as gym
    import textenv
    from agents import PPO

    env = gym.make_vec("TextRLHF-v0", num_envs=256, vectorization_mode="vector_entry_point",
                       kl_coef=0.2, kl_target=6.0)
    agent = PPO(env, seed=0).learn(total_timesteps=100_000, progress_bar=True)
    agent.save("runs/my-ppo")

Callbacks in SB3's shape (evaluation, checkpoints, a stop on a threshold) are in ``agents.callbacks``;
the run folder and the TensorBoard / W&B loggers in ``agents.reporting``. The training command:
``python -m agents.train --help``. The benchmark runner, ``textenv-bench`` (``agents.benchmark``), compares
agents over tasks and seeds, trl's GRPO and RLOO among them (``agents.peers``), with the statistics of
``agents.benchstats``.
"""

from agents.base import Agent, AgentConfig, describe_config, make_env
from agents.egreedy import EpsilonGreedyConfig, EpsilonGreedyPPO
from agents.grpo import GRPO, GRPOConfig
from agents.ppo import PPO, PPOConfig
from agents.reinforce import REINFORCE, REINFORCEConfig

__all__ = [
    "GRPO",
    "PPO",
    "REINFORCE",
    "Agent",
    "AgentConfig",
    "EpsilonGreedyConfig",
    "EpsilonGreedyPPO",
    "GRPOConfig",
    "PPOConfig",
    "REINFORCEConfig",
    "describe_config",
    "make_env",
]
