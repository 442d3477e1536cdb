"""``rtaa soak --web-port``: a live page of the run (as Locust's web UI) and the JSON it is drawn from.

    GET /             rtaa_cli/web/soak.html (static; all drawing is in the page)
    GET /api/stats    the snapshot below, as JSON
    GET /api/events   server-sent events: ``stats`` once a second, then one ``done`` with the report

The figures come from the same SoakStats the report and ``--metrics-port`` are made of (one definition of
every figure); once the run is over the snapshot carries the report itself, so the page's final numbers
are the JSON report's. A thread-based http.server: under Locust's gevent patching its threads are
greenlets and its sockets cooperative (as prometheus_client's start_http_server in live_metrics.py)."""
from __future__ import annotations

import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import orjson

from rtaa_cli import web
from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.stats import ProviderCounts, SoakStats

PUSH_EVERY_S = 1.0
DELIVER_DONE_S = 3.0  # at the end, how long the run waits for open pages to receive the report
REPORT_KEYS = ("verdict", "invalid_reasons", "calls", "duplicates", "closes_1011", "latency_ms", "thresholds",
               "failures", "timeline", "pacing", "delivery_rate", "run")


def _pct(h: Any) -> dict[str, float | None]:
    return {"count": h.n, "p50": h.percentile(50), "p95": h.percentile(95), "max": h.max}


def snapshot(stats: SoakStats, provider: ProviderCounts | None, users: int, *, scenario: str, target: str,
             duration_s: float, now: float) -> dict[str, Any]:
    """The live figures (sans-I/O): what the terminal's live table shows, plus the time series and the
    failing calls so far."""
    s = stats
    return {
        "state": "running", "scenario": scenario, "target": target, "elapsed_s": round(now - s.timeline.t0, 1),
        "duration_s": duration_s, "users": users,
        "calls": {"active": s.calls_started - s.records, "started": max(s.calls_started, s.records),
                  "completed": s.completed, "failed": s.failed, "handshake_failed": s.handshake_failed},
        # None: not measured (no provider evidence yet), never shown as 0
        "duplicates": None if provider is None else provider.duplicates,
        "closes_1011": {"caller": s.caller_1011, "provider": None if provider is None else provider.closes_1011},
        "latency_ms": {"final": _pct(s.final), "first_partial": _pct(s.first_partial)},
        "timeline": s.timeline.series(),
        "failures": {"samples": s.failure_samples, "by_reason": s.failure_reasons},
        "report": None,
    }


class LiveWeb:
    """The page's state: a snapshot function while the run goes, the report once it is done."""

    def __init__(self, live: Callable[[], dict[str, Any]]) -> None:
        self.live = live
        self.report: dict[str, Any] | None = None
        self._done = threading.Event()
        self._cv = threading.Condition()
        self._streams = 0  # open /api/events that have not sent ``done`` yet
        self._server: ThreadingHTTPServer | None = None

    def current(self) -> dict[str, Any]:
        if self.report is None:
            return self.live()
        doc = self.report
        calls = doc.get("calls") or {}
        return {**self.live(), "state": "done", "report": {k: doc.get(k) for k in REPORT_KEYS},
                "calls": {**calls, "active": 0}}

    def finish(self, doc: dict[str, Any]) -> None:
        """The run is over: publish the report, and give open pages a bounded moment to receive it."""
        with self._cv:
            self.report = doc
            self._done.set()
            self._cv.wait_for(lambda: self._streams == 0, timeout=DELIVER_DONE_S)

    # -- HTTP ------------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> str:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # the soak's console is for the run, not for requests
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, web.page("soak"), web.HTML, web.PAGE_HEADERS)
                elif path == "/api/stats":
                    self._send(HTTPStatus.OK, orjson.dumps(owner.current()), "application/json",
                               {"Cache-Control": "no-store"})
                elif path == "/api/events":
                    owner._events(self)
                else:
                    self._send(HTTPStatus.NOT_FOUND, b'{"error":"not found"}', "application/json")

            def _send(self, status: HTTPStatus, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="rtaa-soak-web", daemon=True).start()
        self._server = server
        return f"http://{host}:{server.server_port}/"

    def _events(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(HTTPStatus.OK)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-store")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        with self._cv:
            self._streams += 1
        try:
            while True:
                done = self._done.is_set()
                doc = self.current()
                h.wfile.write(b"event: " + (b"done" if done else b"stats") + b"\ndata: " + orjson.dumps(doc) + b"\n\n")
                h.wfile.flush()
                if done:
                    return
                self._done.wait(PUSH_EVERY_S)
        except OSError:  # the page went away: nothing to deliver to
            return
        finally:
            with self._cv:
                self._streams -= 1
                self._cv.notify_all()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start(stats: SoakStats, provider: Callable[[], ProviderCounts | None], users: Callable[[], int], *,
          scenario: str, target: str, duration_s: float, host: str, port: int) -> tuple[str, LiveWeb]:
    """Serve the live page (port 0: any free one); returns its URL and the LiveWeb to finish and stop."""
    live = LiveWeb(lambda: snapshot(stats, provider(), users(), scenario=scenario, target=target,
                                    duration_s=duration_s, now=time.time()))
    try:
        return live.serve(host, port), live
    except OSError as exc:
        raise RtaaError(f"--web-port {port}: cannot listen on {host}: {exc.strerror or exc}") from None
