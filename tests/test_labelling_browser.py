"""The labelling page in a real headless Chromium (slow tier): clicks and keys reach the preference file.

Needs Playwright's Python package (``pip install playwright``; its own browser download is not used) and a
Chromium on the machine (Debian's ``chromium``, or ``CHROMIUM=/path/to/chrome``); skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from textenv.labelling import Item, LabellingSession, make_server

pytestmark = pytest.mark.slow

ITEMS = [
    Item(0, "the food was", (" good .", " bad .")),
    Item(1, "the staff", (" was rude .", " was friendly .")),
    Item(2, "the room was", (" clean .", " dirty .", " very clean .")),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium on this machine (install Debian's chromium, or set CHROMIUM)")
    return path


def test_clicks_and_keys_in_a_real_browser_append_and_undo(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    prefs = tmp_path / "prefs.jsonl"
    server = make_server(LabellingSession(ITEMS, prefs, "ann"), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    def count() -> int:
        return sum(1 for line in prefs.read_text().splitlines() if line.strip())

    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("text=ann: 0 of 3 done")
            assert page.inner_text("#prompt") == "the food was"

            page.click("button.response >> nth=0")  # a click on a response: exactly one valid line
            page.wait_for_selector("text=ann: 1 of 3 done")
            assert count() == 1
            first = json.loads(prefs.read_text().splitlines()[0])
            assert (first["chosen"], first["rejected"], first["labeller"]) == (" good .", " bad .", "ann")

            page.keyboard.press("2")  # the keyboard: response 2 is the best
            page.wait_for_selector("text=ann: 2 of 3 done")
            assert (
                count() == 2 and json.loads(prefs.read_text().splitlines()[1])["chosen"] == " was friendly ."
            )

            page.keyboard.press("u")  # undo removes the last line
            page.wait_for_selector("text=ann: 1 of 3 done")
            assert count() == 1 and page.inner_text("#prompt") == "the staff"

            page.click("#tie")
            page.wait_for_selector("text=ann: 2 of 3 done")
            page.keyboard.press("r")  # rank mode: 3, 1, 2 from best to worst
            for key in ("3", "1", "2"):
                page.keyboard.press(key)
            page.wait_for_selector("text=All done")
            ranked = [json.loads(line) for line in prefs.read_text().splitlines()][-3:]
            assert [(p["chosen"], p["rejected"]) for p in ranked] == [
                (" very clean .", " clean ."),
                (" very clean .", " dirty ."),
                (" clean .", " dirty ."),
            ]
            page.reload()  # a reload resumes from the file
            page.wait_for_selector("text=ann: 3 of 3 done")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
