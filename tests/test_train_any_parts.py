"""The training command on parts of your own: a policy by path, a reward as ``module:function``, prompts
from a file, settings from a config file, TensorBoard and W&B logging."""

from __future__ import annotations

import json
import sys
import types

import pytest

from agents import PPO
from agents.train import main
from textenv import toy

TINY = ["--num-envs", "8", "--eval-episodes", "8", "--samples", "2", "--save-every", "1", "--quiet"]
REWARDS = """from textenv.toy import lexicon_sentiment


def score(prompts, responses):
    return [lexicon_sentiment(r) for r in responses]
"""


@pytest.fixture
def own_parts(tmp_path, monkeypatch, tokenizer):
    """A policy saved to a folder, a reward function in a module of the working directory (not on the
    Python path, as the installed script sees it) and a prompts file."""
    model = toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5)
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "prompts.txt").write_text("\n".join(toy.PROMPTS) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return tmp_path


def test_own_policy_by_path_and_reward_as_module_function_then_resume(own_parts, capsys):
    parts = [
        "--policy",
        "lm",
        "--reference",
        "lm",
        "--reward-model",
        "my_rewards:score",
        "--prompts",
        "prompts.txt",
    ]
    sizes = ["--max-new-tokens", "6", "--eval-every", "2", "--eval-every-episodes", "8"]
    summary = main([*parts, *sizes, "--timesteps", "150", "--run-dir", "run", *TINY])
    out = capsys.readouterr().out
    assert "your own parts (no gold)" in out and "distinct-2" in out and "| gold" not in out
    run = own_parts / "run"
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "summary.json", "samples.md"):
        assert (run / name).is_file(), name
    assert (run / "checkpoint" / "manifest.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["task"] is None and config["parts"]["reward_model"] == "my_rewards:score"
    assert config["parts"]["policy"] == "lm" and config["parts"]["prompts"] == "prompts.txt"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["charts/iteration"] for r in rows if "eval/rm_score" in r]
    assert evaluated == [i for i in range(1, len(rows) + 1) if i % 2 == 0] and evaluated
    assert {"eval/kl", "eval/length", "eval/distinct_2"} <= set(rows[1]) and "gold/score" not in rows[0]
    assert set(summary["after"]) >= {"rm_score", "kl", "length", "distinct_2"}
    assert summary["before"]["kl"] == pytest.approx(0.0, abs=1e-4)  # the reference is the same LM, by path
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "eval/rm_score" in header and len((run / "metrics.csv").read_text().splitlines()) == len(rows) + 1
    # the reward model is the user's function: the score of a response is its lexicon sentiment
    samples = json.loads((run / "samples_before.json").read_text())
    assert samples[0]["score"] == pytest.approx(toy.lexicon_sentiment(samples[0]["response"]))

    # another process resumes it: the module is imported again from the run's recorded parts
    sys.modules.pop("my_rewards", None)
    main(["--resume", "run", "--timesteps", "300", "--device", "cpu", *TINY])  # --device: the run, moved
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed[: len(rows)] == rows and resumed[-1]["charts/timesteps"] >= 300
    assert [r["charts/iteration"] for r in resumed] == list(range(1, len(resumed) + 1))
    agent = PPO.load(run / "checkpoint", "TextRLHF-v0")  # the saved env settings rebuild the same parts
    env = agent.env.unwrapped
    assert env.task is None and env.engine.config.prompts == toy.PROMPTS
    assert env.reward_model.score(["the food was"], [" good"])[0] == pytest.approx(
        toy.lexicon_sentiment(" good")
    )
    with pytest.raises(SystemExit, match="drop --reward-model"):
        main(["--resume", "run", "--reward-model", "my_rewards:score", *TINY])


def test_a_llama_shaped_policy_by_path_trains_with_lora(own_parts, tokenizer, capsys):
    """Not only GPT-2: a Llama-shaped LM saved to a folder loads by path, gets LoRA adapters (its reference
    the adapters switched off), trains and is saved; its checkpoint loads with trained adapters."""
    pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(own_parts / "llama")
    tokenizer.save_pretrained(own_parts / "llama")
    parts = ["--policy", "llama", "--reward-model", "my_rewards:score", "--prompts", "prompts.txt"]
    main([*parts, "--lora", "4", "--max-new-tokens", "6", "--timesteps", "100", "--run-dir", "run", *TINY])
    assert "your own parts (no gold)" in capsys.readouterr().out
    agent = PPO.load(own_parts / "run" / "checkpoint", "TextRLHF-v0")
    policy = agent.model.policy
    assert type(policy.get_base_model()).__name__ == "LlamaForCausalLM"
    adapters = [p for name, p in policy.named_parameters() if "lora_B" in name]
    assert adapters and any(bool(p.abs().sum() > 0) for p in adapters)  # B starts at zero: these trained


def test_own_parts_need_a_reward_and_prompts_or_a_task(own_parts):
    with pytest.raises(SystemExit, match="needs --reward-model and --prompts"):
        main(["--policy", "lm", "--run-dir", "run", *TINY])
    with pytest.raises(SystemExit):  # a module that is not there is named
        main(["--policy", "lm", "--reward-model", "nowhere:score", "--prompts", "prompts.txt", *TINY])


def test_reward_given_as_a_file_and_held_out_prompts(own_parts, capsys):
    main(
        [
            *("--policy", "lm", "--reward-model", "my_rewards.py:score", "--prompts", "prompts.txt"),
            *("--holdout", "0.4", "--max-new-tokens", "4", "--timesteps", "60", "--run-dir", "run"),
            *TINY,
        ]
    )
    config = json.loads((own_parts / "run" / "config.json").read_text())
    held = config["eval_prompts"]
    assert len(held) == 2 and set(held) <= set(toy.PROMPTS)
    agent = PPO.load(own_parts / "run" / "checkpoint", "TextRLHF-v0")
    trained_on = agent.env.unwrapped.engine.config.prompts
    assert not set(held) & set(trained_on) and len(trained_on) == 3
    rows = json.loads((own_parts / "run" / "samples_before.json").read_text())
    assert {r["prompt"] for r in rows} <= set(held)
    assert "on held-out prompts" in capsys.readouterr().out


def test_config_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "agent: reinforce\nlearning_rate: 3.0e-4\ntimesteps: 100\neval-every: 0\nkl_coef: 0.05\n"
        "baseline: moving_average\n"
    )
    main(["--config", str(config), "--learning-rate", "1e-3", "--run-dir", str(tmp_path / "run"), *TINY])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["agent"] == "reinforce" and saved["timesteps"] == 100
    assert saved["config"]["learning_rate"] == 1e-3  # the flag wins over the file
    assert (
        saved["config"]["baseline"] == "moving_average" and saved["config"]["env_kwargs"]["kl_coef"] == 0.05
    )
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert rows and not any("eval/" in r for r in rows)  # eval-every 0: no evaluation during training

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rat": 1e-3}))
    with pytest.raises(SystemExit, match="no setting learning_rat"):
        main(["--config", str(bad), "--run-dir", str(tmp_path / "bad"), *TINY])
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="mapping"):
        main(["--config", str(bad), "--run-dir", str(tmp_path / "bad"), *TINY])


@pytest.mark.slow  # importing tensorboard's reader costs about 5 s
def test_report_to_tensorboard_writes_events_tensorboard_reads(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    main(
        [
            *("--report-to", "tensorboard", "--eval-every", "1", "--eval-every-episodes", "8"),
            *("--timesteps", "150", "--run-dir", str(run), *TINY),
        ]
    )
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    documented = {
        "objective/scores",
        "objective/kl",
        "objective/kl_coef",
        "objective/rlhf_reward",
        "policy/approxkl",
        "loss/total",
        "charts/timesteps",
        "gold/score",
        "gold/success_rate",
        "eval/rm_score",
        "eval/gold",
        "eval/success_rate",
        "eval/kl",
    }
    assert documented <= tags, documented - tags
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = events.Scalars("objective/scores")
    assert [e.step for e in scores] == [int(r["charts/timesteps"]) for r in rows]  # step: tokens so far
    assert [e.value for e in scores] == pytest.approx([r["objective/scores"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("eval/gold")] == pytest.approx([r["eval/gold"] for r in rows])


@pytest.mark.slow  # wandb's offline run costs about 3 s
def test_report_to_wandb_logs_the_same_names(tmp_path, monkeypatch):
    logged: list[tuple[dict, int]] = []
    runs: list[dict] = []

    class FakeRun:
        def log(self, metrics, step):
            logged.append((metrics, step))

        def finish(self):
            runs[-1]["finished"] = True

    def init(**kwargs):
        runs.append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = tmp_path / "run"
    main(
        [
            "--report-to",
            "wandb",
            "--wandb-project",
            "mine",
            "--timesteps",
            "100",
            "--run-dir",
            str(run),
            *TINY,
        ]
    )
    assert runs[0]["project"] == "mine" and runs[0]["resume"] == "allow" and runs[0]["finished"]
    assert runs[0]["id"] == json.loads((run / "config.json").read_text())["run_id"][-64:]
    assert runs[0]["config"]["agent"] == "ppo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [step for _, step in logged] == [int(r["charts/timesteps"]) for r in rows]
    assert {"objective/scores", "objective/kl", "gold/score"} <= set(logged[0][0])
    with pytest.raises(SystemExit, match="unknown tensorbored"):
        main(["--report-to", "tensorbored", "--run-dir", str(tmp_path / "other"), *TINY])


def test_stop_when_a_metric_passes_a_threshold(tmp_path, capsys):
    run = tmp_path / "run"
    main(["--stop-when", "charts/iteration>=2", "--timesteps", "100000", "--run-dir", str(run), *TINY])
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and "stopped at iteration 2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="METRIC>=VALUE"):
        main(["--stop-when", "eval/gold", "--run-dir", str(tmp_path / "other"), *TINY])
