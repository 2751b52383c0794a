"""The main job, `python -m agents.train`, end to end on the default task at a tiny size."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

import agents.base
from agents import GRPO, PPO
from agents.train import agent_classes, build_parser, main

TINY = ["--num-envs", "8", "--eval-episodes", "8", "--samples", "2", "--save-every", "1", "--quiet"]


class Killed(BaseException):
    """Stands for the process dying mid-save (not an Exception: nothing may swallow it)."""


def _killed(*args, **kwargs):
    raise Killed


def test_training_command_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    summary = main(["--timesteps", "150", "--run-dir", str(run), "--seed", "3", *TINY])
    out = capsys.readouterr().out
    for text in (
        "task reviews",
        "before",
        "after",
        "success rate",
        "gold sentiment",
        "distinct-2",
        "samples after",
    ):
        assert text in out
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "summary.json", "samples.md"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["charts/timesteps"] >= 150
    assert {"objective/scores", "objective/kl", "gold/score", "gold/success_rate", "policy/approxkl"} <= set(
        rows[0]
    )
    assert {"gold/sentiment", "gold/positive_rate", "gold/grammatical_rate"} <= set(rows[0])  # the task's own
    assert set(summary["before"]) >= {
        "rm_score",
        "gold",
        "success_rate",
        "gold_sentiment",
        "grammatical_rate",
        "kl",
    }
    assert summary["before"]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as its reference
    AutoModelForCausalLM.from_pretrained(run / "checkpoint" / "policy", use_safetensors=True)

    with pytest.raises(SystemExit, match="--resume"):
        main(["--timesteps", "150", "--run-dir", str(run), *TINY])
    with pytest.raises(SystemExit, match="as it was made"):
        main(["--resume", str(run), "--kl-target", "3", *TINY])
    # a resume killed while writing its first checkpoint leaves the last complete one, and the next resume
    # says it takes that one; the metrics of the killed iteration are not kept (never a mix)
    done = json.loads((run / "checkpoint" / "state.json").read_text())["iterations"]
    with monkeypatch.context() as patch:
        patch.setattr(agents.base, "save_file", _killed)  # after policy/ is written, before agent.safetensors
        with pytest.raises(Killed):
            main(["--resume", str(run), "--timesteps", "300", *TINY])
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iterations"] == done
    capsys.readouterr()
    main(["--resume", str(run), "--timesteps", "300", *TINY])
    assert f"resuming from {run / 'checkpoint'} (iteration {done}," in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "reviews"
    assert config["seed"] == 3 and config["timesteps"] == 300 and "--resume" in config["resumed_with"][0]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed[: len(rows)] == rows and len(resumed) > len(rows)
    assert resumed[-1]["charts/timesteps"] >= 300
    assert [r["charts/iteration"] for r in resumed] == list(range(1, len(resumed) + 1))
    agent = PPO.load(run / "checkpoint", "TextRLHF-v0")
    assert agent.num_timesteps == resumed[-1]["charts/timesteps"] and agent.config.num_envs == 8

    # a damaged checkpoint with nothing to fall back on is refused, naming the file
    weights = run / "checkpoint" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(SystemExit, match=r"model\.safetensors has \d+ bytes, the manifest says \d+"):
        main(["--resume", str(run), "--timesteps", "400", *TINY])


def test_training_command_on_another_task(tmp_path, capsys):
    """Another task, and another agent: GRPO, saved and loaded as the others are."""
    run = tmp_path / "run"
    summary = main(
        ["--task", "sorting", "--agent", "grpo", "--timesteps", "100", "--run-dir", str(run), *TINY]
    )
    out = capsys.readouterr().out
    assert "task sorting" in out and "positions right" in out and "sort :" in out
    assert set(summary["after"]) >= {"gold", "success_rate", "position_accuracy", "permutation_rate"}
    assert json.loads((run / "config.json").read_text())["task"] == "sorting"
    assert GRPO.load(run / "checkpoint", "TextRLHF-v0").env.unwrapped.task == "sorting"  # saved with the run
    with pytest.raises(SystemExit, match="as it was made"):
        main(["--resume", str(run), "--task", "reviews", *TINY])
    with pytest.raises(SystemExit):
        main(["--task", "nope", "--run-dir", str(tmp_path / "other"), *TINY])


def test_parser_offers_every_agent_setting():
    text = " ".join(build_parser().format_help().split())
    for flag in (
        "--learning-rate",
        "--clip-range",
        "--baseline",
        "--epsilon",
        "--exploration",
        "--kl-target",
    ):
        assert flag in text
    rates = {name: cls.Config().learning_rate for name, cls in agent_classes().items()}
    assert len(set(rates.values())) > 1  # the agents' defaults differ, so the help names each one's
    shown = ", ".join(f"{rate} for {name}" for name, rate in rates.items())
    assert f"Adam step size (default {shown})" in text
    assert "--minibatch-size MINIBATCH_SIZE episodes per gradient step" in text
    assert "[grpo, reinforce]" in text  # the agents a setting applies to


def test_a_setting_of_another_agent_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--epsilon does not apply to ppo"):
        main(["--epsilon", "0.1", "--run-dir", str(tmp_path / "run"), *TINY])
    assert not (tmp_path / "run").exists()


def test_the_before_after_table_shows_a_value_that_rounds_to_zero_as_zero():
    from agents.evaluation import format_summary

    columns = (("kl", "KL (nats)", "{:.2f}"), ("gold", "gold", "{:+.3f}"))
    table = format_summary({"kl": -1e-7, "gold": -0.04}, {"kl": 3.98, "gold": 0.9134}, columns)
    assert table.splitlines()[1].split() == ["KL", "(nats)", "0.00", "3.98"]
    assert table.splitlines()[2].split() == ["gold", "-0.040", "+0.913"]
