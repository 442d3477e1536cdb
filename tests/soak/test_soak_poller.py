"""The soak's poller (rtaa_cli/soak/poller.py) against a small HTTP server on 127.0.0.1 standing in for
the emulator's /stats and /control/faults and the target's /metrics: the faults a run posts, baselines
taken before the run, counts as increases over it, one poll per period of the run's own clock, RSS
samples, and the console's lines."""
from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from rich.console import Console

from rtaa_cli.soak.poller import (
    AFTER_END_GRACE_S, NO_PROVIDER_HINT, POLL_EVERY_S, LiveView, Poller, live_table, progress_line, provider_counts,
)
from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.scenario import Faults, Scenario
from rtaa_cli.soak.stats import CallRecord, ProviderCounts, SoakStats
from rtaa_cli.soak.target import Target, apply_faults
from rtaa_cli.watermark import call_hex

T0 = 1_800_000_000.0
PREFIX = "rtaa0badcafe-"


class FakeTarget:
    """Answers GET with whatever ``pages`` holds for the path (404 otherwise) and counts the requests."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, bytes]] = {}
        self.hits: dict[str, int] = {}
        self.posts: list[dict[str, list[str]]] = []  # the query of each POST /control/faults
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                ctype, body = owner.pages.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in owner.pages else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                known = url.path == "/control/faults"
                if known:
                    owner.posts.append(parse_qs(url.query))
                self.send_response(200 if known else 404)
                self.send_header("Content-Length", "2" if known else "0")
                self.end_headers()
                self.wfile.write(b"{}" if known else b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stats(self, doc: dict[str, Any]) -> None:
        self.pages["/stats"] = ("application/json", orjson.dumps(doc))

    def metrics(self, text: str) -> None:
        self.pages["/metrics"] = ("text/plain; version=0.0.4", text.encode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake() -> Iterator[FakeTarget]:
    f = FakeTarget()
    yield f
    f.close()


def _conn(call: str, opened: float, closed: float | None, audio_bytes: int = 3200, code: int = 1000) -> dict[str, Any]:
    return {"interaction": call, "opened_at": opened, "closed_at": closed, "close_code": code, "close_reason": "",
            "audio_bytes": audio_bytes, "audio_seconds": audio_bytes / 16000, "keepalives": 1}


def _metrics(duplicates: int, closes_1011: int, opened: int, rss: float | None = None) -> str:
    text = ("# TYPE rtaa_provider_duplicate_connections counter\n"
            f"rtaa_provider_duplicate_connections_total {duplicates}.0\n"
            "# TYPE rtaa_provider_closes counter\n"
            f'rtaa_provider_closes_total{{code="1011"}} {closes_1011}.0\n'
            "# TYPE rtaa_provider_connections_opened counter\n"
            f"rtaa_provider_connections_opened_total {opened}.0\n")
    if rss is not None:
        text += f"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss:.6e}\n"
    return text


def test_the_scenarios_faults_go_to_an_emulator_the_run_owns_and_only_to_one(fake: FakeTarget) -> None:
    faults = Faults(handshake_delay_ms=(150.0, 300.0), result_latency_ms=80.0, close_1011_after_s=None,
                    drop_after_s=4.5)
    owned = Target(url="ws://127.0.0.1:1/v1/ingest", provider_control_url=fake.base + "/control/faults",
                   exclusive_provider=True)
    assert apply_faults(owned, faults) == []
    assert fake.posts == [{"handshake_delay_ms": ["150,300"], "result_latency_ms": ["80"], "result_jitter_ms": ["100"],
                           "drop_after_s": ["4.5"], "close_1011_after_s": ["none"], "refuse_429_fraction": ["0"]}]
    shared = Target(url=owned.url, provider_control_url=owned.provider_control_url, exclusive_provider=False)
    assert apply_faults(shared, faults) == [
        "provider faults/timing not applied: no emulator control endpoint owned by this run"]
    assert len(fake.posts) == 1
    wrong = Target(url=owned.url, provider_control_url=fake.base + "/control/nothing", exclusive_provider=True)
    with pytest.raises(RtaaError, match="cannot apply faults at .*/control/nothing: HTTP Error 404"):
        apply_faults(wrong, faults)


def test_emulator_counts_are_this_runs_calls_and_totals_are_increases_over_the_baseline(fake: FakeTarget) -> None:
    fake.stats({"connections": [], "interactions": {}, "totals": {"rejected_429": 4, "records_evicted": 0}})
    target = Target(url="ws://127.0.0.1:1/v1/ingest", provider_stats_url=fake.base + "/stats")
    poller = Poller(target, PREFIX, watermark=False)  # the baseline: 4 refusals before the run
    assert poller.base_totals == {"rejected_429": 4, "records_evicted": 0} and poller.metrics_before is None
    stats = SoakStats(t0=T0, duration_s=30.0)
    poller.start(stats, T0, (5.0, 30.0))
    assert stats.provider_hint == "" and stats.memory is None  # /stats is evidence; no /metrics to sample
    fake.stats({"interactions": {PREFIX + "1": {"connections": 2, "duplicates": 1}, "other-1": {"duplicates": 7}},
                "connections": [_conn(PREFIX + "1", T0 + 1, T0 + 9), _conn(PREFIX + "1", T0 + 2, None, 1600),
                                _conn("other-1", T0 + 1, T0 + 2, 99_999)],
                "totals": {"rejected_429": 6, "records_evicted": 0}})
    poller.tick(T0 + 1)
    p = poller.provider
    assert p is not None and p.source == "emulator"
    assert (p.connections, p.duplicates, p.audio_bytes, p.rejected_429, p.open_now) == (2, 1, 4800, 2, 1)
    # the emulator dropped per-connection records during the run: its byte total would be partial
    fake.stats({"connections": [_conn(PREFIX + "1", T0 + 1, T0 + 9)], "interactions": {},
                "totals": {"rejected_429": 6, "records_evicted": 3}})
    poller.tick(T0 + 1 + POLL_EVERY_S)
    assert poller.provider is not None and poller.provider.audio_bytes is None


def test_polls_once_per_period_of_the_run_clock_and_samples_rss(fake: FakeTarget) -> None:
    fake.stats({"connections": [], "interactions": {}, "totals": {}})
    fake.metrics(_metrics(0, 0, 0, rss=120e6))
    target = Target(url="ws://127.0.0.1:1/v1/ingest", provider_stats_url=fake.base + "/stats",
                    metrics_url=fake.base + "/metrics")
    poller = Poller(target, PREFIX, watermark=True)
    assert fake.hits == {"/stats": 1}  # /metrics is no baseline when the emulator's /stats is there
    stats = SoakStats(t0=T0, duration_s=30.0)
    poller.start(stats, T0, (5.0, 30.0))
    assert stats.memory is not None and stats.memory.source == fake.base + "/metrics"
    assert stats.memory_window_s == (5.0, 30.0)
    for now in (T0, T0 + 0.5, T0 + POLL_EVERY_S - 0.01):
        poller.tick(now)
    assert fake.hits == {"/stats": 2, "/metrics": 1}
    fake.metrics(_metrics(0, 0, 0, rss=150e6))
    poller.tick(T0 + POLL_EVERY_S)
    assert fake.hits == {"/stats": 3, "/metrics": 2}
    assert [mb for _, mb in stats.memory.samples] == [120.0, 150.0]


def test_without_emulator_the_counts_are_the_targets_metrics_increase(fake: FakeTarget) -> None:
    fake.metrics(_metrics(duplicates=1, closes_1011=2, opened=10))
    target = Target(url="ws://127.0.0.1:1/v1/ingest", metrics_url=fake.base + "/metrics")
    poller = Poller(target, PREFIX, watermark=True)  # scraped before any call
    stats = SoakStats(t0=T0, duration_s=30.0)
    poller.start(stats, T0, (5.0, 30.0))
    assert stats.provider_hint == NO_PROVIDER_HINT
    fake.metrics(_metrics(duplicates=1, closes_1011=5, opened=14))
    poller.tick(T0)
    p = poller.provider
    assert p is not None and p.source == "target metrics"
    assert (p.duplicates, p.closes_1011, p.connections, p.audio_bytes) == (0, 3, 4, None)


def test_no_evidence_is_none_never_zero(fake: FakeTarget) -> None:
    bare = Target(url="ws://127.0.0.1:1/v1/ingest")
    poller = Poller(bare, PREFIX, watermark=True)
    poller.start(SoakStats(t0=T0), T0, (0.0, 0.0))
    poller.tick(T0)
    assert poller.provider is None and poller.final() is None
    # an emulator that answers no JSON, and one that is gone: not measured either
    fake.pages["/stats"] = ("text/html", b"<html>")
    assert provider_counts(Target(url=bare.url, provider_stats_url=fake.base + "/stats"), PREFIX) is None
    gone = FakeTarget()
    url = gone.base + "/stats"
    gone.close()
    assert provider_counts(Target(url=bare.url, provider_stats_url=url), PREFIX) is None


def test_final_counts_connections_opened_after_the_last_call_and_attribute_by_watermark(fake: FakeTarget) -> None:
    target = Target(url="ws://127.0.0.1:1/v1/ingest", provider_stats_url=fake.base + "/stats")
    stats = SoakStats(t0=T0, duration_s=30.0)
    stats.call_started()
    stats.add(CallRecord(PREFIX + "1", started_at=T0 + 1, ended_at=T0 + 10, closes=[1000], frames_sent=250,
                         audio_bytes_sent=80_000, audio_ms_sent=9000.0))
    wm = {"call": call_hex(PREFIX + "1"), "runs": [[0, 9]], "repeated": 0}  # the emulator's decoded mark
    untagged = dict(_conn("", T0 + 2, T0 + 9), watermark=wm)
    late = _conn(PREFIX + "1", T0 + 10 + AFTER_END_GRACE_S + 0.5, None)  # a reconnect loop after the end
    fake.stats({"connections": [untagged, late], "interactions": {}, "totals": {}})
    by_mark = {}
    for watermark in (True, False):
        poller = Poller(target, PREFIX, watermark=watermark)
        poller.start(stats, T0, (0.0, 30.0))
        p = poller.final()
        assert p is not None and p.opened_after == 1
        by_mark[watermark] = (p.attributed_by_watermark, p.unattributed)
    # the run's calls' marks are looked for only when the callers marked their audio
    assert by_mark == {True: (1, 0), False: (0, 1)}


# ----------------------------------------------------------------------------------- console

def _running_stats() -> tuple[SoakStats, ProviderCounts]:
    stats = SoakStats(t0=T0, duration_s=30.0)
    for _ in range(3):
        stats.call_started()
    stats.add(CallRecord(PREFIX + "1", started_at=T0 + 1, ended_at=T0 + 9, closes=[1000], final=[(T0 + 5, 240.0)],
                         finals=1, first_partial=[(T0 + 4, 130.0)]))
    stats.add(CallRecord(PREFIX + "2", started_at=T0 + 1, ended_at=T0 + 4, closes=[1011], failure="closed 1011"))
    return stats, ProviderCounts(duplicates=1, closes_1011=2)


def test_progress_line_and_live_table_show_the_same_figures() -> None:
    stats, provider = _running_stats()
    assert progress_line(stats, provider, 12.4, 30.0) == (
        "[   12/30 s] calls active 1 completed 1 failed 1 dup 1 1011 3 final p95 240 ms")
    assert progress_line(stats, None, 12.4, 30.0).endswith("dup - 1011 1 final p95 240 ms")  # no provider yet
    out = Console(file=io.StringIO(), width=200, record=True)
    out.print(live_table(stats, provider, 7, Scenario(name="steady", duration_s=30.0), 40.0))
    text = out.export_text()
    assert "rtaa soak steady:   40 s, draining" in text
    assert text.split("\n")[-2].split() == ["7", "1", "1", "1", "3", "1", "240/240", "130", "-"]


def test_without_a_terminal_a_progress_line_every_period_and_none_when_quiet() -> None:
    stats, provider = _running_stats()
    sc = Scenario(name="steady", duration_s=30.0)
    for quiet, expected in ((False, 2), (True, 0)):
        console = Console(file=io.StringIO(), force_terminal=False, record=True, width=200)
        with LiveView(console, stats, sc, T0, live=True, quiet=quiet, progress_every_s=5.0) as view:
            for now in (T0 + 1, T0 + 4.9, T0 + 5.0, T0 + 9.9, T0 + 10.0):
                view.show(now, provider, 3)
        lines = console.export_text().splitlines()
        assert len(lines) == expected and all(line.startswith("[") for line in lines)
        if lines:
            assert lines[0].startswith("[    5/30 s]") and lines[1].startswith("[   10/30 s]")
