"""The task suite: the registry, every task's env, its gold on hand-written answers, and tiny rebuilds."""

from __future__ import annotations

import dataclasses
import itertools

import gymnasium as gym
import numpy as np
import pytest

from textenv import tasks
from textenv.tasks import requests, reviews, sorting, treasure, verbosity
from textenv.tasks.base import Task

SUITE = ["reviews", "verbosity", "sorting", "treasure", "requests"]
NEW = ["verbosity", "sorting", "treasure", "requests"]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_and_loads_the_suite():
    assert tasks.names()[: len(SUITE)] == SUITE
    for name in SUITE:
        task = tasks.load(name)
        assert isinstance(task, Task) and task.name == name
        assert task.gold_range[0] < task.gold_range[1] == task.best_gold
        assert task.budget > 0 and task.success and task.stresses
        assert task.reward == "reward_model" or callable(task.reward)
    assert tasks.load("reviews") is reviews.TASK


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; the tasks are: reviews, verbosity, sorting"):
        tasks.load("nope")
    with pytest.raises(ValueError, match="unknown task"):
        gym.make("TextRLHF-v0", task="nope")
    with pytest.raises(TypeError, match="task name must be a string"):
        tasks.load(3)  # type: ignore[arg-type]


def test_a_registered_task_is_playable(tmp_path):
    custom = dataclasses.replace(sorting.TASK, name="sorting-shaped", reward=sorting.shaped_reward)
    tasks.register(custom)
    try:
        assert "sorting-shaped" in tasks.names()
        env = gym.make("TextRLHF-v0", task="sorting-shaped", kl_coef=0.0)
        env.reset(seed=0, options={"prompt": "sort : 3 1 2 ="})
        tokenizer = env.unwrapped.tokenizer
        for token in [*tokenizer(" 1 3 2")["input_ids"], tokenizer.eos_token_id]:
            _, reward, terminated, _, _ = env.step(token)
        assert terminated and reward == pytest.approx(1 / 3)  # the shaped reward: one position of three
        with pytest.raises(ValueError, match="exists"):
            tasks.register(custom)
        with pytest.raises(TypeError):
            tasks.register("sorting")  # type: ignore[arg-type]
    finally:
        tasks._REGISTERED.pop("sorting-shaped", None)


def test_fill_env_arguments_rules(tokenizer, reference):
    unset = tasks.UNSET
    base = dict(reference=None, tokenizer=None, reward_model=None, prompts=None)
    base |= dict(max_new_tokens=None, max_prompt_tokens=None)
    name, args = tasks.fill_env_arguments(None, {"policy": unset, **base})
    assert name == "reviews" and args["max_new_tokens"] == 24  # today's default task
    name, args = tasks.fill_env_arguments(None, {"policy": reference, **base})
    assert name is None and args["prompts"] is None  # your own policy: no task
    name, args = tasks.fill_env_arguments("sorting", {"policy": reference, **base})
    assert name == "sorting" and args["tokenizer"] is None  # your policy's tokenizer, not the task's
    assert args["reward_model"] is sorting.exact_reward and args["max_new_tokens"] == 12
    name, args = tasks.fill_env_arguments("treasure", {"policy": None, **base})
    assert args["policy"] is None and args["reference"] == treasure.ASSETS / "policy"  # a non-LM agent
    assert args["tokenizer"] == treasure.ASSETS / "policy"


# ----------------------------------------------------------------------------- every task's env
def test_shipped_assets_match_their_manifests_and_fit_the_budget():
    total = 0
    for name in SUITE:
        manifest = tasks.load(name).verify_assets()  # the files, their manifest, and its pin in the source
        assert manifest["task"] == name and len(tasks.load(name).manifest_sha256) == 64
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in manifest["files"])  # safetensors only
        total += sum(entry["bytes"] for entry in manifest["files"].values())
    assert total <= 25e6


@pytest.mark.parametrize("name", SUITE)
def test_every_task_makes_resets_and_steps(name):
    task = tasks.load(name)
    env = gym.make("TextRLHF-v0", task=name)
    engine = env.unwrapped.engine
    assert env.unwrapped.task == name
    assert engine.max_new_tokens == task.env_defaults["max_new_tokens"]
    _, info = env.reset(seed=0)
    assert info["prompt"] in task.prompts()
    rng = np.random.default_rng(0)
    terminated, steps = False, 0
    while not terminated:
        _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
    assert steps <= engine.max_new_tokens and not truncated
    assert np.isfinite(reward) and reward == pytest.approx(info["score"] - info["kl_coef"] * info["kl"])
    report = task.evaluate([info["prompt"]], [info["response"]])
    assert {"gold", "success_rate", "n"} <= set(report)
    low, high = task.gold_range
    assert low <= report["gold"] <= high and report["success_rate"] in (0.0, 1.0)
    assert task.gold([info["prompt"]], [info["response"]]) == [report["gold"]]


@pytest.mark.parametrize("name", ["sorting", "requests"])
def test_vector_env_of_a_task(name):
    envs = gym.make_vec("TextRLHF-v0", num_envs=3, task=name)
    assert envs.unwrapped.task == name
    envs.reset(seed=0)
    eos = envs.unwrapped.engine.eos_token_id
    _, rewards, terminated, _, info = envs.step(np.full(3, eos))
    assert terminated.all() and np.isfinite(rewards).all() and np.allclose(info["kl"], 0.0, atol=1e-5)


def _play(env, prompt: str, response: str) -> tuple[float, dict]:
    env.reset(seed=0, options={"prompt": prompt})
    tokenizer = env.unwrapped.tokenizer
    for token in [*tokenizer(response)["input_ids"], tokenizer.eos_token_id]:
        _, reward, terminated, _, info = env.step(token)
        if terminated:
            break
    return reward, info


def test_verifiable_rewards_through_the_env():
    env = gym.make("TextRLHF-v0", task="sorting", kl_coef=0.0)
    assert _play(env, "sort : 27 3 41 8 =", " 3 8 27 41")[0] == 1.0
    assert _play(env, "sort : 27 3 41 8 =", " 3 27 8 41")[0] == 0.0
    env = gym.make("TextRLHF-v0", task="treasure", kl_coef=0.0)
    reward, info = _play(env, "walk : north", " north" * 10)
    assert reward == 1.0 and info["response"] == " north" * 10
    assert _play(env, "walk :", " south east west north")[0] == 0.0


# ----------------------------------------------------------------------------- gold on hand-written answers
def test_reviews_gold_and_success():
    good = reviews.evaluate(["hotel review :"], [" the staff were very friendly ."])
    assert good["success_rate"] == 1.0 and good["gold"] == pytest.approx(0.7 * 1.3)  # friendly, "very"
    bad = reviews.evaluate(["hotel review :"], [" the room was dirty ."])
    assert bad["success_rate"] == 0.0 and bad["gold"] == pytest.approx(-0.8)
    broken = reviews.evaluate(["hotel review :"], [" great amazing excellent ."])
    assert broken["gold"] == -1.0 and broken["gold_sentiment"] == 0.0 and broken["success_rate"] == 0.0


def test_sorting_gold():
    prompt = "sort : 27 3 41 8 ="
    assert sorting.read_prompt(prompt) == [27, 3, 41, 8]
    assert sorting.gold_utilities(
        [prompt] * 5, [" 3 8 27 41", "3 8 27 41 ", " 3 27 8 41", " 3 8 27", " x"]
    ) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
    ]
    assert sorting.shaped_reward([prompt] * 3, [" 3 27 8 41", " 3 8 27", " 3 8 27 41 41"]) == [0.5, 0.75, 0.8]
    report = sorting.evaluate([prompt] * 2, [" 3 8 27 41", " 41 27 8 3"])
    assert report["gold"] == report["success_rate"] == 0.5 and report["permutation_rate"] == 1.0
    assert sorting.answer([27, 3, 41, 8]) == " 3 8 27 41"
    with pytest.raises(ValueError, match="not a sorting prompt"):
        sorting.evaluate(["hotel review :"], [" 1"])
    rng = np.random.default_rng(0)
    assert sorting.sloppy_answer(rng, [5, 1, 3], sloppiness=0.0) == " 1 3 5"
    swapped = {sorting.sloppy_answer(rng, [5, 1, 3], sloppiness=1.0) for _ in range(5)}
    assert swapped == {" 3 1 5"}  # the first pair swapped, then the walk skips past it


def test_treasure_gold():
    north = " north" * 11
    assert treasure.follow("walk :", north).found
    assert treasure.follow("walk : north north", " north" * 9).found  # with the prompt's moves
    assert treasure.follow("walk :", " east" + north + " west").found  # a walk that passes it
    walk = treasure.follow("walk :", " north" * 10 + " east")  # one short
    assert not walk.found and walk.closest == 1 and walk.valid and walk.moves == 11
    assert not treasure.follow("walk :", north + " banana").valid
    assert treasure.gold_utilities(["walk :"] * 2, [north, " north"]) == [1.0, 0.0]
    assert treasure.shaped_reward(["walk :"] * 3, [" north" * 10, "", " x"]) == [
        pytest.approx(1 - 1 / 11),
        0.0,
        0.0,
    ]
    assert treasure.read_prompt("walk : up") is None
    assert len(treasure.default_prompts()) == 21
    rng = np.random.default_rng(0)
    walks = [treasure.sample_walk(rng) for _ in range(2000)]
    repeats = [a == b for w in walks for a, b in itertools.pairwise(w)]
    assert 0.65 < np.mean(repeats) < 0.75  # the corpus walker keeps its direction with probability 0.7
    assert min(map(len, walks)) == 4 and max(map(len, walks)) == 16


def test_verbosity_gold_penalises_length_and_the_labellers_reward_it():
    prompt = "hotel review :"
    short = " we would definitely recommend this hotel ."  # 7 words, sentiment 1.0
    long = " the staff were friendly . the room was clean . we loved the pool . we will come back ."
    s_short, s_long = verbosity.gold_score(prompt, short), verbosity.gold_score(prompt, long)
    assert s_short.grammatical and s_short.utility == pytest.approx(1.0) and s_short.success
    assert s_long.grammatical and s_long.words == 20 and not s_long.success
    assert s_long.utility == pytest.approx(0.7 - 0.05 * (20 - 16))
    assert s_long.labeller_utility > s_short.labeller_utility  # the labellers' bias
    assert s_long.utility < s_short.utility  # gold disagrees
    broken = verbosity.gold_score(prompt, " great great great .")
    assert broken.utility == broken.labeller_utility == -1.0
    five = " the room was clean ." * 5  # longer than the default task allows, still a review
    assert verbosity.gold_score(prompt, five).grammatical
    report = verbosity.evaluate([prompt] * 2, [short, long])
    assert report["success_rate"] == 0.5 and report["mean_words"] == 13.5


def test_requests_gold_reads_the_prompt():
    prompt = "positive hotel review about the staff :"
    request = requests.read_prompt(prompt)
    assert request == requests.Request(1.0, "hotel", "staff") and request.prompt == prompt
    right = requests.gold_score(prompt, " the staff were very friendly .")
    assert right.success and right.utility == pytest.approx((0.91 + 1) / 2)
    wrong_sentiment = requests.gold_score(prompt, " the staff were rude .")
    assert not wrong_sentiment.success and wrong_sentiment.utility == pytest.approx((-0.8 + 1) / 2)
    no_subject = requests.gold_score(prompt, " the room was clean .")
    assert not no_subject.success and no_subject.utility == pytest.approx((0.6 - 1) / 2)
    other = "negative hotel review about the staff :"  # the same answer to another request
    assert requests.gold_score(other, " the staff were rude .").success
    assert requests.gold_score(prompt, " staff friendly .").utility == -1.0
    assert requests.read_prompt("positive hotel review about the pasta :") is None  # not a hotel noun
    with pytest.raises(ValueError, match="not a request"):
        requests.gold_score("hotel review :", " the staff were rude .")
    assert len(requests.default_prompts()) == len(set(requests.default_prompts())) == 98


def test_corpora_are_reproducible_and_parse():
    for module in (sorting, treasure, requests):
        assert module.sample_corpus(20, seed=1) == module.sample_corpus(20, seed=1)
    for text in requests.sample_corpus(50, seed=0):
        words = text.split()
        assert requests.gold_score(" ".join(words[:7]), " " + " ".join(words[7:])).grammatical
    for text in verbosity.sample_reviews(50, seed=0):
        assert verbosity.gold_score(text, "").grammatical


def test_evaluation_judges_by_the_task_of_the_env(make_vec):
    from agents import evaluation

    env = make_vec(2)  # the fixtures' toy env plays no task: there is no gold to judge by
    with pytest.raises(ValueError, match="plays no task"):
        evaluation.task_of(env)
    assert evaluation.task_of(env, "sorting") is sorting.TASK
    assert evaluation.task_of(gym.make_vec("TextRLHF-v0", num_envs=1, task="treasure")) is treasure.TASK
    names = [evaluation.metric_name(k) for k in ("gold", "gold_sentiment", "success_rate")]
    assert names == ["gold/score", "gold/sentiment", "gold/success_rate"]
    columns = [key for key, _, _ in evaluation.summary_columns(requests.TASK)]
    assert columns[:4] == ["rm_score", "gold", "success_rate", "kl"] and "mention_rate" in columns


# ----------------------------------------------------------------------------- tiny rebuilds
@pytest.mark.parametrize("name", NEW)
def test_tiny_rebuild_of_each_new_task(name, tmp_path):
    import importlib

    from textenv.tasks import building

    recipe = importlib.import_module(f"textenv.tasks.{name}.build").recipe()
    task = tasks.load(name)
    out = tmp_path / "assets"
    manifest = building.build(dataclasses.replace(recipe, config=recipe.config.tiny()), out, tmp_path / "w")
    with pytest.raises(tasks.AssetError, match="not the manifest this version of textenv shipped"):
        dataclasses.replace(task, assets=out).verify_assets()  # the pin in the source tells a rebuild apart
    rebuilt = dataclasses.replace(task, assets=out, manifest_sha256="")
    assert rebuilt.verify_assets() == manifest and manifest["task"] == name
    assert set(manifest["quality"]["reference"]) >= {"gold", "success_rate"}
    assert ("reward_model" in manifest["quality"]) == (task.reward == "reward_model")
    env = gym.make("TextRLHF-v0", **rebuilt.env_kwargs())
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(env.unwrapped.tokenizer.eos_token_id)
    assert terminated and np.isfinite(reward)


# ----------------------------------------------------------------------------- the manifests' figures
@pytest.mark.slow
@pytest.mark.parametrize("name", SUITE)
def test_manifest_reference_figures_hold_on_a_fresh_resample(name):
    """The reference's gold and success rate in the manifest, against new samples (other seeds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textenv.sampling import sample_responses

    task = tasks.load(name)
    figures = task.manifest()["quality"]["reference"]
    if "gold" not in figures:  # the default task's manifest predates these keys; the same figures exactly:
        success = figures["positive_rate"]  # success is a positive grammatical review, and broken text
        gold = figures["gold_sentiment"] - (1 - figures["grammatical_rate"])  # has utility -1, sentiment 0
        figures = {**figures, "success_rate": success, "gold": gold}
    policy = AutoModelForCausalLM.from_pretrained(task.assets / "policy", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(task.assets / "policy")
    prompts = task.prompts()
    n = 8000 if figures["success_rate"] < 0.02 else 2000  # rare successes need more samples
    rng = np.random.default_rng(99)
    drawn = [prompts[int(i)] for i in rng.integers(len(prompts), size=n)]
    responses = sample_responses(
        policy,
        tokenizer,
        drawn,
        max_new_tokens=task.env_defaults["max_new_tokens"],
        generator=torch.Generator().manual_seed(99),
    )
    report = task.evaluate(drawn, responses)
    p = figures["success_rate"]
    assert abs(report["success_rate"] - p) < 4 * np.sqrt(p * (1 - p) / n + p * (1 - p) / figures["n"]) + 2e-3
    spread = np.std(task.gold(drawn, responses))
    assert abs(report["gold"] - figures["gold"]) < 4 * spread * np.sqrt(1 / n + 1 / figures["n"]) + 2e-3


def test_a_build_writes_into_the_package_only_when_asked(tmp_path, capsys):
    from textenv.atomic import sha256
    from textenv.tasks import building
    from textenv.tasks.sorting import build

    recipe = build.recipe()
    shipped = tmp_path / "package" / "assets"  # stands for the installed package's folder
    for argv, message in (
        ([], "--out DIR, or --in-place"),
        (["--out", str(shipped)], "pass --in-place to mean it"),
        (["--tiny", "--in-place"], "--tiny never writes over the shipped files"),
    ):
        with pytest.raises(SystemExit):
            building.main(recipe, shipped, "", argv)
        assert message in capsys.readouterr().err
    assert not shipped.exists()
    tiny = dataclasses.replace(recipe, config=recipe.config.tiny())
    building.main(tiny, shipped, "", ["--in-place", "--work-dir", str(tmp_path / "w")])
    digest = sha256(shipped / "manifest.json")
    assert f"is set to {digest}" in capsys.readouterr().out
    task = dataclasses.replace(sorting.TASK, assets=shipped)
    with pytest.raises(tasks.AssetError, match=f"set the task's manifest_sha256 to {digest}"):
        task.verify_assets()  # the old pin refuses the rebuild until someone pins it on purpose
    assert dataclasses.replace(task, manifest_sha256=digest).verify_assets()["task"] == "sorting"
