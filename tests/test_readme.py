"""The README's Python blocks run when pasted alone: each in a fresh interpreter, in a folder that holds
tiny models at the README's placeholder paths (``path/to/causal-lm``, ``my-rm``, ``pairs.jsonl``, ...).

Only sizes are changed, and only those listed in ``SHRINK`` (each must still be found in the README, so
the list cannot go stale): a block that trains for 100k tokens trains for a few hundred here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from textenv import toy
from textenv.reward_training import RewardTrainingResult, save_reward_model

README = Path(__file__).resolve().parents[1] / "README.md"

#: (text of the README, what the test runs instead): training budgets and batch sizes only.
SHRINK = (
    ("num_envs=256", "num_envs=8"),
    ("total_timesteps=100_000", "total_timesteps=200"),
    ("ent_coef=0.05).learn(20_000)", "ent_coef=0.05, n_steps=64, batch_size=32).learn(64)"),
)


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced ``python`` block of the README."""
    text = README.read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


BLOCKS = python_blocks()


def test_the_shrunk_sizes_are_still_in_the_readme():
    text = README.read_text(encoding="utf-8")
    for old, _ in SHRINK:
        assert old in text, f"{old!r} is no longer in the README: update SHRINK"
    assert len(BLOCKS) >= 10


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory):
    """A folder with a tiny model at every path the README's blocks name."""
    root = tmp_path_factory.mktemp("placeholders")
    tokenizer = toy.toy_tokenizer()
    lm = toy.toy_causal_lm(tokenizer, seed=0)
    for name in ("path/to/causal-lm", "path/to/lm", "path/to/my-lm"):
        lm.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    scalar = toy.toy_classifier(tokenizer, seed=1)
    for name in ("path/to/reward-model", "my-rm"):  # as the reward trainer saves one
        save_reward_model(RewardTrainingResult(scalar, tokenizer, {}, []), root / name)
    sentiment = toy.toy_classifier(tokenizer, labels=["NEGATIVE", "POSITIVE"], seed=2)
    sentiment.save_pretrained(root / "path/to/sentiment-classifier")
    tokenizer.save_pretrained(root / "path/to/sentiment-classifier")
    lines = []
    for group in range(6):  # comparison groups of three responses: every pair, with a shared group key
        good, fair, bad = " the food was great .", " the room was clean .", " the staff was rude ."
        for chosen, rejected in ((good, fair), (good, bad), (fair, bad)):
            lines.append({"prompt": "the food", "chosen": chosen, "rejected": rejected, "group": group})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    demos = [{"prompt": p, "response": " was very good ."} for p in toy.PROMPTS] * 4
    (root / "demos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos))
    return root


@pytest.mark.slow  # about 10 s a block (a fresh interpreter each); `make test-slow`
@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs_alone(line, code, placeholders, tmp_path):
    for name in re.findall(r"^(?:from|import) ([\w]+)", code, re.M):  # a third-party example's package
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"README.md:{line} needs {name}, which is not installed")
    for old, new in SHRINK:
        code = code.replace(old, new)
    work = tmp_path / "work"
    shutil.copytree(placeholders, work)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"README.md:{line} failed:\n{code}\n{result.stderr[-3000:]}"
