"""The README's walkthrough from human feedback to a policy runs as written: label (the answers sent through
the page's own API, as the page's script sends them), fit the reward model, plug it in and train PPO-ptx.

The commands are read from the README (the block after the ``walkthrough`` marker) and run in a fresh folder
with smaller sizes (``SHRINK``; each must still be found in the README). The labelling command gets
``--port 0 --no-browser``, and the simulated labeller prefers the response that the default task's gold
scores higher (its sentiment), as a person asked for positive reviews would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from textenv.tasks.reviews import gold_score

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- walkthrough: tests/test_walkthrough.py -->"
SHRINK = (
    ("--n 40", "--n 8"),
    ("--timesteps 30000", "--timesteps 400 --num-envs 16 --eval-episodes 32 --eval-every 0 --samples 1"),
)


def walkthrough() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its walkthrough marker"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            for old, new in SHRINK:
                line = line.replace(old, new)
            commands.append(shlex.split(line))
    return commands


def test_the_shrunk_sizes_are_in_the_walkthrough():
    text = README.read_text(encoding="utf-8")
    section = text[text.index(MARKER) :].split("```", 2)[1]
    for old, _ in SHRINK:
        assert old in section


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    commands = walkthrough()
    assert [c[0] for c in commands] == ["textenv-label", "textenv-train-rm", "textenv-train"]
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def program(command: list[str]) -> list[str]:
        return [str(bin_dir / command[0]), *command[1:]]

    # 1. sample and label: the server runs until Ctrl+C, as a person would leave it
    label = subprocess.Popen(
        [*program(commands[0]), "--port", "0", "--no-browser"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert label.stdout is not None
    try:
        line = ""
        while "labelling page at" not in line:
            line = label.stdout.readline()
            assert line, "the labelling command ended before serving the page"
        url = line.split("labelling page at ")[1].split()[0].rstrip("/")
        with urllib.request.urlopen(url + "/api/state", timeout=30) as response:
            state = json.loads(response.read())
        answered = 0
        while state["item"] is not None:
            item = state["item"]
            golds = [gold_score(item["prompt"], r).utility for r in item["responses"]]
            state = post(url + "/api/answer", {"item": item["id"], "best": golds.index(max(golds))})
            answered += 1
        assert answered == 8 and state["done"] == 8
    finally:
        label.send_signal(signal.SIGINT)
        out, _ = label.communicate(timeout=30)
    assert label.returncode == 0 and "8 of 8 items done" in out
    prefs = [json.loads(x) for x in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert len(prefs) == 8 * 2  # best of 3: two pairs an answer
    assert {p["labeller"] for p in prefs} == {"ann"}

    # 2. the reward model, 3. PPO-ptx on it
    for command in commands[1:]:
        done = subprocess.run(
            program(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "my-linear-rm" / "linear_reward.json").is_file()
    run = tmp_path / "runs" / "from-my-labels"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss/ptx"] > 0 for m in metrics if "loss/ptx" in m) and any(
        "loss/ptx" in m for m in metrics
    )
