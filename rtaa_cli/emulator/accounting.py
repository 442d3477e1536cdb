"""Exact per-connection and per-interaction accounting behind ``/stats`` and ``/metrics``.

Definitions (docs/architecture.md "Definitions"):
- a *duplicate* is a connection opened for an interaction while another connection of the same
  interaction is still open; ``max_open`` is the most connections it ever had open at once.
Memory is bounded: at most ``max_closed`` closed connection records and ``max_interactions`` idle
interactions are kept (oldest dropped first); totals stay exact and count what was dropped.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


@dataclass(slots=True)
class ConnectionRecord:
    id: int
    request_id: str
    interaction: str | None
    opened_at: float  # unix seconds
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    keepalives: int = 0
    finalizes: int = 0
    close_stream: bool = False
    results_sent: int = 0
    messages_sent: int = 0
    schema_errors: int = 0  # text messages answered with an Error SchemaError
    duplicate: bool = False
    watermark: dict | None = None  # rtaa_cli.watermark.Decoder.report(): the call whose audio it carried
    robust_mark: dict | None = None  # rtaa_cli.robustmark.Detector.report(): the same, from the robust mark

    def as_dict(self) -> dict:
        return {
            "id": self.id, "request_id": self.request_id, "interaction": self.interaction,
            "opened_at": self.opened_at, "closed_at": self.closed_at, "close_code": self.close_code,
            "close_reason": self.close_reason, "audio_bytes": self.audio_bytes,
            "audio_seconds": round(self.audio_seconds, 6), "keepalives": self.keepalives,
            "finalizes": self.finalizes, "close_stream": self.close_stream, "results_sent": self.results_sent,
            "messages_sent": self.messages_sent, "schema_errors": self.schema_errors, "duplicate": self.duplicate,
            "watermark": self.watermark, "robust_mark": self.robust_mark,
        }


@dataclass(slots=True)
class InteractionStats:
    connections: int = 0
    duplicates: int = 0
    max_open: int = 0
    open: int = 0


def _zero_totals() -> dict[str, float]:
    return {
        "connections": 0, "open": 0, "duplicates": 0, "closes_1000": 0, "closes_1011": 0, "closes_1008": 0,
        "closes_other": 0, "dropped": 0, "rejected_400": 0, "rejected_401": 0, "rejected_429": 0,
        "audio_bytes": 0, "audio_seconds": 0.0, "keepalives": 0, "finalizes": 0, "close_streams": 0,
        "results_sent": 0, "messages_sent": 0, "schema_errors": 0, "records_evicted": 0,
        "interactions_evicted": 0,
    }


@dataclass
class Accounting:
    max_closed: int = 10000
    max_interactions: int = 10000
    totals: dict[str, float] = field(default_factory=_zero_totals)
    open_records: dict[int, ConnectionRecord] = field(default_factory=dict)
    closed_records: deque = field(default_factory=deque)
    interactions: OrderedDict[str, InteractionStats] = field(default_factory=OrderedDict)
    close_codes: dict[int, int] = field(default_factory=dict)
    # refused handshakes with their time (bounded like the closed records): a soak plots them
    rejections: deque = field(default_factory=deque)
    _next_id: int = 1

    def open(self, request_id: str, interaction: str | None, now: float) -> ConnectionRecord:
        rec = ConnectionRecord(self._next_id, request_id, interaction, now)
        self._next_id += 1
        self.open_records[rec.id] = rec
        self.totals["connections"] += 1
        self.totals["open"] += 1
        if interaction is not None:
            stats = self.interactions.get(interaction)
            if stats is None:
                stats = self.interactions[interaction] = InteractionStats()
            else:
                self.interactions.move_to_end(interaction)
            stats.connections += 1
            if stats.open > 0:
                stats.duplicates += 1
                rec.duplicate = True
                self.totals["duplicates"] += 1
            stats.open += 1
            stats.max_open = max(stats.max_open, stats.open)
            self._evict_interactions()
        return rec

    def close(self, rec: ConnectionRecord, code: int | None, reason: str | None, now: float) -> None:
        if self.open_records.pop(rec.id, None) is None:
            return  # already closed (idempotent)
        rec.closed_at, rec.close_code, rec.close_reason = now, code, reason
        t = self.totals
        t["open"] -= 1
        key = {1000: "closes_1000", 1011: "closes_1011", 1008: "closes_1008", None: "dropped", 1006: "dropped"}
        t[key.get(code, "closes_other")] += 1
        if code is not None:
            self.close_codes[code] = self.close_codes.get(code, 0) + 1
        t["audio_bytes"] += rec.audio_bytes
        t["audio_seconds"] += rec.audio_seconds
        t["keepalives"] += rec.keepalives
        t["finalizes"] += rec.finalizes
        t["close_streams"] += int(rec.close_stream)
        t["results_sent"] += rec.results_sent
        t["messages_sent"] += rec.messages_sent
        t["schema_errors"] += rec.schema_errors
        if rec.interaction is not None and rec.interaction in self.interactions:
            self.interactions[rec.interaction].open -= 1
        self.closed_records.append(rec)
        while len(self.closed_records) > self.max_closed:
            self.closed_records.popleft()
            t["records_evicted"] += 1

    def rejected(self, status: int, now: float) -> None:
        key = f"rejected_{status}"
        self.totals[key] = self.totals.get(key, 0) + 1
        self.rejections.append((now, status))
        while len(self.rejections) > self.max_closed:
            self.rejections.popleft()

    def _evict_interactions(self) -> None:
        if len(self.interactions) <= self.max_interactions:
            return
        for key in list(self.interactions):
            if len(self.interactions) <= self.max_interactions:
                break
            if self.interactions[key].open == 0:
                del self.interactions[key]
                self.totals["interactions_evicted"] += 1

    def reset(self) -> None:
        """Forget closed history and zero the counters; open connections stay counted as open."""
        self.closed_records.clear()
        self.rejections.clear()
        self.totals = _zero_totals()
        self.totals["open"] = len(self.open_records)
        self.close_codes.clear()
        kept: OrderedDict[str, InteractionStats] = OrderedDict()
        for rec in self.open_records.values():
            rec.duplicate = False
            if rec.interaction is not None:
                stats = kept.setdefault(rec.interaction, InteractionStats())
                stats.open += 1
                stats.max_open = stats.open
        self.interactions = kept

    def snapshot(self) -> dict:
        """The ``/stats`` document. Live counters of open connections are included in their records."""
        totals = dict(self.totals)
        for rec in self.open_records.values():  # live audio/results of open connections count too
            totals["audio_bytes"] += rec.audio_bytes
            totals["audio_seconds"] += rec.audio_seconds
            totals["keepalives"] += rec.keepalives
            totals["finalizes"] += rec.finalizes
            totals["results_sent"] += rec.results_sent
            totals["messages_sent"] += rec.messages_sent
            totals["schema_errors"] += rec.schema_errors
        totals["audio_seconds"] = round(totals["audio_seconds"], 6)
        totals["close_codes"] = {str(k): v for k, v in sorted(self.close_codes.items())}
        return {
            "connections": [r.as_dict() for r in self.closed_records]
            + [r.as_dict() for r in self.open_records.values()],
            "interactions": {k: {"connections": v.connections, "duplicates": v.duplicates,
                                 "max_open": v.max_open, "open": v.open} for k, v in self.interactions.items()},
            "rejections": [{"at": at, "status": status} for at, status in self.rejections],
            "totals": totals,
        }


class AccountingCollector:
    """Prometheus view of an :class:`Accounting`, computed at scrape time (no per-frame metric calls)."""

    def __init__(self, accounting_getter) -> None:
        self._get = accounting_getter

    def collect(self):
        snap_totals = self._get().snapshot()["totals"]
        counters = {
            "connections": "WebSocket streams accepted",
            "duplicates": "streams opened while another stream of the same interaction was open",
            "audio_bytes": "audio bytes received", "audio_seconds": "audio seconds received",
            "keepalives": "KeepAlive messages received", "finalizes": "Finalize messages received",
            "results_sent": "Results messages sent", "schema_errors": "text messages answered with an Error SchemaError (bad JSON, unknown type)",
        }
        for key, doc in counters.items():
            yield CounterMetricFamily(f"rtaa_emulator_{key}", doc, value=snap_totals[key])
        closes = CounterMetricFamily("rtaa_emulator_closes", "streams closed, by close code (1006: dropped)",
                                     labels=["code"])
        for code, count in snap_totals["close_codes"].items():
            closes.add_metric([code], count)
        yield closes
        rejected = CounterMetricFamily("rtaa_emulator_handshake_rejections", "handshakes refused, by HTTP status",
                                       labels=["status"])
        for status in ("400", "401", "429"):
            rejected.add_metric([status], snap_totals.get(f"rejected_{status}", 0))
        yield rejected
        yield GaugeMetricFamily("rtaa_emulator_open_streams", "streams open now", value=snap_totals["open"])


def make_registry(accounting_getter) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AccountingCollector(accounting_getter))
    return registry
