"""``rtaa soak --metrics-port``: the run's own figures in Prometheus text while it runs, so a long soak
can be watched in Grafana. Read at scrape time from the same SoakStats the report is made of (one
definition of every figure); a figure not measured yet (no provider evidence) has no sample rather
than a 0."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.stats import ProviderCounts, SoakStats

LATENCY_EDGES_MS = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
LATENESS_EDGES_MS = (1, 2, 5, 10, 25, 50, 100, 250, 1000)


def _histogram(name: str, doc: str, h: Any, edges: tuple[float, ...], total: int, sum_ms: float) -> HistogramMetricFamily:
    buckets = [(f"{e / 1000:g}", h.count_le(e)) for e in edges] + [("+Inf", total)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum_ms / 1000.0)


class SoakCollector:
    def __init__(self, stats: SoakStats, provider: Callable[[], ProviderCounts | None],
                 users: Callable[[], int], scenario: str, target: str) -> None:
        self.stats, self.provider, self.users = stats, provider, users
        self.scenario, self.target = scenario, target

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        info = GaugeMetricFamily("rtaa_soak_info", "the run", labels=["scenario", "target"])
        info.add_metric([self.scenario, self.target], 1)
        yield info
        yield GaugeMetricFamily("rtaa_soak_users", "Locust users (virtual callers) now", value=self.users())
        yield GaugeMetricFamily("rtaa_soak_calls_active", "calls started and not reported yet",
                                value=s.calls_started - s.records)
        for name, doc, value in (("calls_started", "calls started", s.calls_started),
                                 ("calls_completed", "calls completed", s.completed),
                                 ("calls_failed", "calls failed", s.failed),
                                 ("calls_handshake_failed", "calls refused at the handshake", s.handshake_failed),
                                 ("audio_bytes_sent", "audio bytes the callers sent", s.audio_bytes_sent)):
            yield CounterMetricFamily(f"rtaa_soak_{name}", doc, value=value)
        closes = CounterMetricFamily("rtaa_soak_closes_1011", "1011 closes, by the side that saw them", labels=["side"])
        closes.add_metric(["caller"], s.caller_1011)
        prov = self.provider()
        if prov is not None:
            closes.add_metric(["provider"], prov.closes_1011)
            if prov.duplicates is not None:
                yield GaugeMetricFamily("rtaa_soak_provider_duplicates",
                                        "overlapping provider connections of one call (the emulator's records)",
                                        value=prov.duplicates)
        yield closes
        for kind, h in (("final", s.final), ("first_partial", s.first_partial)):
            yield _histogram(f"rtaa_soak_{kind}_latency_seconds", f"{kind.replace('_', ' ')} result latency "
                             "(docs/soak.md definitions)", h, LATENCY_EDGES_MS, h.n, h.sum_ms)
        lat = s.lateness
        yield _histogram("rtaa_soak_pacing_lateness_seconds", "media frames sent later than their schedule",
                         lat, LATENESS_EDGES_MS, lat.count, lat.total_ms)


def serve(stats: SoakStats, provider: Callable[[], ProviderCounts | None], users: Callable[[], int], *,
          scenario: str, target: str, host: str, port: int) -> tuple[str, Callable[[], None]]:
    """Serve ``/metrics`` (port 0: any free one); returns its URL and a function that stops it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SoakCollector(stats, provider, users, scenario, target))  # type: ignore[arg-type]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise RtaaError(f"--metrics-port {port}: cannot listen on {host}: {exc.strerror or exc}") from None
    bound = server.server_port
    return f"http://{host}:{bound}/metrics", server.shutdown
