"""`rtaa serve`'s live page at `/`, in a real headless chromium: a real `rtaa serve` process, a real
`rtaa replay` call, and the words the replay received from the feed must appear on the page (partials
shown, then replaced by the finals). Auth: the page needs a reader, as the firehose does."""
from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from helpers.browser import browser, png_size, screenshot  # noqa: F401 - fixture
from rtaa_cli.pipeline.config import IngestConfig
from helpers.access import PEM, bearer, http_status, token
from helpers.pipeline import pipeline, run
from helpers.paths import CALL_WAV

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
CALL = str(CALL_WAV)
BOUND_MS = 60_000  # safety net for the browser's waits; a hang fails with the step's name


class Serve:
    """A real `rtaa serve --port 0 --json` process (or another rtaa command's) and the URLs it printed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 command: tuple[str, ...] = ("serve", "--port", "0", "--json", "--log-level", "warning")) -> None:
        self.proc = subprocess.Popen([*RTAA, *command, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "NO_PROXY": "*", **(env or {})})
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        if not line or not line[0]:
            self.stop()
            raise AssertionError(f"rtaa {command[0]} did not start: {self.proc.stderr.read().decode()[-2000:]}")
        self.info: dict[str, Any] = orjson.loads(line[0])
        self.http = self.info.get("health", "").rsplit("/", 1)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture()
def serve_open() -> Iterator[Serve]:
    s = Serve()
    yield s
    s.stop()


def replay(ingest: str, feed: str, call_sid: str, out: Path, speed: str = "3") -> subprocess.Popen:
    return subprocess.Popen([*RTAA, "replay", CALL, "--url", ingest, "--transcripts", feed, "--call-sid", call_sid,
                             "--speed", speed, "--json", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_PROXY": "*"})


def finished(proc: subprocess.Popen, what: str) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {err.decode()[-2000:]}"


def page_words(page: Any, call_sid: str) -> list[str]:
    return page.eval_on_selector_all(f'[data-call="{call_sid}"] .final .t', "els => els.map(e => e.textContent)")


def test_the_live_page_shows_a_replayed_calls_words_partials_replaced_by_finals(browser, serve_open, tmp_path) -> None:  # noqa: F811
    s = serve_open
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(BOUND_MS)
    resp = page.goto(s.http + "/")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
    assert page.title() == "rtaa serve: live calls"
    page.wait_for_function("document.getElementById('feed').textContent === 'connected'")
    page.wait_for_function("document.getElementById('health').textContent === 'ok'")

    out = tmp_path / "replay.json"
    call = replay(s.info["ingest"], s.info["transcripts"].rsplit("/v1/", 1)[0], "CA-web-1", out)
    # a partial shows while the call runs ...
    page.wait_for_function("(() => { const p = document.querySelector('[data-call=\"CA-web-1\"] .partial');"
                           " return p && p.textContent.trim().length > 0; })()")
    partial_seen = page.text_content('[data-call="CA-web-1"] .partial')
    page.wait_for_function("document.querySelectorAll('[data-call=\"CA-web-1\"] .final').length >= 2")
    for path, width in zip(screenshot(page, "serve-page", tmp_path), (1400, 800)):  # the call live
        assert png_size(path)[0] == width
    finished(call, "rtaa replay")
    page.wait_for_function("document.querySelector('[data-call=\"CA-web-1\"] [data-role=state]')"
                           ".textContent.startsWith('ended')")
    rec = orjson.loads(out.read_bytes())
    finals = [t["text"] for t in rec["transcripts"] if t["is_final"] and t["text"].strip()]
    partials = [t for t in rec["transcripts"] if not t["is_final"]]
    assert len(finals) >= 3 and partials, rec["transcripts"]
    assert partial_seen in [t["text"] for t in partials]
    # ... and the page ends with exactly the finals the caller's own feed received, in order, no partial left
    assert page_words(page, "CA-web-1") == finals
    assert page.text_content('[data-call="CA-web-1"] .partial') == ""
    card = page.query_selector('[data-call="CA-web-1"]')
    assert int(card.get_attribute("data-partials")) == len(partials)
    assert int(card.get_attribute("data-finals")) >= len(finals)
    assert card.get_attribute("data-reconnects") == "0"
    assert page.text_content('[data-call="CA-web-1"] [data-role=state]') == "ended: stopped"
    page.wait_for_function("Number(document.getElementById('m-opened').textContent) >= 1")
    assert "provider connection #1" in page.text_content('[data-call="CA-web-1"] [data-role=meta]')
    page.close()


def test_provider_reconnects_show_on_the_call_and_in_the_tiles(browser, tmp_path) -> None:  # noqa: F811
    """A provider that closes every stream 1011 after 2 s (rtaa fake-deepgram): the pipeline reconnects
    mid-call and the page shows the call's connection number and reconnects, as the results carry them."""
    emu = Serve("--close-1011-after-s", "2", command=("fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live"))
    s = Serve("--provider", "deepgram", "--deepgram-url", emu.info["url"], env={"DEEPGRAM_API_KEY": "web-test"})
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(BOUND_MS)
        page.goto(s.http + "/")
        page.wait_for_function("document.getElementById('feed').textContent === 'connected'")
        out = tmp_path / "replay.json"
        finished(replay(s.info["ingest"], s.info["transcripts"].rsplit("/v1/", 1)[0], "CA-web-rc", out), "rtaa replay")
        page.wait_for_function("document.querySelector('[data-call=\"CA-web-rc\"] [data-role=state]')"
                               "?.textContent.startsWith('ended')")
        rec = orjson.loads(out.read_bytes())
        last = max(t["provider_connection"] for t in rec["transcripts"])
        assert last >= 2, "the provider's 1011s caused no reconnect"
        card = page.query_selector('[data-call="CA-web-rc"]')
        assert card.get_attribute("data-reconnects") == str(last - 1)
        assert page_words(page, "CA-web-rc") == [t["text"] for t in rec["transcripts"] if t["is_final"] and t["text"].strip()]
        page.wait_for_function(f"Number(document.getElementById('m-reconnects').textContent) >= {last - 1}")
        page.close()
    finally:
        s.stop()
        emu.stop()


def test_with_basic_auth_the_page_and_its_feed_need_the_credentials(browser, tmp_path) -> None:  # noqa: F811
    s = Serve("--auth", "basic", env={"RTAA_BASIC_USER": "ops", "RTAA_BASIC_PASSWORD": "s3cret-web"})
    try:
        assert http_status(s.http + "/", []) == 401
        wrong = base64.b64encode(b"ops:nope").decode()
        assert http_status(s.http + "/", [("Authorization", f"Basic {wrong}")]) == 401
        ctx = browser.new_context(http_credentials={"username": "ops", "password": "s3cret-web"})
        page = ctx.new_page()
        page.set_default_timeout(BOUND_MS)
        assert page.goto(s.http + "/").status == 200
        # the browser reuses the Basic credentials for the firehose handshake (same origin)
        page.wait_for_function("document.getElementById('feed').textContent === 'connected'")
        out = tmp_path / "replay.json"
        host = s.info["ingest"].split("//", 1)[1]
        call = replay(f"ws://ops:s3cret-web@{host}", f"ws://ops:s3cret-web@{host.split('/', 1)[0]}", "CA-web-auth",
                      out, speed="5")
        finished(call, "rtaa replay")
        page.wait_for_function("document.querySelector('[data-call=\"CA-web-auth\"] [data-role=state]')"
                               "?.textContent.startsWith('ended')")
        rec = orjson.loads(out.read_bytes())
        assert page_words(page, "CA-web-auth") == [t["text"] for t in rec["transcripts"]
                                                   if t["is_final"] and t["text"].strip()]
        ctx.close()
    finally:
        s.stop()


def test_with_jwt_the_page_needs_a_reader() -> None:
    async def main() -> dict[str, int]:
        async with pipeline(ingest=IngestConfig(auth="jwt", jwt_public_key=PEM)) as (server, _):
            url = server.http_url + "/"
            return {who: await asyncio.to_thread(http_status, url, hdr) for who, hdr in
                    (("anon", []), ("alice", bearer(token("alice"))), ("reader", bearer(token("ops", "reader"))))}

    # its own thread: Playwright's sync API keeps an event loop on this one (module-scoped browser)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run, main(), 30).result() == {"anon": 401, "alice": 403, "reader": 200}

