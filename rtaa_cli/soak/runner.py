"""Runs a soak: Locust as a library (``Environment`` + ``LocalRunner``, or a ``MasterRunner`` with
``--processes N`` local workers / workers on other hosts), a rich live table, then the summary,
verdict and reports.

Importing this module imports Locust (gevent monkey-patching): ``rtaa soak`` imports it lazily.
"""
from __future__ import annotations

from rtaa_cli.soak import patched  # noqa: F401  (first: Locust's gevent monkey-patching)

import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import urlencode, urlsplit

import gevent
import gevent.event
import locust.runners
import orjson
from locust.env import Environment
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rtaa_cli import robustmark
from rtaa_cli.errors import RtaaError
from rtaa_cli.verdict import EXIT_CODES
from rtaa_cli.soak import locustfile
from rtaa_cli.soak.audioset import call_frames
from rtaa_cli.soak.csvexport import CallCsv, csv_paths, write_timeline_csv
from rtaa_cli.soak.memory import TargetMemory, rss_from_metrics
from rtaa_cli.soak.report import check_report_paths, histogram_bins, write_reports
from rtaa_cli.soak.scenario import Scenario, stage_boundaries
from rtaa_cli.soak.shape import StagesShape
from rtaa_cli.soak.stats import (
    CallRecord, PacingLimits, ProviderCounts, SendWindow, SoakStats, Threshold, apply_overrides, default_thresholds,
    provider_counts_from_emulator, provider_counts_from_metrics, watermark_note,
)

EXIT = EXIT_CODES
READY_TIMEOUT_S = 30.0
AFTER_END_GRACE_S = 1.0  # a provider connection opened this long after the last call ended is "after the end"
WORKER_HEARTBEAT_LIVENESS_S = 10  # missed 1 s heartbeats before Locust counts a worker lost (its default: 3)


@dataclass
class Target:
    url: str  # ingest WebSocket
    transcripts_url: str | None = None  # feed base: <...>/v1/transcripts
    health_url: str | None = None
    metrics_url: str | None = None
    provider_stats_url: str | None = None  # emulator GET /stats
    provider_control_url: str | None = None  # emulator POST /control/faults
    exclusive_provider: bool = False  # the emulator serves only this run (local target)
    description: str = ""


@dataclass
class SoakOptions:
    scenario: Scenario
    target: Target | None = None  # None: start a local `rtaa serve` + emulator
    thresholds: dict[str, float | None] = field(default_factory=dict)
    json_path: str | None = None
    junit_path: str | None = None
    html_path: str | None = None
    csv_prefix: str | None = None  # PREFIX_calls.csv (as calls finish) and PREFIX_timeline.csv (at the end)
    live: bool = True
    quiet: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # distributed
    expect_workers: int = 0  # > 0: master mode (local --processes spawns them; else remote workers)
    spawn_local_workers: bool = True
    master_bind_host: str = "127.0.0.1"
    master_port: int = 0
    serve_args: list[str] = field(default_factory=list)
    watch_after_s: float = 3.0  # post-run watch of the provider (leaked streams, reconnect loops)
    progress_every_s: float = 5.0  # without a terminal: one progress line this often
    metrics_port: int | None = None  # serve the run's own figures in Prometheus text (0: any free port)
    metrics_host: str = "127.0.0.1"
    web_port: int | None = None  # serve the live page (rtaa_cli/soak/live_web.py; 0: any free port)
    web_host: str = "127.0.0.1"
    watermark: bool = True  # callers mark their audio (rtaa_cli.watermark): attribution of untagged connections
    robust_mark: bool = robustmark.DEFAULT_ON  # with watermark: also the robust mark (rtaa_cli.robustmark)


# ------------------------------------------------------------------------------- HTTP helpers

def http_get_json(url: str, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with _no_proxy().open(req, timeout=timeout) as resp:
        return orjson.loads(resp.read())


def post_faults(url: str, faults: dict[str, Any], timeout: float = 5.0) -> Any:
    """POST the emulator's ``/control/faults`` (changes travel as query parameters: its HTTP parser
    takes no request body)."""
    params = {}
    for name, value in faults.items():
        if value is None:
            params[name] = "none"
        elif isinstance(value, (tuple, list)):
            params[name] = ",".join(f"{v:g}" for v in value)
        else:
            params[name] = f"{value:g}"
    req = urllib.request.Request(url + "?" + urlencode(params), data=b"", method="POST")
    with _no_proxy().open(req, timeout=timeout) as resp:
        data = resp.read()
        return orjson.loads(data) if data else None


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_http(url: str, proc: subprocess.Popen | None, what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RtaaError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with _no_proxy().open(url, timeout=2.0) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        gevent.sleep(0.1)  # polling a starting subprocess: there is no event to wait on
    raise RtaaError(f"{what} not ready at {url} after {timeout:g} s ({last})")


def check_reachable(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RtaaError(f"--target must be a ws:// or wss:// URL, got {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5.0).close()
    except OSError as exc:
        raise RtaaError(f"target {url} is unreachable: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------ local target

def _rtaa_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rtaa_cli.cli import main; main()", *args]


def _start_json(cmd: list[str], env: dict[str, str], what: str, log=None) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start ``cmd`` (bound to port 0) and read the JSON line in which it announces its URLs: no
    port is guessed, so nothing can race for it. Its stdout is drained afterwards (a full pipe
    would block it)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL)
    line = b""
    with gevent.Timeout(READY_TIMEOUT_S, False):
        line = proc.stdout.readline()
    if not line:
        proc.kill()
        code = proc.wait(timeout=5)
        raise RtaaError(f"{what} did not start (exit code {code}); run it alone to see why")
    gevent.spawn(_drain, proc.stdout)
    try:
        return proc, orjson.loads(line)
    except orjson.JSONDecodeError:
        proc.kill()
        raise RtaaError(f"{what} printed an unexpected first line: {line[:200]!r}") from None


def _drain(stream) -> None:
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass


@contextmanager
def local_target(scenario: Scenario, serve_args: list[str] | None = None, log=None) -> Iterator[Target]:
    """The default target: a Deepgram emulator (``rtaa fake-deepgram``, Deepgram-like timing and the
    scenario's faults) and ``rtaa serve --provider deepgram`` pointed at it, as subprocesses that
    this context stops (SIGTERM, bounded wait, then kill). Separate processes keep asyncio out of
    the gevent-patched load generator and the generator's CPU out of the pipeline's."""
    env = dict(os.environ, DEEPGRAM_API_KEY=os.environ.get("DEEPGRAM_API_KEY", "soak-local-key"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    procs: list[subprocess.Popen] = []
    prefix = bus_url = ""
    try:
        emu, emu_info = _start_json(
            _rtaa_cmd("fake-deepgram", "--host", "127.0.0.1", "--port", "0", "--json", "--quiet", "--no-live",
                      "--idle-timeout", f"{scenario.faults.idle_timeout_s:g}"),
            env, "the emulator (rtaa fake-deepgram)", log)
        procs.append(emu)
        provider = ("--provider", "deepgram", "--deepgram-url", emu_info["url"])
        description = "local rtaa serve + emulator"
        if scenario.scale_workers:
            # Scale-out (docs/scale-out.md): 1 ingest + N workers as separate processes on one Redis, under a
            # key prefix of this run's own (deleted at the end).
            bus_url = scenario.scale_redis or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
            prefix = f"rtaa-soak-{os.urandom(4).hex()}"
            bus = ("--bus", bus_url, "--bus-prefix", prefix, "--lease-ms", str(scenario.scale_lease_ms))
            serve, info = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--port", "0", "--json", *bus,
                                                "--role", "ingest", *(serve_args or [])),
                                      env, "the local ingest (rtaa serve --role ingest)", log)
            procs.append(serve)
            for i in range(scenario.scale_workers):
                wrk, _ = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--json", *bus, "--role", "worker",
                                               *provider, *(serve_args or [])),
                                     env, f"local worker {i + 1} (rtaa serve --role worker)", log)
                procs.append(wrk)
            description = (f"local 1 ingest + {scenario.scale_workers} workers on Redis {bus_url} (prefix {prefix})"
                           " + emulator")
        else:
            serve, info = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--port", "0", "--json", *provider,
                                                *(serve_args or [])),
                                      env, "the local pipeline (rtaa serve)", log)
            procs.append(serve)
        _wait_http(info["health"], serve, "the local pipeline (rtaa serve)")
        yield Target(url=info["ingest"], transcripts_url=info["transcripts"], health_url=info["health"],
                     metrics_url=info["metrics"], provider_stats_url=emu_info["stats"],
                     provider_control_url=emu_info["control"], exclusive_provider=True,
                     description=description)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if prefix:
            _delete_keys(bus_url, prefix)


def _delete_keys(url: str, prefix: str) -> None:
    """What a scale run leaves in Redis once its processes stopped (the feed, announcements; calls clean up
    after themselves): a soak must not leave its keys behind."""
    import redis

    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        for key in r.scan_iter(match=prefix + ":*", count=1000):
            r.delete(key)
        r.close()
    except (redis.RedisError, OSError):
        pass  # Redis is gone: nothing of the run can be left in it either


# ------------------------------------------------------------------------------------ the run

def tune_gc() -> None:
    """Keep garbage-collection pauses out of the pacing: everything alive at start-up (modules,
    audio frames) is frozen out of the collector, and young-generation collections run every 50k
    allocations instead of 700 (a full collection, which scans every live call object, then comes
    every ~10M allocations: minutes apart at full load, so cycles are still reclaimed and memory
    stays bounded over an hour-long soak)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


class LiveView:
    def __init__(self, stats: SoakStats, scenario: Scenario, t0: float) -> None:
        self.stats, self.scenario, self.t0 = stats, scenario, t0
        self.provider: ProviderCounts | None = None
        self.users = 0

    def table(self) -> Table:
        s = self.stats
        el = time.time() - self.t0
        phase = f"{el:4.0f}/{self.scenario.duration_s:.0f} s" if el <= self.scenario.duration_s else f"{el:4.0f} s, draining"
        t = Table(title=f"rtaa soak {self.scenario.name}: {phase}", expand=False, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
        for col in ("users", "calls", "done", "fail", "1011", "dup", "final p50/95", "part p95", "late99"):
            t.add_column(col, justify="right", no_wrap=True)
        late = f"{s.lateness.percentile(99):.1f}" if s.lateness.count else "-"
        fp = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        t.add_row(str(self.users), str(s.calls_started - s.records), str(s.completed), str(s.failed),
                  str(s.caller_1011 + (self.provider.closes_1011 if self.provider else 0)),
                  "-" if self.provider is None or self.provider.duplicates is None else str(self.provider.duplicates),
                  f"{fp(s.final.percentile(50))}/{fp(s.final.percentile(95))}", fp(s.first_partial.percentile(95)), late)
        return t


def _scrape(url: str | None) -> str | None:
    if not url:
        return None
    try:
        with _no_proxy().open(url, timeout=5.0) as resp:
            return resp.read().decode("utf-8", "replace")
    except OSError:
        return None


def _provider_counts(target: Target, prefix: str, metrics_before: str | None = None, *, since: float | None = None,
                     after: float | None = None, send_windows: dict[str, SendWindow] | None = None,
                     base_totals: dict[str, Any] | None = None, call_sids: Any = ()) -> ProviderCounts | None:
    if not target.provider_stats_url:
        if metrics_before is not None:  # only the target's own metrics: the increase over the run
            after_text = _scrape(target.metrics_url)
            if after_text is not None:
                try:
                    return provider_counts_from_metrics(metrics_before, after_text)
                except ValueError:
                    return None
        return None
    try:
        doc = http_get_json(target.provider_stats_url)
    except (OSError, ValueError):
        return None
    counts = provider_counts_from_emulator(doc, prefix, since=since, after=after, send_windows=send_windows,
                                           call_sids=list(call_sids))
    totals = doc.get("totals") or {}
    if base_totals is not None and "rejected_429" in totals:
        counts.rejected_429 = int(totals["rejected_429"]) - int(base_totals.get("rejected_429", 0))
    evicted = totals.get("records_evicted", 0) - (base_totals or {}).get("records_evicted", 0)
    if evicted:
        counts.audio_bytes = None  # per-connection records were dropped: byte totals would be partial
    return counts


def _provider_totals(target: Target) -> dict[str, Any] | None:
    if not target.provider_stats_url:
        return None
    try:
        return http_get_json(target.provider_stats_url).get("totals") or {}
    except (OSError, ValueError):
        return None


def _serve_soak_metrics(opts: SoakOptions, stats: SoakStats, view: Any, runner: Any, sc: Scenario,
                        target: Target) -> tuple[str, Any]:
    from rtaa_cli.soak.live_metrics import SoakCollector, serve

    collector = SoakCollector(stats, lambda: view.provider, lambda: runner.user_count, sc.name, target.url)
    try:
        return serve(collector, opts.metrics_host, opts.metrics_port or 0)
    except OSError as exc:
        raise RtaaError(f"--metrics-port {opts.metrics_port}: cannot listen on {opts.metrics_host}: "
                        f"{exc.strerror or exc}") from None


def _serve_live_web(opts: SoakOptions, stats: SoakStats, view: Any, runner: Any, sc: Scenario,
                    target: Target) -> tuple[str, Any]:
    from rtaa_cli.soak import live_web

    try:
        url, web = live_web.start(stats, lambda: view.provider, lambda: runner.user_count, scenario=sc.name,
                                  target=target.url, duration_s=sc.duration_s, host=opts.web_host,
                                  port=opts.web_port or 0)
    except OSError as exc:
        raise RtaaError(f"--web-port {opts.web_port}: cannot listen on {opts.web_host}: "
                        f"{exc.strerror or exc}") from None
    return url, web


def progress_line(stats: SoakStats, provider: ProviderCounts | None, elapsed_s: float, duration_s: float) -> str:
    """The line printed every few seconds without a terminal (CI logs), like Locust headless / k6."""
    fp = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    dup = "-" if provider is None or provider.duplicates is None else str(provider.duplicates)
    c1011 = stats.caller_1011 + (provider.closes_1011 if provider else 0)
    return (f"[{elapsed_s:5.0f}/{duration_s:.0f} s] calls active {stats.calls_started - stats.records} "
            f"completed {stats.completed} failed {stats.failed} dup {dup} 1011 {c1011} "
            f"final p95 {fp(stats.final.percentile(95))} ms")


def run_soak(opts: SoakOptions, console: Console | None = None) -> tuple[int, dict[str, Any]]:
    """Run the whole soak; returns (exit code, report document)."""
    sc = opts.scenario
    console = console or Console(stderr=True)
    thresholds = apply_overrides(apply_overrides(default_thresholds(), sc.thresholds), opts.thresholds)
    check_report_paths(opts.json_path, opts.junit_path, opts.html_path,
                       *(csv_paths(opts.csv_prefix) if opts.csv_prefix else ()))
    for audio in sc.audio:  # fail fast (exit 2) on missing audio, before any process starts
        call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)
    feed = opts.target.transcripts_url if opts.target is not None else None
    if feed and urlsplit(feed).scheme == "webhook" and opts.expect_workers > 0:
        raise RtaaError("a webhook:// feed is received by one process: run this soak with --processes 1 "
                        "(or read the target's results from a feed rtaa subscribes to)")
    if opts.target is None:
        with local_target(sc, opts.serve_args) as target:
            return _run_against(opts, target, thresholds, console)
    check_reachable(opts.target.url)
    return _run_against(opts, opts.target, thresholds, console)


def turned_off(opts: SoakOptions) -> list[str]:
    """Thresholds the scenario or the command line turned off (shown as "off" in the report)."""
    merged = {**opts.scenario.thresholds, **opts.thresholds}
    return [name for name, limit in merged.items() if limit is None]


def _run_against(opts: SoakOptions, target: Target, thresholds: dict[str, Threshold],
                 console: Console) -> tuple[int, dict[str, Any]]:
    sc = opts.scenario
    prefix = f"rtaa{uuid.uuid4().hex[:8]}-"
    notes: list[str] = []
    stopped_early: str | None = None
    if target.provider_control_url and target.exclusive_provider:
        try:
            post_faults(target.provider_control_url, sc.faults.emulator_faults())
        except (OSError, ValueError) as exc:
            raise RtaaError(f"cannot apply faults at {target.provider_control_url}: {exc}") from None
    else:
        notes.append("provider faults/timing not applied: no emulator control endpoint owned by this run")
    # stages: a ramp down lets each stopped caller finish its call (never cut one short)
    stop_timeout = _max_call_seconds(sc) + sc.wait_final_s + 5.0 if sc.stages else None
    env = Environment(user_classes=[locustfile.RtaaCaller], catch_exceptions=True,
                      shape_class=StagesShape(sc.stages) if sc.stages else None, stop_timeout=stop_timeout)
    distributed = opts.expect_workers > 0
    workers: list[subprocess.Popen] = []
    if distributed:  # port 0: Locust binds any free port (its RPC server reports which)
        # Locust drops a worker after 3 missed 1 s heartbeats and stops the test when the last one goes:
        # a worker starved of CPU for 3 s (a busy 2-core CI host) would silently end the run. Lost workers
        # are still reported (the run is then invalid), after a more tolerant wait.
        locust.runners.HEARTBEAT_LIVENESS = WORKER_HEARTBEAT_LIVENESS_S
        runner = env.create_master_runner(opts.master_bind_host, opts.master_port)
        port = runner.server.port
    else:
        runner = env.create_local_runner()
    metrics_before = _scrape(target.metrics_url) if not target.provider_stats_url else None
    base_totals = _provider_totals(target)
    # Ctrl-C / SIGTERM end the run early but still produce the report (verdict: invalid)
    interrupted = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, interrupted.set) for sig in (signal.SIGINT, signal.SIGTERM)]
    calls_csv: CallCsv | None = None
    metrics_url: str | None = None
    stop_metrics: Any = None
    live_web: Any = None
    try:
        if distributed:  # the clock starts once every worker is there (a slow start must not eat the run)
            if opts.spawn_local_workers:
                for _ in range(opts.expect_workers):
                    workers.append(subprocess.Popen(
                        [sys.executable, "-m", "rtaa_cli.soak.runner", "worker", "127.0.0.1", str(port)],
                        stdout=subprocess.DEVNULL))
            else:
                console.print(f"waiting for {opts.expect_workers} worker(s) on {opts.master_bind_host}:{port}",
                              highlight=False, soft_wrap=True)
            deadline = time.monotonic() + 60.0
            while len(runner.clients.ready) < opts.expect_workers:
                if time.monotonic() > deadline:
                    raise RtaaError(f"only {len(runner.clients.ready)} of {opts.expect_workers} Locust workers connected")
                if any(w.poll() is not None for w in workers):
                    raise RtaaError("a Locust worker process exited before the run started")
                gevent.sleep(0.1)  # Locust has no "worker joined" event to wait on
        t0 = time.time()
        start_delay = 1.0 if sc.burst else 0.0
        # burst: every user's first call starts at the same instant, after they have all spawned
        burst_at = t0 + sc.users / sc.spawn_rate + 1.0 if sc.burst else None
        stats = SoakStats(t0=t0, duration_s=sc.duration_s, delivery_tolerance_ms=sc.delivery_tolerance_ms)
        if not target.provider_stats_url:
            stats.provider_hint = ("pass --provider-stats URL: the /stats of the rtaa fake-deepgram the target's "
                                   "Deepgram client points at (docs/soak.md)")
        if opts.csv_prefix:
            calls_csv = CallCsv(csv_paths(opts.csv_prefix)[0])

        def on_call(environment: Any, msg: Any, **kw: Any) -> None:
            rec = CallRecord.from_dict(msg.data)
            stats.add(rec)
            if calls_csv is not None:
                calls_csv.add(rec)

        runner.register_message(locustfile.MSG_CALL, on_call)
        runner.register_message(locustfile.MSG_STARTED, lambda environment, msg, **kw: stats.call_started())
        drained: dict[str, dict[str, int]] = {}  # worker id -> its counts at its last drain answer
        runner.register_message(locustfile.MSG_DRAINED,
                                lambda environment, msg, **kw: drained.__setitem__(msg.data["client"], msg.data))
        worker_errors: list[str] = []  # a worker that cannot play the scenario: the run stops, invalid
        runner.register_message(locustfile.MSG_WORKER_ERROR, lambda environment, msg, **kw: worker_errors.append(
            f"Locust worker {msg.data['client']}: {msg.data['error']}"))
        config = {"scenario": sc.to_dict(), "url": target.url, "transcripts_url": target.transcripts_url,
                  "headers": opts.headers, "call_prefix": prefix, "burst_at": burst_at,
                  "stop_new_calls_at": t0 + sc.duration_s + start_delay, "watermark": opts.watermark, "robust_mark": opts.robust_mark,
                  "stop_timeout": stop_timeout}
        if distributed:
            runner.send_message(locustfile.MSG_CONFIG, config)
        else:
            locustfile.configure(config)
        call_frames_all(sc)  # decode the audio before the clock matters (shared by every caller)
        tune_gc()
        if sc.stages:
            runner.start_shape()  # Locust's LoadTestShape drives the user count (rtaa_cli/soak/shape.py)
        else:
            runner.start(sc.users, spawn_rate=sc.spawn_rate)
        view = LiveView(stats, sc, t0)
        if opts.metrics_port is not None:
            metrics_url, stop_metrics = _serve_soak_metrics(opts, stats, view, runner, sc, target)
            console.print(f"soak metrics (Prometheus): {metrics_url}", highlight=False, soft_wrap=True)
        if opts.web_port is not None:
            web_url, live_web = _serve_live_web(opts, stats, view, runner, sc, target)
            console.print(f"soak live page: {web_url}", highlight=False, soft_wrap=True)
        end_at = config["stop_new_calls_at"]
        max_call_s = _max_call_seconds(sc)
        if target.metrics_url:
            # Steady part: every user spawned and one whole call played since, until new calls stop.
            stats.memory = TargetMemory(target.metrics_url)
            full_at = (stage_boundaries(sc.stages)[[u for _, u in sc.stages].index(sc.users)] if sc.stages
                       else sc.users / sc.spawn_rate)  # when every user has spawned
            stats.memory_window_s = (start_delay + full_at + max_call_s, end_at - t0)
        drain_deadline = end_at + max_call_s + sc.wait_final_s + 15.0
        poll_every, next_poll = 2.0, 0.0
        use_live = opts.live and not opts.quiet and console.is_terminal
        progress_every, next_progress = opts.progress_every_s, t0 + opts.progress_every_s
        lost_workers = 0
        drain_asked_at: float | None = None
        with Live(view.table(), console=console, auto_refresh=False, transient=True,
                  redirect_stdout=False, redirect_stderr=False) if use_live else _nullctx() as live:
            while True:
                now = time.time()
                if now >= next_poll:
                    view.provider = _provider_counts(target, prefix, metrics_before, since=t0, base_totals=base_totals,
                                                     call_sids=stats.send_windows if opts.watermark else ())
                    if stats.memory is not None:
                        rss = rss_from_metrics(_scrape(target.metrics_url))
                        if rss is not None:
                            stats.memory.add(time.time() - t0, rss)
                    next_poll = now + poll_every
                view.users = runner.user_count
                stats.timeline.set_users(now, view.users)
                if distributed and runner.clients.missing and not lost_workers:
                    lost_workers = len(runner.clients.missing)
                    stats.invalid_reasons.append(
                        f"{lost_workers} Locust worker(s) sent no heartbeat for {WORKER_HEARTBEAT_LIVENESS_S} s during "
                        "the run (starved of CPU or cut off): their calls are missing; give the load generator "
                        "more CPU (fewer users per process, more --processes/hosts)")
                if live is not None:
                    live.update(view.table(), refresh=True)
                elif not opts.quiet and now >= next_progress:  # no terminal (CI): a line every few seconds
                    console.print(progress_line(stats, view.provider, now - t0, sc.duration_s), highlight=False,
                                  soft_wrap=True)
                    next_progress = now + progress_every
                if worker_errors:
                    stats.invalid_reasons.extend(worker_errors)
                    stopped_early = f"stopped early: {worker_errors[0]}"
                    notes.append(stopped_early)
                    break
                early = stats.early_stop_reason(min(3, max(1, sc.users)))
                if early:
                    notes.append(early)
                    stopped_early = early
                    break
                if now >= end_at and stats.records >= stats.calls_started:
                    if not distributed:
                        break
                    # A stalled worker's calls are not counted yet: end only once every worker has
                    # answered that all its calls are reported.
                    done = [d for d in drained.values() if d["started"] == d["reported"]]
                    if len(done) >= opts.expect_workers:
                        break
                    if drain_asked_at is None:
                        drain_asked_at = now
                    elif now - drain_asked_at > WORKER_HEARTBEAT_LIVENESS_S:
                        stats.invalid_reasons.append(
                            f"{opts.expect_workers - len(done)} of {opts.expect_workers} Locust worker(s) did not "
                            f"confirm the end of their calls within {WORKER_HEARTBEAT_LIVENESS_S} s: their calls "
                            "may be missing from this report")
                        break
                    runner.send_message(locustfile.MSG_DRAIN, None)
                if now >= drain_deadline:
                    notes.append(f"{stats.calls_started - stats.records} call(s) still running at the drain deadline")
                    break
                if interrupted.wait(0.5):  # the live table's refresh period, or Ctrl-C / SIGTERM
                    stats.invalid_reasons.append(f"interrupted after {now - t0:.0f} s of {sc.duration_s:g} s")
                    break
        env.stop_timeout = None  # every call is reported (or the run ended early): stop users now
        runner.quit()
        if target.provider_stats_url and opts.watch_after_s > 0 and not interrupted.is_set():
            # the post-run watch: a leaked stream stays open, a reconnect loop opens new connections
            interrupted.wait(opts.watch_after_s)
        stats.generator_cpu_warning = bool(getattr(runner, "cpu_warning_emitted", False) or
                                           getattr(runner, "worker_cpu_warning_emitted", False))
    except BaseException:
        if live_web is not None:
            live_web.stop()
        raise
    finally:
        for h in handlers:
            h.cancel()
        if stop_metrics is not None:
            stop_metrics()
        if calls_csv is not None:
            calls_csv.close()
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
    stats.set_provider(_provider_counts(target, prefix, metrics_before, since=t0,
                                        after=(stats.last_call_ended + AFTER_END_GRACE_S) if stats.records else None,
                                        send_windows=stats.send_windows, base_totals=base_totals,
                                        call_sids=stats.send_windows if opts.watermark else ()))
    note = watermark_note(stats.provider, opts.watermark, bool(stats.send_windows))
    if note:
        notes.append(note)
    doc = stats.summary(thresholds, PacingLimits(sc.max_lateness_p99_ms), turned_off(opts))
    doc["scenario"] = {"name": sc.name, "path": sc.path, "description": sc.description}
    doc["run"] = {"target": target.url, "description": target.description, "users": sc.users,
                  "spawn_rate": sc.spawn_rate, "duration_s": sc.duration_s, "processes": max(1, opts.expect_workers),
                  "stages": [{"end_s": end, "users": users} for end, (_, users) in
                             zip(stage_boundaries(sc.stages), sc.stages)],
                  "call_prefix": prefix, "started": datetime.fromtimestamp(t0, timezone.utc).isoformat(),
                  "elapsed_s": round(time.time() - t0, 3), "notes": notes, "stopped_early": stopped_early,
                  "watch_after_s": opts.watch_after_s if target.provider_stats_url else None,
                  "metrics_url": metrics_url}
    doc["latency_histograms"] = {"final": histogram_bins(stats.final), "first_partial": histogram_bins(stats.first_partial)}
    write_reports(doc, opts.json_path, opts.junit_path, opts.html_path, "soak")
    if opts.csv_prefix:
        try:
            write_timeline_csv(csv_paths(opts.csv_prefix)[1], doc["timeline"])
        except OSError as exc:
            doc.setdefault("report_errors", []).append(f"could not write {csv_paths(opts.csv_prefix)[1]}: {exc.strerror or exc}")
    if live_web is not None:  # open pages get the report (the verdict) before the run exits
        live_web.finish(doc)
        live_web.stop()
    return EXIT[doc["verdict"]], doc


def call_frames_all(sc: Scenario) -> None:
    for audio in sc.audio:
        call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)


def _max_call_seconds(sc: Scenario) -> float:
    longest = 0.0
    for audio in sc.audio:
        frames = call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)
        longest = max(longest, len(frames) * sc.frame_ms / 1000.0)
    extra = max(sc.hold_s if sc.mix.get("hold") else 0.0, sc.reconnect_after_s + 2.0)
    return longest + extra


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------------ workers

def worker_main(master_host: str, master_port: int) -> None:
    """A Locust worker process: users get their config from the master's ``rtaa_config`` message."""
    env = Environment(user_classes=[locustfile.RtaaCaller], catch_exceptions=True)
    runner = env.create_worker_runner(master_host, master_port)
    runner.register_message(locustfile.MSG_CONFIG, locustfile.on_config_message)
    runner.register_message(locustfile.MSG_DRAIN, locustfile.on_drain_message)
    tune_gc()
    runner.greenlet.join()
    if locustfile.worker_error is not None:  # the master has it too (and stopped the run as invalid)
        raise RtaaError(locustfile.worker_error, exit_code=1)


if __name__ == "__main__":  # python -m rtaa_cli.soak.runner worker HOST PORT
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        try:
            worker_main(sys.argv[2], int(sys.argv[3]))
        except RtaaError as exc:
            sys.exit(f"error: {exc}")
    else:
        sys.exit("usage: python -m rtaa_cli.soak.runner worker MASTER_HOST MASTER_PORT")
