"""`rtaa soak --web-port`: the live page of a real soak in a real headless chromium. While the run goes it
shows live figures; at the end the page's numbers and verdict must be the JSON report's."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import urllib.request

import orjson

from helpers.browser import browser, png_size, screenshot  # noqa: F401 - fixture
from helpers.soak import readline
from helpers.soak_target import RTAA, SOAK_TIMEOUT_S, SUPPORT
from helpers.soak_target import SCENARIO as TARGET_SCENARIO

SCENARIO = """name = "watched-web"
[load]
users = 2
spawn_rate = 10
duration = "8s"
[call]
audio = ["fixtures/audio/call.wav"]
length = "3s"
pause = ["0.2s", "0.3s"]
wait_final = "5s"
"""
BOUND_MS = 90_000  # safety net for the browser's waits


def start_soak(tmp_path, *extra: str) -> tuple[subprocess.Popen, list[str], threading.Event, list[str]]:
    toml = tmp_path / "watched-web.toml"
    toml.write_text(SCENARIO)
    proc = subprocess.Popen([*RTAA, "soak", str(toml), "--quiet", "--json", str(tmp_path / "run.json"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found, url, lines = threading.Event(), [], []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"soak live page: (http://\S+/)", line)
            if m and not url:
                url.append(m.group(1))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, url, found, lines


def text(page, sel: str) -> str:
    return page.text_content(sel).strip()


def test_the_live_page_shows_the_run_and_ends_with_the_reports_numbers_and_verdict(browser, tmp_path) -> None:  # noqa: F811
    proc, url, found, lines = start_soak(tmp_path, "--web-port", "0")
    try:
        assert found.wait(60), "".join(lines)[-2000:]
        live = orjson.loads(urllib.request.urlopen(url[0] + "api/stats", timeout=5).read())
        assert live["state"] == "running" and live["scenario"] == "watched-web" and live["report"] is None
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(BOUND_MS)
        assert page.goto(url[0]).status == 200
        # live: a call completes and its latency is drawn, before the verdict exists
        page.wait_for_function("Number(document.getElementById('v-completed').textContent) >= 1")
        assert text(page, "#state") in ("running", "draining")
        page.wait_for_function("document.querySelectorAll('#chart circle').length >= 1")  # a latency point
        assert not page.is_visible("#verdict-panel")
        for path, width in zip(screenshot(page, "soak-page-live", tmp_path), (1400, 800)):
            assert png_size(path)[0] == width
        # the end: the verdict arrives on the page before the soak exits
        page.wait_for_function("document.getElementById('state').textContent === 'done'")
        proc.wait(SOAK_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    doc = orjson.loads((tmp_path / "run.json").read_bytes())
    assert text(page, "#verdict") == doc["verdict"].upper()
    assert page.is_visible("#verdict-panel")
    calls, lat = doc["calls"], doc["latency_ms"]
    assert calls["completed"] >= 2
    assert text(page, "#v-completed") == str(calls["completed"])
    assert text(page, "#v-failed") == str(calls["failed"])
    assert text(page, "#v-active") == "0"
    assert text(page, "#v-duplicates") == str(doc["duplicates"])  # the local emulator measured them: 0
    c1011 = doc["closes_1011"]
    assert text(page, "#v-1011") == str(c1011["caller"] + (c1011["provider"] or 0))
    assert text(page, "#v-p50") == str(round(lat["final"]["p50"]))
    assert text(page, "#v-p95") == str(round(lat["final"]["p95"]))
    shown = page.eval_on_selector_all("#thresholds tbody tr", "rows => rows.map(r => r.dataset.threshold)")
    assert shown == [t["name"] for t in doc["thresholds"]] and shown
    row = doc["thresholds"][0]
    assert text(page, f'#thresholds tr[data-threshold="{row["name"]}"] td:nth-child(4)').startswith(row["status"])
    tl = doc["timeline"]
    points = sum(v is not None for v in tl["final_p50"] + tl["final_p95"])
    assert page.eval_on_selector_all("#chart circle", "cs => cs.length") == points > 0
    assert text(page, "#v-users") == str(doc["run"]["users"])
    failing = page.eval_on_selector_all("#failures tbody tr", "rows => rows.map(r => r.dataset.call)")
    assert failing == [s["call_sid"] for s in doc["failures"]["samples"]]
    for path, width in zip(screenshot(page, "soak-page-done", tmp_path), (1400, 800)):
        assert png_size(path)[0] == width
    page.close()


def test_a_web_port_in_use_is_a_usage_error(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        toml = tmp_path / "watched-web.toml"
        toml.write_text(SCENARIO)
        proc = subprocess.Popen([*RTAA, "soak", str(toml), "--quiet", "--web-port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _out, err = proc.communicate(timeout=SOAK_TIMEOUT_S)
    assert proc.returncode == 2, err
    assert f"--web-port {port}: cannot listen on 127.0.0.1" in err and "Traceback" not in err


def test_failing_calls_are_listed_live_and_the_fail_verdict_shown(browser, tmp_path) -> None:  # noqa: F811
    """A target that hangs up every call (tests/helpers/soak.py): the failing calls' table fills while
    the run goes, and at the end it is the report's failure samples, under a FAIL verdict."""
    server = subprocess.Popen([sys.executable, SUPPORT, '{"hangup_after": 40}', "10"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc = None
    try:
        line = readline(server, 30.0)
        assert line, "test target did not start"
        urls = orjson.loads(line)
        toml = tmp_path / "hangup.toml"
        toml.write_text(TARGET_SCENARIO.format(name="hangup", latency=150, jitter=0, users=2, mix="normal = 1"))
        out = tmp_path / "run.json"
        proc = subprocess.Popen([*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--web",
                                 "--target", f"ws://{urls['target']}/v1/ingest",
                                 "--transcripts", f"ws://{urls['target']}/v1/transcripts",
                                 "--provider-stats", f"{urls['emulator_http']}/stats"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url: list[str] = []
        for line in proc.stderr:  # the URL is the run's first line
            m = re.search(r"soak live page: (http://\S+/)", line)
            if m:
                url.append(m.group(1))
                break
        assert url, "no live page URL printed"
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(BOUND_MS)
        page.goto(url[0])
        page.wait_for_function("document.querySelectorAll('#failures tbody tr').length >= 1")
        assert text(page, "#state") in ("running", "draining")
        assert "closed by server mid-call" in text(page, "#failures tbody tr td:nth-child(3)")
        page.wait_for_function("document.getElementById('state').textContent === 'done'")
        proc.communicate(timeout=SOAK_TIMEOUT_S)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stdin.close()
        server.wait(20)
    doc = orjson.loads(out.read_bytes())
    assert doc["verdict"] == "fail" and text(page, "#verdict") == "FAIL"
    assert doc["calls"]["failed"] >= 2 and text(page, "#v-failed") == str(doc["calls"]["failed"])
    rows = page.eval_on_selector_all("#failures tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [[s["call_sid"], s["kind"], s["reason"]] for s in doc["failures"]["samples"]] and rows
    assert not page.is_visible("#no-failures")
    page.close()
