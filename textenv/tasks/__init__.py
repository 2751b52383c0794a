"""Tasks for ``TextRLHF-v0``: prompts, a pretrained policy and a reward model that belong together.

:mod:`textenv.tasks.reviews` is the embedded default. A task is nothing more than the constructor
arguments it fills in; see the README's "Plugging in another task".
"""
