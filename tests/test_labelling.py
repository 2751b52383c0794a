"""The labelling page through its HTTP API: every answer is one durable append in the trainer's format,
undo and resume are exact, a killed server loses nothing, and agreement between labellers is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from textenv import toy
from textenv.labelling import (
    Item,
    LabellingSession,
    agreement,
    load_items,
    main,
    make_server,
    sample_items,
    save_items,
)
from textenv.reward_training import load_preference_pairs

ITEMS = [
    Item(0, "the food was", (" good .", " bad .")),
    Item(1, "the staff", (" was rude .", " was friendly .")),
    Item(2, "the room was", (" clean .", " dirty .", " very clean .")),
    Item(3, "overall it was", (" lovely .", " awful .")),
]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Page:
    """A served session, driven the way the page's script drives it."""

    def __init__(self, session: LabellingSession):
        self.server = make_server(session, port=0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: shutdown() waits for the loop's next poll (half a second by default)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read().decode("utf-8")
            return json.loads(body) if path.startswith("/api") else body

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(
            self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page(tmp_path):
    served = Page(LabellingSession(ITEMS, tmp_path / "prefs.jsonl", "ann"))
    yield served
    served.close()


def test_a_pick_appends_exactly_one_valid_line_and_undo_removes_it(page, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    assert "Which response is best?" in page.get("/")
    state = page.get("/api/state")
    assert state["item"] == {"id": 0, "prompt": "the food was", "responses": [" good .", " bad ."]}
    assert (state["done"], state["total"], state["can_undo"]) == (0, 4, False)

    state = page.post("/api/answer", {"item": 0, "best": 0})
    assert len(lines(prefs)) == 1
    [pair] = load_preference_pairs(prefs)  # the reward trainer reads it as it is
    assert (pair.prompt, pair.chosen, pair.rejected, pair.group) == (
        "the food was",
        " good .",
        " bad .",
        "ann/0",
    )
    assert lines(prefs)[0]["labeller"] == "ann" and lines(prefs)[0]["kind"] == "best"
    assert state["done"] == 1 and state["item"]["id"] == 1

    state = page.post("/api/answer", {"item": 1, "best": 1})
    assert len(lines(prefs)) == 2
    state = page.post("/api/undo", {})
    assert len(lines(prefs)) == 1 and state["item"]["id"] == 1 and state["done"] == 1
    assert lines(prefs)[0]["item"] == 0  # the earlier answer is untouched


def test_rankings_ties_and_skips(page, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    page.post("/api/answer", {"item": 0, "tie": True})
    page.post("/api/answer", {"item": 1, "skip": True})
    state = page.post("/api/answer", {"item": 2, "ranking": [2, 0, 1]})
    assert state["skipped"] == 1 and state["done"] == 3
    ranked = [line for line in lines(prefs) if line["item"] == 2]
    assert {(p["chosen"], p["rejected"]) for p in ranked} == {
        (" very clean .", " clean ."),
        (" very clean .", " dirty ."),
        (" clean .", " dirty ."),
    }
    assert {p["group"] for p in ranked} == {"ann/2"}  # one group: the trainer keeps it whole
    assert len(load_preference_pairs(prefs)) == 3  # the tie and the skip hold no comparison
    state = page.post("/api/undo", {})
    assert state["item"]["id"] == 2 and len(lines(prefs)) == 2  # all three lines of the ranking went
    page.post("/api/answer", {"item": 2, "best": 1})
    state = page.post("/api/answer", {"item": 3, "best": 0})
    assert state["item"] is None and state["done"] == 4


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"item": 1, "best": 0}, "not the current item"),
        ({"item": 0, "best": 2}, "best must be a response index"),
        ({"item": 0, "best": True}, "best must be a response index"),
        ({"item": 0, "ranking": [0, 0]}, "ranking must order every response"),
        ({"item": 0}, "an answer needs"),
    ],
)
def test_refused_answers_write_nothing(page, tmp_path, payload, message):
    with pytest.raises(urllib.error.HTTPError) as error:
        page.post("/api/answer", payload)
    assert error.value.code == 400 and message in json.loads(error.value.read())["error"]
    assert (tmp_path / "prefs.jsonl").read_text() == ""


def test_resume_where_it_stopped_and_a_half_written_line_is_dropped(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    session = LabellingSession(ITEMS, prefs, "ann")
    session.answer({"item": 0, "best": 1})
    session.answer({"item": 1, "best": 0})
    with open(prefs, "a", encoding="utf-8") as handle:  # a kill in the middle of a write
        handle.write('{"prompt": "overall it was", "chos')
    again = LabellingSession(ITEMS, prefs, "ann")
    assert again.state()["item"]["id"] == 2 and again.state()["done"] == 2
    assert len(lines(prefs)) == 2
    other = LabellingSession(ITEMS, prefs, "bob")  # another labeller on the same file starts at the top
    assert other.state()["item"]["id"] == 0
    other.answer({"item": 0, "best": 0})
    again.undo()  # ann's last answer goes; bob's, written after it, stays
    assert [(line["labeller"], line["item"]) for line in lines(prefs)] == [("ann", 0), ("bob", 0)]


def test_killing_the_server_after_n_answers_leaves_exactly_n_lines(tmp_path):
    items, prefs = tmp_path / "items.jsonl", tmp_path / "prefs.jsonl"
    pairs_only = [item for item in ITEMS if len(item.responses) == 2]  # one line an answer
    pairs_only.append(Item(4, "the view", (" was lovely .", " was awful .")))
    save_items(pairs_only, items)
    command = [sys.executable, "-m", "textenv.labelling", "--items", str(items), "--out", str(prefs)]
    command += ["--labeller", "ann", "--port", "0", "--no-browser"]

    def start() -> tuple[subprocess.Popen, Page]:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split("labelling page at ")[1].split()[0].rstrip("/")
        client = Page.__new__(Page)
        client.url = url
        return process, client

    process, client = start()
    try:
        for item, best in ((0, 0), (1, 1), (3, 0)):  # N = 3 answers
            client.post("/api/answer", {"item": item, "best": best})
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert len(lines(prefs)) == 3 and [line["item"] for line in lines(prefs)] == [0, 1, 3]
    assert len(load_preference_pairs(prefs)) == 3
    process, client = start()
    try:
        state = client.get("/api/state")
        assert state["done"] == 3 and state["item"]["id"] == 4 and state["total"] == 4
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


def test_items_sampled_from_a_policy_are_distinct_and_reproducible(tokenizer, tmp_path):
    policy = toy.toy_causal_lm(tokenizer, seed=1, initializer_range=0.5)
    items = sample_items(policy, tokenizer, toy.PROMPTS, n=6, responses=3, max_new_tokens=5, seed=0)
    assert len(items) == 6 and all(len(set(item.responses)) == 3 for item in items)
    assert all(item.prompt in toy.PROMPTS for item in items)
    assert sample_items(policy, tokenizer, toy.PROMPTS, n=6, responses=3, max_new_tokens=5, seed=0) == items
    save_items(items, tmp_path / "items.jsonl")
    assert load_items(tmp_path / "items.jsonl") == items


def test_agreement_between_labellers_on_shared_items(tmp_path, capsys):
    # ann and bob answer the same 4 items; they differ on item 1 only; carl answers none of them
    answers = {"ann": [0, 1, 0, 0], "bob": [0, 0, 0, 0]}
    for name, picks in answers.items():
        session = LabellingSession(ITEMS, tmp_path / f"{name}.jsonl", name)
        for item, best in zip(ITEMS, picks, strict=True):
            session.answer({"item": item.id, "best": best})
    LabellingSession([Item(9, "the view", (" a", " b"))], tmp_path / "carl.jsonl", "carl").answer(
        {"item": 9, "tie": True}
    )
    rows = {
        row["labellers"]: row for row in agreement([tmp_path / f"{n}.jsonl" for n in ("ann", "bob", "carl")])
    }
    both = rows[("ann", "bob")]
    assert both["pairs"] == 5  # 1 + 1 + 2 (item 2's best against the other two) + 1
    assert both["agreement"] == pytest.approx(4 / 5)
    # Cohen's kappa by hand: +1 when the alphabetically first response of a pair won, -1 when the other
    # did; pairs: food (bad/good), staff (friendly/rude), room (clean/dirty, clean/very clean), overall
    x = [-1, +1, +1, +1, -1]  # ann
    y = [-1, -1, +1, +1, -1]  # bob
    po = 4 / 5
    pe = sum((x.count(c) / 5) * (y.count(c) / 5) for c in (-1, 0, 1))
    assert both["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert rows[("ann", "carl")]["pairs"] == 0 and rows[("ann", "carl")]["agreement"] is None
    main(["--report", str(tmp_path / "ann.jsonl"), str(tmp_path / "bob.jsonl")])
    assert "| ann & bob | 5 | 80.0% |" in capsys.readouterr().out


def test_the_command_needs_a_file_and_a_name(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "p.jsonl")])
    with pytest.raises(ValueError, match="labeller name"):
        LabellingSession(ITEMS, tmp_path / "p.jsonl", " ")


def test_the_policy_to_sample_is_a_checkpoint_a_model_folder_or_the_tasks(make_agent_env, tmp_path):
    import torch

    from agents import PPO
    from textenv import tasks
    from textenv.labelling import _load_policy

    agent = PPO(make_agent_env(), seed=0)
    agent.save(tmp_path / "ckpt")
    for where in (tmp_path / "ckpt", tmp_path / "ckpt" / "policy"):  # an agent's folder, or its policy's
        policy, tokenizer, prompts, _ = _load_policy(str(where), "reviews")
        for a, b in zip(policy.state_dict().values(), agent.model.policy.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        assert len(tokenizer) == len(agent.env.unwrapped.tokenizer)
        assert prompts == tasks.load("reviews").prompts()
    policy, tokenizer, _, max_new = _load_policy(None, "reviews")  # the task's own
    assert policy.config.n_embd == 128 and max_new == tasks.load("reviews").env_defaults["max_new_tokens"]
