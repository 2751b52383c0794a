"""Learners for TextRLHF-v0 (token-level PPO, REINFORCE, epsilon-greedy PPO): coming in a later release."""
