"""Registration, the light import, and the two ways to reach the env through Gymnasium."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import pytest

import textenv


def _python(code: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_import_does_not_load_torch_or_transformers():
    out = _python("import textenv, sys; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert out == "False False"


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: about 10 s
def test_make_with_module_prefix_needs_no_prior_import(tmp_path, tokenizer, reference):
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'textenv' not in sys.modules\n"
        f"env = gym.make('textenv:TextRLHF-v0', policy={str(tmp_path)!r}, prompts=['the food'],\n"
        "               reward_model=lambda p, r: [0.0] * len(p), max_new_tokens=3)\n"
        "obs, info = env.reset(seed=0)\n"
        "print('textenv' in sys.modules, info['prompt'])\n"
    )
    assert _python(code) == "True the food"


def test_registered_with_both_entry_points():
    spec = gym.spec("TextRLHF-v0")
    assert spec.entry_point == "textenv.env:TextRLHFEnv"
    assert spec.vector_entry_point == "textenv.vector_env:TextRLHFVectorEnv"
    gym.register_envs(textenv)  # the README's idiom is a no-op that keeps the import "used"


def test_lazy_public_names():
    assert textenv.TextRLHFEnv.__name__ == "TextRLHFEnv"
    assert textenv.RewardModelError.__module__ == "textenv.errors"
    with pytest.raises(AttributeError):
        textenv.no_such_name


def test_env_class_docstring_has_the_gymnasium_sections():
    doc = textenv.TextRLHFEnv.__doc__ or ""
    for section in [
        "Description",
        "Action Space",
        "Observation Space",
        "Rewards",
        "Starting State",
        "Episode End",
        "Arguments",
        "Version History",
    ]:
        assert f"## {section}" in doc
