"""Runs a soak, as a short sequence of steps: the target (a local one started, or the given one checked),
the provider's faults, the Locust session (rtaa_cli/soak/session.py), the run watched until its calls
are done (rtaa_cli/soak/poller.py polls the target and draws the console), then the report document,
its verdict and its files (rtaa_cli/soak/report.py).

Importing this module imports Locust (gevent monkey-patching): ``rtaa soak`` imports it lazily.
"""
from __future__ import annotations

from rtaa_cli.soak import patched  # noqa: F401  (first: Locust's gevent monkey-patching)

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from rich.console import Console

from rtaa_cli import robustmark
from rtaa_cli.errors import RtaaError
from rtaa_cli.verdict import EXIT_CODES
from rtaa_cli.soak.csvexport import CallCsv, csv_paths
from rtaa_cli.soak.poller import LiveView, Poller
from rtaa_cli.soak.report import RunFacts, check_report_paths, soak_document, write_reports
from rtaa_cli.soak.scenario import Scenario
from rtaa_cli.soak.schedule import Schedule, decode_audio, max_call_seconds, stop_timeout
from rtaa_cli.soak.session import Interrupt, Session, tune_gc
from rtaa_cli.soak.stats import SoakStats, Threshold, apply_overrides, default_thresholds
from rtaa_cli.soak.target import Target, apply_faults, check_reachable, local_target

if TYPE_CHECKING:
    from rtaa_cli.soak.live_web import LiveWeb

WATCH_EVERY_S = 0.5  # the loop's period while the run goes: the live table's refresh


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


def run_soak(opts: SoakOptions, console: Console | None = None) -> tuple[int, dict[str, Any]]:
    """Run the whole soak; returns (exit code, report document)."""
    sc = opts.scenario
    console = console or Console(stderr=True)
    thresholds = apply_overrides(apply_overrides(default_thresholds(), sc.thresholds), opts.thresholds)
    check_report_paths(opts.json_path, opts.junit_path, opts.html_path,
                       *(csv_paths(opts.csv_prefix) if opts.csv_prefix else ()))
    decode_audio(sc)  # fail fast (exit 2) on missing audio, before any process starts
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
    """One run against a started or checked target: Locust's users call it until the schedule says the
    run is over, the poller watches it, then the report (exit code, document)."""
    sc = opts.scenario
    prefix = f"rtaa{uuid.uuid4().hex[:8]}-"
    notes = apply_faults(target, sc.faults)
    max_call_s = max_call_seconds(sc)
    session = Session(sc, stop_timeout(sc, max_call_s), expect_workers=opts.expect_workers,
                      bind_host=opts.master_bind_host, port=opts.master_port)
    poller = Poller(target, prefix, watermark=opts.watermark)  # its baselines: before any call
    interrupted = Interrupt()
    calls_csv: CallCsv | None = None
    metrics_url: str | None = None
    stop_metrics: Callable[[], None] | None = None
    web: LiveWeb | None = None
    try:
        session.join_workers(opts.spawn_local_workers, console)
        schedule = Schedule(sc, time.time(), max_call_s)
        stats = SoakStats(t0=schedule.t0, duration_s=sc.duration_s, delivery_tolerance_ms=sc.delivery_tolerance_ms)
        poller.start(stats, schedule.t0, schedule.memory_window_s)
        if opts.csv_prefix:
            calls_csv = CallCsv(csv_paths(opts.csv_prefix)[0])
        session.feed(stats, calls_csv)
        session.configure(_caller_config(opts, target, prefix, schedule, session.stop_timeout))
        decode_audio(sc)  # before the clock matters (shared by every caller)
        tune_gc()
        session.start()
        if opts.metrics_port is not None:
            from rtaa_cli.soak import live_metrics

            metrics_url, stop_metrics = live_metrics.serve(
                stats, lambda: poller.provider, lambda: session.user_count, scenario=sc.name, target=target.url,
                host=opts.metrics_host, port=opts.metrics_port)
            console.print(f"soak metrics (Prometheus): {metrics_url}", highlight=False, soft_wrap=True)
        if opts.web_port is not None:
            from rtaa_cli.soak import live_web

            web_url, web = live_web.start(stats, lambda: poller.provider, lambda: session.user_count, scenario=sc.name,
                                          target=target.url, duration_s=sc.duration_s, host=opts.web_host,
                                          port=opts.web_port)
            console.print(f"soak live page: {web_url}", highlight=False, soft_wrap=True)
        with LiveView(console, stats, sc, schedule.t0, live=opts.live, quiet=opts.quiet,
                      progress_every_s=opts.progress_every_s) as view:
            stopped_early = _watch(session, stats, poller, view, schedule, interrupted, notes)
        session.stop()
        if target.provider_stats_url and opts.watch_after_s > 0 and not interrupted.is_set():
            # the post-run watch: a leaked stream stays open, a reconnect loop opens new connections
            interrupted.wait(opts.watch_after_s)
        stats.generator_cpu_warning = session.cpu_warning
    except BaseException:
        if web is not None:
            web.stop()
        raise
    finally:
        interrupted.cancel()
        if stop_metrics is not None:
            stop_metrics()
        if calls_csv is not None:
            calls_csv.close()
        session.close()
    stats.set_provider(poller.final())
    doc = soak_document(stats, sc, thresholds, turned_off(opts), RunFacts(
        target=target.url, description=target.description, processes=max(1, opts.expect_workers),
        call_prefix=prefix, t0=schedule.t0, notes=notes, stopped_early=stopped_early,
        watch_after_s=opts.watch_after_s if target.provider_stats_url else None, metrics_url=metrics_url,
        watermark=opts.watermark))
    write_reports(doc, opts.json_path, opts.junit_path, opts.html_path, "soak",
                  timeline_csv=csv_paths(opts.csv_prefix)[1] if opts.csv_prefix else None)
    if web is not None:  # open pages get the report (the verdict) before the run exits
        web.finish(doc)
        web.stop()
    return EXIT_CODES[doc["verdict"]], doc


def _caller_config(opts: SoakOptions, target: Target, prefix: str, schedule: Schedule,
                   stop_timeout: float | None) -> dict[str, Any]:
    """What every caller plays, against what (rtaa_cli/soak/locustfile.py ``configure``)."""
    return {"scenario": opts.scenario.to_dict(), "url": target.url, "transcripts_url": target.transcripts_url,
            "headers": opts.headers, "call_prefix": prefix, "burst_at": schedule.burst_at,
            "stop_new_calls_at": schedule.end_at, "watermark": opts.watermark, "robust_mark": opts.robust_mark,
            "stop_timeout": stop_timeout}


def _watch(session: Session, stats: SoakStats, poller: Poller, view: LiveView, schedule: Schedule,
           interrupted: Interrupt, notes: list[str]) -> str | None:
    """Poll the target, show the run and decide when it ends; returns why it stopped early (None: it ran
    its course, or the drain deadline or an interrupt ended it, which ``notes`` or the invalid reasons say)."""
    sc = schedule.scenario
    while True:
        now = time.time()
        poller.tick(now)
        users = session.user_count
        stats.timeline.set_users(now, users)
        lost = session.lost_workers()
        if lost:
            stats.invalid_reasons.append(lost)
        view.show(now, poller.provider, users)
        if session.worker_errors:
            stats.invalid_reasons.extend(session.worker_errors)
            notes.append(f"stopped early: {session.worker_errors[0]}")
            return notes[-1]
        early = stats.early_stop_reason(min(3, max(1, sc.users)))
        if early:
            notes.append(early)
            return early
        if now >= schedule.end_at and stats.records >= stats.calls_started:
            done, invalid = session.drained(now)
            if invalid:
                stats.invalid_reasons.append(invalid)
            if done:
                return None
        if now >= schedule.drain_deadline:
            notes.append(f"{stats.calls_started - stats.records} call(s) still running at the drain deadline")
            return None
        if interrupted.wait(WATCH_EVERY_S):  # or Ctrl-C / SIGTERM
            stats.invalid_reasons.append(f"interrupted after {now - schedule.t0:.0f} s of {sc.duration_s:g} s")
            return None
