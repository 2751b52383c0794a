"""A labelling page: a person compares a policy's responses and the answers become a preference file.

One command samples comparison items (a prompt and K ≥ 2 responses of a policy: an agent's checkpoint, a
model folder, or the task's own policy) and serves a local web page where a labeller picks the best
response, ranks them, marks a tie, skips, or undoes the last answer, by mouse or keyboard, with a count of
what is done::

    textenv-label --out prefs-ann.jsonl --labeller ann                      # the task's policy, 50 items
    textenv-label --out prefs-bob.jsonl --labeller bob --items prefs-ann.items.jsonl   # the same items
    textenv-label --report prefs-ann.jsonl prefs-bob.jsonl                  # agreement on shared items

Every answer is appended to the preference file in the reward trainer's format at once, flushed and
fsynced before the page hears back: closing the page or killing the server loses nothing, and starting
again resumes at the first item this labeller has not answered. A pick of the best of K responses gives
K - 1 pairs, a ranking all K(K-1)/2, with a shared ``group`` key (``labeller/item``); every line also
carries ``labeller``, ``item``, ``answer`` (this labeller's answer number), ``kind`` and ``time``. A tie
is written as pairs marked ``"tie": true`` and a skip as one line ``"skip": true``; the trainers pass over
both (:func:`textenv.reward_training.load_preference_pairs`), and they keep the agreement report and the
resume exact. Undo truncates the file back to where the labeller's last answer began.

The page is served by Python's own ``http.server``, not gradio (the field's usual choice): it needs no
dependency, starts at once, and its API is four plain JSON routes that a script (or a test) can drive as
the page does:

* ``GET /api/state``: the current item (``id``, ``prompt``, ``responses``), ``done``, ``total``,
  ``skipped``, ``labeller``;
* ``POST /api/answer`` ``{"item": id, "best": i}`` or ``{"item": id, "ranking": [i, j, ...]}`` (best
  first) or ``{"item": id, "tie": true}`` or ``{"item": id, "skip": true}``: returns the next state;
* ``POST /api/undo``: removes the last answer, returns the state (its item is current again).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import threading
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ANSWER_KINDS = ("best", "rank", "tie", "skip")


class LabellingError(ValueError):
    """An answer the session cannot take (wrong item, a choice out of range); the page shows the message."""


@dataclass(frozen=True)
class Item:
    """A prompt and the responses to compare (distinct texts)."""

    id: int
    prompt: str
    responses: tuple[str, ...]


def load_items(path: str | os.PathLike[str]) -> list[Item]:
    """Read an items file (JSON Lines of ``{"id", "prompt", "responses"}``)."""
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        responses = record.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or len(set(responses)) != len(responses):
            raise ValueError(f"{path}, line {number}: an item needs two or more distinct responses")
        items.append(Item(int(record["id"]), str(record["prompt"]), tuple(str(r) for r in responses)))
    if len({item.id for item in items}) != len(items):
        raise ValueError(f"{path}: item ids repeat")
    return items


def save_items(items: Sequence[Item], path: str | os.PathLike[str]) -> None:
    """Write items as JSON Lines, atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for item in items:
            record = {"id": item.id, "prompt": item.prompt, "responses": list(item.responses)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def sample_items(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n: int,
    responses: int = 2,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    attempts: int = 4,
) -> list[Item]:
    """``n`` items: prompts drawn with ``seed``, each with ``responses`` distinct samples of ``policy``
    (prompts whose samples keep coinciding after ``attempts`` draws are replaced by other prompts)."""
    import numpy as np
    import torch

    from textenv.models import model_device
    from textenv.sampling import sample_responses

    if responses < 2:
        raise ValueError(f"an item compares two or more responses, got responses={responses}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator(model_device(policy)).manual_seed(seed)
    items: list[Item] = []
    for _ in range(attempts * 4):
        want = n - len(items)
        if want <= 0:
            break
        draws = [prompts[int(i)] for i in rng.integers(len(prompts), size=want)]
        found: list[list[str]] = [[] for _ in draws]
        for _ in range(attempts):
            open_ = [i for i, got in enumerate(found) if len(got) < responses]
            if not open_:
                break
            texts = sample_responses(
                policy,
                tokenizer,
                [draws[i] for i in open_ for _ in range(responses)],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generator=generator,
            )
            for k, i in enumerate(open_):
                for text in texts[k * responses : (k + 1) * responses]:
                    if text not in found[i] and len(found[i]) < responses:
                        found[i].append(text)
        for prompt, got in zip(draws, found, strict=True):
            if len(got) == responses:
                items.append(Item(len(items), prompt, tuple(got)))
    if len(items) < n:
        raise RuntimeError(f"only {len(items)} of {n} items have {responses} distinct responses")
    return items


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class LabellingSession:
    """The state of one labeller on one items list, kept in the preference file itself.

    Thread-safe: the server's handler threads share one session.
    """

    def __init__(self, items: Sequence[Item], path: str | os.PathLike[str], labeller: str):
        if not labeller or not labeller.strip():
            raise ValueError("a labeller name is needed (it is recorded with every answer)")
        self.items = list(items)
        self.by_id = {item.id: item for item in self.items}
        self.path = Path(path)
        self.labeller = labeller.strip()
        self.lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._repair()

    # ------------------------------------------------------------------ the file
    def _repair(self) -> None:
        """Cut a last line that a kill left half-written (no newline): its answer was never confirmed."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def _answers(self) -> list[tuple[int, int, dict[str, Any]]]:
        """This labeller's answers in the file: ``(answer number, byte offset of its first line, first
        line)``, in file order."""
        found: dict[int, tuple[int, int, dict[str, Any]]] = {}
        offset = 0
        with open(self.path, "rb") as handle:
            for raw in handle:
                if raw.strip():
                    record = json.loads(raw)
                    if record.get("labeller") == self.labeller and "answer" in record:
                        found.setdefault(int(record["answer"]), (int(record["answer"]), offset, record))
                offset += len(raw)
        return sorted(found.values(), key=lambda a: a[1])

    def _append(self, lines: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    # ------------------------------------------------------------------ what the page asks
    def state(self) -> dict[str, Any]:
        with self.lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        answers = self._answers()
        done = {int(a[2]["item"]) for a in answers}
        skipped = sum(1 for a in answers if a[2].get("skip"))
        current = next((item for item in self.items if item.id not in done), None)
        return {
            "labeller": self.labeller,
            "done": len(done & set(self.by_id)),
            "skipped": skipped,
            "total": len(self.items),
            "can_undo": bool(answers),
            "item": None
            if current is None
            else {"id": current.id, "prompt": current.prompt, "responses": list(current.responses)},
        }

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Record one answer (see the module docstring for its forms) and return the next state.

        Raises:
            LabellingError: the item is not the current one, or the choice is malformed.
        """
        with self.lock:
            state = self._state()
            current = state["item"]
            if current is None:
                raise LabellingError("every item is answered")
            if request.get("item") != current["id"]:
                raise LabellingError(
                    f"item {request.get('item')!r} is not the current item ({current['id']}): reload the page"
                )
            item = self.by_id[current["id"]]
            k = len(item.responses)
            answers = self._answers()
            number = max((a[0] for a in answers), default=-1) + 1
            common = {"item": item.id, "labeller": self.labeller, "answer": number, "time": _now()}
            group = f"{self.labeller}/{item.id}"
            if request.get("skip") is True:
                lines = [{**common, "kind": "skip", "skip": True}]
            elif request.get("tie") is True:
                lines = [
                    {"prompt": item.prompt, "chosen": item.responses[i], "rejected": item.responses[j],
                     "group": group, "tie": True, "kind": "tie", **common}
                    for i, j in itertools.combinations(range(k), 2)
                ]  # fmt: skip
            elif "best" in request:
                best = request["best"]
                if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < k:
                    raise LabellingError(f"best must be a response index 0..{k - 1}, got {best!r}")
                lines = [
                    {"prompt": item.prompt, "chosen": item.responses[best], "rejected": item.responses[j],
                     "group": group, "kind": "best", **common}
                    for j in range(k) if j != best
                ]  # fmt: skip
            elif "ranking" in request:
                ranking = request["ranking"]
                if (
                    not isinstance(ranking, list)
                    or sorted(ranking) != list(range(k))
                    or any(isinstance(r, bool) for r in ranking)
                ):
                    raise LabellingError(
                        f"ranking must order every response index 0..{k - 1} once, best first"
                    )
                lines = [
                    {"prompt": item.prompt, "chosen": item.responses[a], "rejected": item.responses[b],
                     "group": group, "kind": "rank", **common}
                    for a, b in itertools.combinations(ranking, 2)
                ]  # fmt: skip
            else:
                raise LabellingError("an answer needs 'best', 'ranking', 'tie': true or 'skip': true")
            self._append(lines)
            return self._state()

    def undo(self) -> dict[str, Any]:
        """Remove this labeller's last answer (all of its lines) from the file; returns the state."""
        with self.lock:
            answers = self._answers()
            if not answers:
                raise LabellingError("nothing to undo")
            _, offset, _ = answers[-1]
            data = self.path.read_bytes()[offset:]
            others = [
                raw
                for raw in data.splitlines(keepends=True)
                if raw.strip() and json.loads(raw).get("labeller") != self.labeller
            ]  # lines another labeller appended after it (a shared file) are kept
            with open(self.path, "r+b") as handle:
                handle.truncate(offset)
                handle.seek(offset)
                handle.write(b"".join(others))
                handle.flush()
                os.fsync(handle.fileno())
            return self._state()


# ----------------------------------------------------------------------------- agreement
def relations(path: str | os.PathLike[str]) -> dict[tuple[str, str], dict[tuple[str, str, str], int]]:
    """Per (labeller, item key), each judged response pair as ``(prompt, a, b)`` with ``a < b`` → +1 (a
    preferred), -1 (b preferred) or 0 (tie). The item key is the prompt and its responses, so that files
    sampled apart but holding the same item still match."""
    out: dict[tuple[str, str], dict[tuple[str, str, str], int]] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        record = json.loads(raw)
        if record.get("skip") or "chosen" not in record:
            continue
        labeller = str(record.get("labeller", Path(path).stem))
        a, b = sorted((record["chosen"], record["rejected"]))
        value = 0 if record.get("tie") else (1 if record["chosen"] == a else -1)
        out.setdefault((labeller, str(record.get("item"))), {})[(record["prompt"], a, b)] = value
    return out


def agreement(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """For every two labellers: the response pairs both judged, the share judged alike (better, worse or
    tied) and Cohen's kappa over those three outcomes."""
    judged: dict[str, dict[tuple[str, str, str], int]] = {}
    for path in paths:
        for (labeller, _), pairs in relations(path).items():
            judged.setdefault(labeller, {}).update(pairs)
    rows = []
    for first, second in itertools.combinations(sorted(judged), 2):
        shared = sorted(set(judged[first]) & set(judged[second]))
        if not shared:
            rows.append({"labellers": (first, second), "pairs": 0, "agreement": None, "kappa": None})
            continue
        x = [judged[first][key] for key in shared]
        y = [judged[second][key] for key in shared]
        observed = sum(a == b for a, b in zip(x, y, strict=True)) / len(shared)
        expected = sum((x.count(c) / len(x)) * (y.count(c) / len(y)) for c in (-1, 0, 1))
        kappa = None if expected == 1 else (observed - expected) / (1 - expected)
        items = {key[0] + "\x00" + key[1] + "\x00" + key[2] for key in shared}
        rows.append(
            {
                "labellers": (first, second),
                "pairs": len(shared),
                "distinct": len(items),
                "agreement": observed,
                "kappa": kappa,
            }
        )
    return rows


def format_agreement(rows: list[dict[str, Any]]) -> str:
    lines = ["| labellers | response pairs both judged | agreement | Cohen's kappa |", "|---|---|---|---|"]
    for row in rows:
        agree = "n/a" if row["agreement"] is None else f"{row['agreement']:.1%}"
        kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.2f}"
        lines.append(
            f"| {row['labellers'][0]} & {row['labellers'][1]} | {row['pairs']} | {agree} | {kappa} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the server
class _Handler(BaseHTTPRequestHandler):
    session: LabellingSession

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the page talks a lot
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        elif self.path == "/api/state":
            self._json(HTTPStatus.OK, self.session.state())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if self.path == "/api/answer":
                if not isinstance(body, dict):
                    raise LabellingError("the answer must be a JSON object")
                self._json(HTTPStatus.OK, self.session.answer(body))
            elif self.path == "/api/undo":
                self._json(HTTPStatus.OK, self.session.undo())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
        except (LabellingError, json.JSONDecodeError, ValueError) as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})


def make_server(session: LabellingSession, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``session`` (port 0: a free one; ``server.server_address`` tells which)."""
    handler = type("Handler", (_Handler,), {"session": session})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>textenv labelling</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
header { display: flex; justify-content: space-between; align-items: baseline; }
#prompt { font-size: 1.2rem; background: #f3f3f3; padding: .8rem 1rem; border-radius: 6px; }
.response { display: block; width: 100%; text-align: left; font-size: 1.1rem; margin: .6rem 0;
  padding: .8rem 1rem; border: 2px solid #ccc; border-radius: 6px; background: white; cursor: pointer; }
.response:hover, .response:focus { border-color: #3b6fd8; }
.response .key { display: inline-block; width: 1.6rem; color: #3b6fd8; font-weight: bold; }
.response .rank { float: right; color: #b35; font-weight: bold; }
#controls button { margin-right: .5rem; padding: .4rem .8rem; }
#help { color: #666; font-size: .9rem; }
#error { color: #b00; min-height: 1.2rem; }
</style></head>
<body>
<header><h2 id="title">Which response is best?</h2><div id="count"></div></header>
<div id="prompt"></div>
<div id="responses"></div>
<div id="controls">
  <button id="tie">Tie (t)</button><button id="skip">Skip (s)</button>
  <button id="rank">Rank all (r)</button>
  <button id="undo">Undo (u)</button>
</div>
<p id="error"></p>
<p id="help">Click a response or press its number to pick the best. Rank mode (r): click or press numbers
from best to worst; the ranking is saved with the last one. Every answer is saved at once.</p>
<script>
let state = null, ranking = null;
const $ = (id) => document.getElementById(id);
async function call(path, body) {
  const response = await fetch(path, body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const payload = await response.json();
  if (!response.ok) { $("error").textContent = payload.error; return; }
  $("error").textContent = ""; state = payload; ranking = null; render();
}
function render() {
  $("count").textContent = `${state.labeller}: ${state.done} of ${state.total} done` +
    (state.skipped ? ` (${state.skipped} skipped)` : "");
  $("undo").disabled = !state.can_undo;
  const box = $("responses"); box.innerHTML = "";
  $("rank").textContent = ranking === null ? "Rank all (r)" : "Cancel ranking (r)";
  $("title").textContent = ranking === null ? "Which response is best?" : "Rank them, best first";
  if (state.item === null) { $("prompt").textContent = "All done: thank you."; return; }
  $("prompt").textContent = state.item.prompt;
  state.item.responses.forEach((text, i) => {
    const b = document.createElement("button");
    b.className = "response"; b.dataset.index = i;
    const place = ranking === null ? -1 : ranking.indexOf(i);
    b.innerHTML = `<span class="key">${i + 1}</span><span class="text"></span>` +
      (place >= 0 ? `<span class="rank">#${place + 1}</span>` : "");
    b.querySelector(".text").textContent = text;
    b.onclick = () => choose(i);
    box.appendChild(b);
  });
}
function choose(i) {
  if (state.item === null) return;
  if (ranking === null) { call("/api/answer", {item: state.item.id, best: i}); return; }
  if (!ranking.includes(i)) ranking.push(i);
  if (ranking.length === state.item.responses.length) {
    call("/api/answer", {item: state.item.id, ranking: ranking});
  } else { render(); }
}
$("tie").onclick = () => state.item && call("/api/answer", {item: state.item.id, tie: true});
$("skip").onclick = () => state.item && call("/api/answer", {item: state.item.id, skip: true});
$("undo").onclick = () => call("/api/undo", {});
$("rank").onclick = () => { ranking = ranking === null ? [] : null; render(); };
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || state === null) return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && state.item && n <= state.item.responses.length) choose(n - 1);
  else if (e.key === "t") $("tie").click();
  else if (e.key === "s") $("skip").click();
  else if (e.key === "u" || e.key === "Backspace") $("undo").click();
  else if (e.key === "r") $("rank").click();
});
call("/api/state");
</script></body></html>
"""


# ----------------------------------------------------------------------------- the command
def _load_policy(spec: str | None, task_name: str) -> tuple[Any, Any, list[str], int]:
    """The policy to sample (an agent checkpoint's ``policy/``, a model folder, or the task's), its
    tokenizer, the task's prompts and response length."""
    from textenv import tasks
    from textenv.models import load_causal_lm, load_tokenizer

    task = tasks.load(task_name)
    folder = Path(spec) if spec else task.assets / "policy"
    if (folder / "policy" / "config.json").is_file():  # an agent's checkpoint folder
        folder = folder / "policy"
    tokenizer_source = folder if (folder / "tokenizer_config.json").is_file() else task.assets / "policy"
    max_new = int(task.env_defaults.get("max_new_tokens", 24))
    return load_causal_lm(folder), load_tokenizer(tokenizer_source), task.prompts(), max_new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="textenv-label",
        description="Serve a local page to compare a policy's responses; answers go to a preference file "
        "(the reward trainer's format). With --report: agreement between labellers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", help="the preference file (JSON Lines; appended to, and resumed from)")
    parser.add_argument("--labeller", help="your name, recorded with every answer")
    parser.add_argument(
        "--items", default=None, help="items file (default: OUT with .items.jsonl); sampled if missing"
    )
    parser.add_argument(
        "--policy", default=None, help="an agent checkpoint or a model folder (default: the task's)"
    )
    parser.add_argument("--task", default="reviews", help="whose prompts (and default policy) to use")
    parser.add_argument("--n", type=int, default=50, help="items to sample")
    parser.add_argument("--responses", type=int, default=2, help="responses per item (2 or more)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and samples")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument(
        "--report", nargs="+", metavar="FILE", help="agreement between the labellers of these files"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(format_agreement(agreement(args.report)))
        return
    if not args.out or not args.labeller:
        parser.error("--out and --labeller are needed to label (or --report FILE ... for the agreement)")
    out = Path(args.out)
    items_path = Path(args.items) if args.items else out.with_name(out.stem + ".items.jsonl")
    if not items_path.is_file():
        policy, tokenizer, prompts, max_new = _load_policy(args.policy, args.task)
        print(f"sampling {args.n} items of {args.responses} responses into {items_path} ...")
        items = sample_items(
            policy,
            tokenizer,
            prompts,
            n=args.n,
            responses=args.responses,
            max_new_tokens=max_new,
            temperature=args.temperature,
            seed=args.seed,
        )
        save_items(items, items_path)
    session = LabellingSession(load_items(items_path), out, args.labeller)
    server = make_server(session, args.host, args.port)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    url = f"http://{host}:{port}/"
    state = session.state()
    print(
        f"{state['done']} of {state['total']} items done; labelling page at {url} (Ctrl+C to stop)",
        flush=True,
    )
    if not args.no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        state = session.state()
        print(f"\n{state['done']} of {state['total']} items done, saved in {out}")


if __name__ == "__main__":
    main()
