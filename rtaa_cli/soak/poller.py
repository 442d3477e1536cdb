"""What a soak watches while it runs: the provider's view of this run's calls (the emulator's ``/stats``,
or without one the increase of the target's ``/metrics`` over the run), the target's resident memory,
and the console's view of both (a rich live table on a terminal, else a progress line every few seconds).

No Locust here: the poller is plain HTTP (cooperative under the soak's gevent patching) and is tested
against a local server.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rtaa_cli.soak.memory import TargetMemory, rss_from_metrics
from rtaa_cli.soak.scenario import Scenario
from rtaa_cli.soak.stats import (
    ProviderCounts, SendWindow, SoakStats, provider_counts_from_emulator, provider_counts_from_metrics,
)
from rtaa_cli.soak.target import Target, http_get_json, scrape

POLL_EVERY_S = 2.0
AFTER_END_GRACE_S = 1.0  # a provider connection opened this long after the last call ended is "after the end"
NO_PROVIDER_HINT = ("pass --provider-stats URL: the /stats of the rtaa fake-deepgram the target's "
                    "Deepgram client points at (docs/soak.md)")


def provider_counts(target: Target, prefix: str, metrics_before: str | None = None, *, since: float | None = None,
                    after: float | None = None, send_windows: dict[str, SendWindow] | None = None,
                    base_totals: dict[str, Any] | None = None, call_sids: Iterable[str] = ()) -> ProviderCounts | None:
    """This run's calls (ids starting with ``prefix``) as the provider side saw them; None when there is
    no evidence (no emulator /stats, and no target /metrics scraped before the run, or it stopped answering)."""
    if not target.provider_stats_url:
        if metrics_before is not None:  # only the target's own metrics: the increase over the run
            after_text = scrape(target.metrics_url)
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


def provider_totals(target: Target) -> dict[str, Any] | None:
    """The emulator's running totals (429s, evicted records), the baseline the run's own are taken from."""
    if not target.provider_stats_url:
        return None
    try:
        return http_get_json(target.provider_stats_url).get("totals") or {}
    except (OSError, ValueError):
        return None


class Poller:
    """Polls the target every :data:`POLL_EVERY_S` during the run. Made before any call, it takes the
    baselines the run's figures are increases over; :meth:`start` binds it to the run's statistics."""

    def __init__(self, target: Target, prefix: str, *, watermark: bool) -> None:
        self.target, self.prefix, self.watermark = target, prefix, watermark
        self.metrics_before = scrape(target.metrics_url) if not target.provider_stats_url else None
        self.base_totals = provider_totals(target)
        self.provider: ProviderCounts | None = None  # the latest poll's
        self.stats: SoakStats | None = None  # bound by start()
        self.t0 = 0.0
        self._next_poll = 0.0

    def start(self, stats: SoakStats, t0: float, memory_window_s: tuple[float, float]) -> None:
        """Say in ``stats`` what this target can be measured by: a hint without provider evidence, the RSS
        samples' holder when the target has a /metrics."""
        self.stats, self.t0 = stats, t0
        if not self.target.provider_stats_url:
            stats.provider_hint = NO_PROVIDER_HINT
        if self.target.metrics_url:
            stats.memory = TargetMemory(self.target.metrics_url)
            stats.memory_window_s = memory_window_s

    def tick(self, now: float) -> None:
        """Poll when one is due: the provider's counts, and an RSS sample."""
        assert self.stats is not None, "Poller.start() binds the run first"
        if now < self._next_poll:
            return
        self.provider = self._counts(self.stats)
        if self.stats.memory is not None:
            rss = rss_from_metrics(scrape(self.target.metrics_url))
            if rss is not None:
                self.stats.memory.add(time.time() - self.t0, rss)
        self._next_poll = now + POLL_EVERY_S

    def final(self) -> ProviderCounts | None:
        """The counts the report is made of, after the post-run watch: connections opened after the last
        call's end, and 1011 causes against when each call sent audio."""
        s = self.stats
        assert s is not None, "Poller.start() binds the run first"
        return self._counts(s, after=(s.last_call_ended + AFTER_END_GRACE_S) if s.records else None,
                            send_windows=s.send_windows)

    def _counts(self, stats: SoakStats, **kw: Any) -> ProviderCounts | None:
        return provider_counts(self.target, self.prefix, self.metrics_before, since=self.t0,
                               base_totals=self.base_totals,
                               call_sids=stats.send_windows if self.watermark else (), **kw)


# ----------------------------------------------------------------------------------- console

def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _dup(provider: ProviderCounts | None) -> str:
    return "-" if provider is None or provider.duplicates is None else str(provider.duplicates)


def _closes_1011(stats: SoakStats, provider: ProviderCounts | None) -> int:
    return stats.caller_1011 + (provider.closes_1011 if provider else 0)


def live_table(stats: SoakStats, provider: ProviderCounts | None, users: int, scenario: Scenario,
               elapsed_s: float) -> Table:
    """The live table on a terminal."""
    s, el = stats, elapsed_s
    phase = f"{el:4.0f}/{scenario.duration_s:.0f} s" if el <= scenario.duration_s else f"{el:4.0f} s, draining"
    t = Table(title=f"rtaa soak {scenario.name}: {phase}", expand=False, box=box.SIMPLE_HEAD, padding=(0, 1),
              show_edge=False)
    for col in ("users", "calls", "done", "fail", "1011", "dup", "final p50/95", "part p95", "late99"):
        t.add_column(col, justify="right", no_wrap=True)
    late = f"{s.lateness.percentile(99):.1f}" if s.lateness.count else "-"
    t.add_row(str(users), str(s.calls_started - s.records), str(s.completed), str(s.failed),
              str(_closes_1011(s, provider)), _dup(provider),
              f"{_ms(s.final.percentile(50))}/{_ms(s.final.percentile(95))}", _ms(s.first_partial.percentile(95)), late)
    return t


def progress_line(stats: SoakStats, provider: ProviderCounts | None, elapsed_s: float, duration_s: float) -> str:
    """The line printed every few seconds without a terminal (CI logs), like Locust headless / k6."""
    return (f"[{elapsed_s:5.0f}/{duration_s:.0f} s] calls active {stats.calls_started - stats.records} "
            f"completed {stats.completed} failed {stats.failed} dup {_dup(provider)} "
            f"1011 {_closes_1011(stats, provider)} final p95 {_ms(stats.final.percentile(95))} ms")


class LiveView:
    """The run on the console while it goes: the live table redrawn on a terminal; without one (CI),
    unless quiet, a progress line every ``progress_every_s``."""

    def __init__(self, console: Console, stats: SoakStats, scenario: Scenario, t0: float, *, live: bool,
                 quiet: bool, progress_every_s: float) -> None:
        self.console, self.stats, self.scenario, self.t0 = console, stats, scenario, t0
        self.quiet, self.progress_every_s = quiet, progress_every_s
        self._next_progress = t0 + progress_every_s
        self._live = (Live(live_table(stats, None, 0, scenario, time.time() - t0), console=console,
                           auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False)
                      if live and not quiet and console.is_terminal else None)

    def __enter__(self) -> LiveView:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def show(self, now: float, provider: ProviderCounts | None, users: int) -> None:
        if self._live is not None:
            self._live.update(live_table(self.stats, provider, users, self.scenario, time.time() - self.t0),
                              refresh=True)
        elif not self.quiet and now >= self._next_progress:
            self.console.print(progress_line(self.stats, provider, now - self.t0, self.scenario.duration_s),
                               highlight=False, soft_wrap=True)
            self._next_progress = now + self.progress_every_s
