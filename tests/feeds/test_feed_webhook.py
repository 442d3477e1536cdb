"""Webhook transcript feeds (rtaa_cli/feeds/webhook.py): rtaa listens, the target POSTs its results.
The routing core, then replay and soak against the third-party pipeline of tests/thirdparty/target.py
POSTing every result to rtaa (``--webhook``), counted against the target's own ``/published``."""
from __future__ import annotations

import socket
import subprocess

import pytest

from rtaa_cli.feeds.webhook import Hub
from helpers.thirdparty import RTAA, replay_counted, soak, start, stop
from helpers.paths import CALL_WAV

CALL = CALL_WAV
MAP = "text=text,is_final=type==final,seq=seq"


def test_the_hub_routes_a_post_to_its_call_or_to_every_call() -> None:
    got: list[tuple] = []
    per_call = Hub("/hook/{call_sid}")
    per_call.subscribe("CA1", lambda m, w, o: got.append(("CA1", m, o)))
    unsub = per_call.subscribe("CA2", lambda m, w, o: got.append(("CA2", m, o)))
    assert per_call.call_of("/hook/CA1") == "CA1" and per_call.call_of("/hook/") is False
    assert per_call.call_of("/other/CA1") is False
    assert per_call.deliver("CA1", b'[{"t": 1}, {"t": 2}]', 0.0) and per_call.deliver("CA2", b'{"t": 3}', 0.0)
    assert got == [("CA1", {"t": 1}, "CA1"), ("CA1", {"t": 2}, "CA1"), ("CA2", {"t": 3}, "CA2")]
    unsub()
    assert per_call.deliver("CA2", b'{"t": 4}', 0.0) and per_call.unrouted == 1  # nobody listens for CA2 now
    assert not per_call.deliver("CA1", b"not json", 0.0)
    shared = Hub("/hook")
    seen: list = []
    shared.subscribe("A", lambda m, w, o: seen.append(("A", o)))
    shared.subscribe("B", lambda m, w, o: seen.append(("B", o)))
    assert shared.call_of("/hook") is None and shared.call_of("/hook/x") is False
    assert shared.deliver(None, b'{"call": "A"}', 0.0) and seen == [("A", None), ("B", None)]  # recorders filter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def target():
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        urls = start(procs, "--webhook", f"http://127.0.0.1:{port}/hook/{{call_sid}}")
        yield {**urls, "webhook": f"webhook://127.0.0.1:{port}/hook/{{call_sid}}"}
    finally:
        stop(procs)


def test_replay_takes_a_foreign_pipelines_posted_results(target, tmp_path) -> None:
    replay_counted(target, target["webhook"], MAP, "CA-hook-replay", tmp_path)


def test_soak_takes_a_foreign_pipelines_posted_results(target, tmp_path) -> None:
    r, doc, mine = soak(target, target["webhook"], MAP, tmp_path)
    assert doc["calls"]["failed"] == 0, (doc["calls"], doc["failures"], r.stderr[-2000:])
    assert doc["feed"]["messages"] == sum(c["events"] for c in mine.values()) > 0 and doc["feed"]["unrecognised"] == 0
    assert doc["delivery_rate"] == 1.0
    assert doc["latency_ms"]["final"]["count"] == sum(c["finals"] for c in mine.values())


def test_a_webhook_url_without_a_port_is_a_usage_error(tmp_path) -> None:
    r = subprocess.run([*RTAA, "replay", str(CALL), "--transcripts", "webhook://127.0.0.1/hook", "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "webhook://HOST:PORT/PATH" in r.stderr and "Traceback" not in r.stderr
