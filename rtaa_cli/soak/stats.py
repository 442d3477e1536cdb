"""Sans-I/O soak metrics: histograms, per-call records, thresholds and the verdict.

No sockets, no clocks, no Locust: the load generator feeds :class:`CallRecord` dicts (and provider
/ target snapshots) into :class:`SoakStats`, which reduces them to the report's summary. Tests drive
it with hand-made records and compare against values computed independently.

Latency percentiles are *nearest-rank* over values rounded to 1 ms: the p-th percentile is the
smallest recorded value such that at least p % of the samples are <= it. ``max`` is exact (not
rounded). Pacing lateness uses the pacer's own histogram (:class:`rtaa_cli.pacing.LatenessHistogram`). Histograms are sparse dicts
of bucket -> count, so they merge across Locust workers and stay bounded by ``cap_ms/resolution``
distinct buckets whatever the run length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from rtaa_cli.pacing import LatenessHistogram
from rtaa_cli.soak.memory import TargetMemory

PERCENTILES = (50, 90, 95, 99)


class Histogram:
    """Counts of values rounded to ``resolution_ms``; values above ``cap_ms`` land in the cap bucket
    (counted in ``clipped``) so memory stays bounded; ``max``/``min`` stay exact."""

    __slots__ = ("resolution_ms", "cap_ms", "counts", "n", "max", "min", "clipped", "_sum")

    def __init__(self, resolution_ms: float = 1.0, cap_ms: float = 600_000.0) -> None:
        self.resolution_ms = resolution_ms
        self.cap_ms = cap_ms
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max: float | None = None
        self.min: float | None = None
        self.clipped = 0
        self._sum = 0.0

    def add(self, value_ms: float) -> None:
        if value_ms != value_ms:  # NaN: nothing sensible to count
            return
        if value_ms > self.cap_ms:
            self.clipped += 1
            bucket = math.floor(self.cap_ms / self.resolution_ms + 0.5)
        else:
            bucket = math.floor(value_ms / self.resolution_ms + 0.5)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.n += 1
        self._sum += value_ms
        if self.max is None or value_ms > self.max:
            self.max = value_ms
        if self.min is None or value_ms < self.min:
            self.min = value_ms

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: "Histogram") -> None:
        if other.resolution_ms != self.resolution_ms:
            raise ValueError("cannot merge histograms of different resolutions")
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.n += other.n
        self.clipped += other.clipped
        self._sum += other._sum
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile (rounded to the resolution, clamped to the exact min/max so a
        percentile never exceeds the maximum); None when empty."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(p / 100.0 * self.n))
        seen = 0
        value = max(self.counts) * self.resolution_ms
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                value = bucket * self.resolution_ms
                break
        value = min(max(value, self.min), self.max)  # type: ignore[type-var]
        return round(value, 3)

    @property
    def mean(self) -> float | None:
        return None if self.n == 0 else self._sum / self.n

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.n}
        for p in PERCENTILES:
            out[f"p{p}"] = self.percentile(p)
        out["max"] = None if self.max is None else round(self.max, 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for Locust messages (keys are strings in JSON anyway)."""
        return {"r": self.resolution_ms, "c": {str(k): v for k, v in self.counts.items()}, "n": self.n,
                "max": self.max, "min": self.min, "clipped": self.clipped, "sum": self._sum}

    @classmethod
    def from_dict(cls, data: dict[str, Any], cap_ms: float = 600_000.0) -> "Histogram":
        h = cls(data["r"], cap_ms)
        h.counts = {int(k): int(v) for k, v in data["c"].items()}
        h.n, h.max, h.min = int(data["n"]), data["max"], data["min"]
        h.clipped, h._sum = int(data.get("clipped", 0)), float(data.get("sum", 0.0))
        return h


LATENCY_RESOLUTION_MS = 1.0


def lateness_to_dict(h: LatenessHistogram) -> dict[str, Any]:
    """Sparse JSON form of the pacer's lateness histogram (the pacer owns the binning)."""
    return {"c": {str(i): n for i, n in enumerate(h.counts) if n}, "n": h.count, "sum": h.total_ms, "max": h.max_ms}


def lateness_from_dict(d: dict[str, Any]) -> LatenessHistogram:
    h = LatenessHistogram()
    for i, n in d["c"].items():
        h.counts[int(i)] = int(n)
    h.count, h.total_ms, h.max_ms = int(d["n"]), float(d["sum"]), float(d["max"])
    return h


def lateness_summary(h: LatenessHistogram) -> dict[str, Any]:
    if not h.count:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {"count": h.count, "p50": round(h.percentile(50), 3), "p99": round(h.percentile(99), 3),
            "max": round(h.max_ms, 3)}


# --------------------------------------------------------------------------- per-call record

@dataclass
class CallRecord:
    """What one virtual call reports when it ends (sent worker -> master as ``to_dict()``).

    ``kind`` is the scenario behaviour (``normal``, ``hold``, ``disconnect``, ``second_stream``,
    ``bad:<what>``). Latency samples are ``(received_at_wall, latency_ms)`` pairs (the timeline
    needs the time); ``lateness`` is the pacer's send lateness histogram of this call.
    ``closes`` are the close codes the *caller* saw, one per stream it opened (None: no close frame).
    ``expected_closes`` lists the acceptable codes for a bad-input call (empty for normal calls).
    """

    call_sid: str
    kind: str = "normal"
    started_at: float = 0.0
    ended_at: float = 0.0
    connected: bool = True  # False when no stream could be opened at all
    failure: str | None = None  # why the call failed (None: completed)
    streams: int = 1
    closes: list[int | None] = field(default_factory=list)
    close_reasons: list[str] = field(default_factory=list)
    expected_closes: list[int | None] = field(default_factory=list)  # None: "server left it open" is fine
    frames_sent: int = 0
    audio_bytes_sent: int = 0  # valid media payload bytes (what the provider should receive)
    audio_ms_sent: float = 0.0
    final_audio_end_ms: float | None = None  # furthest audio covered by a final result
    transcripts_observed: bool = True  # False when no transcript feed was read (delivery unknown)
    results: int = 0
    feed_messages: int = 0  # messages that arrived on the call's transcript feed
    feed_unrecognised: int = 0  # of those, not understood (a foreign schema without --feed-map)
    first_partial: list[tuple[float, float]] = field(default_factory=list)
    final: list[tuple[float, float]] = field(default_factory=list)
    lateness: LatenessHistogram = field(default_factory=LatenessHistogram)  # the pacer's own histogram
    drift_ms: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def is_bad_input(self) -> bool:
        return self.kind.startswith("bad:")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["lateness"] = lateness_to_dict(self.lateness)
        d["first_partial"] = [list(x) for x in self.first_partial]
        d["final"] = [list(x) for x in self.final]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CallRecord":
        d = dict(d)
        d["lateness"] = lateness_from_dict(d["lateness"])
        d["first_partial"] = [tuple(x) for x in d.get("first_partial", [])]
        d["final"] = [tuple(x) for x in d.get("final", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- thresholds

@dataclass(frozen=True)
class Threshold:
    """``name`` is a summary metric (see :data:`METRICS`); ``kind`` "max" means value <= limit passes,
    "min" means value >= limit passes."""

    name: str
    limit: float
    kind: str  # "max" | "min"

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None  # not measurable in this run (e.g. no provider stats for a remote target)
        return value <= self.limit if self.kind == "max" else value >= self.limit


# metric name -> (kind, default limit or None when off by default, description)
METRICS: dict[str, tuple[str, float | None, str]] = {
    "duplicates": ("max", 0, "provider connections opened while another was open for the same call"),
    "closes_1011_rate": ("max", 0.05, "1011 closes (provider + caller side) per call started"),
    "caller_1011_rate": ("max", None, "1011 closes seen by callers per call started"),
    "provider_1011_rate": ("max", None, "1011 closes on provider connections per call started"),
    "latency_final_p95_ms": ("max", 2000, "p95 latency of final results (ms)"),
    "latency_final_p99_ms": ("max", None, "p99 latency of final results (ms)"),
    "latency_first_partial_p95_ms": ("max", None, "p95 latency of first partial results (ms)"),
    "delivery_rate": ("min", 0.80, "share of calls whose final results covered their audio"),
    "audio_loss": ("max", 0.01, "1 - provider-received audio bytes / sent audio bytes"),
    "failed_rate": ("max", None, "share of calls that failed (connection error, unexpected close)"),
    "bad_input_unexpected": ("max", 0, "bad-input calls that did not get their expected close code"),
    "memory_growth_mb_per_h": ("max", None, "growth of the target's resident memory over the steady part of the "
                               "run, MB/hour (its /metrics process_resident_memory_bytes; needs >= 60 s of it)"),
}


def default_thresholds() -> dict[str, Threshold]:
    return {name: Threshold(name, float(limit), kind)
            for name, (kind, limit, _) in METRICS.items() if limit is not None}


def parse_threshold_override(text: str) -> tuple[str, float | None]:
    """``name=value`` (``name=off`` disables). Raises ValueError with a readable message."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in METRICS:
        raise ValueError(f"bad threshold {text!r}: expected NAME=VALUE with NAME one of {', '.join(METRICS)}")
    value = value.strip()
    if value.lower() in ("off", "none", "disabled"):
        return name, None
    try:
        return name, float(value.rstrip("%")) / (100.0 if value.endswith("%") else 1.0)
    except ValueError:
        raise ValueError(f"bad threshold {text!r}: {value!r} is not a number") from None


def apply_overrides(base: dict[str, Threshold], overrides: dict[str, float | None]) -> dict[str, Threshold]:
    out = dict(base)
    for name, limit in overrides.items():
        if name not in METRICS:
            raise ValueError(f"unknown threshold {name!r}; known: {', '.join(METRICS)}")
        if limit is None:
            out.pop(name, None)
        else:
            out[name] = Threshold(name, float(limit), METRICS[name][0])
    return out


# --------------------------------------------------------------------------- provider stats

@dataclass
class ProviderCounts:
    """What the provider side (emulator /stats, or the target's metrics) says about this run's calls."""

    connections: int = 0
    duplicates: int | None = 0  # None: the source cannot tell
    closes_1011: int = 0
    audio_bytes: int | None = None  # None when the source has no per-byte accounting
    source: str = ""


def provider_counts_from_emulator(stats: dict[str, Any], interaction_prefix: str) -> ProviderCounts:
    """Reduce an emulator ``/stats`` document to this run's interactions (ids starting with
    ``interaction_prefix``, so a shared emulator's other traffic is ignored)."""
    out = ProviderCounts(source="emulator", audio_bytes=0)
    for iid, info in (stats.get("interactions") or {}).items():
        if str(iid).startswith(interaction_prefix):
            out.connections += int(info.get("connections", 0))
            out.duplicates += int(info.get("duplicates", 0))
    have_bytes = False
    for conn in stats.get("connections") or []:
        if not str(conn.get("interaction") or conn.get("interaction_id") or "").startswith(interaction_prefix):
            continue
        code = conn.get("close_code")
        if code == 1011:
            out.closes_1011 += 1
        b = conn.get("audio_bytes", conn.get("bytes_received"))
        if b is not None:
            have_bytes = True
            out.audio_bytes += int(b)
    if not have_bytes:
        out.audio_bytes = None
    return out


# Prometheus names a target may expose (rtaa serve does; any pipeline can): counters, so the soak
# uses their increase between the start and the end of the run.
METRIC_DUPLICATES = "rtaa_provider_duplicate_connections"
METRIC_PROVIDER_CLOSES = "rtaa_provider_closes"  # label code="1011"
METRIC_PROVIDER_OPENED = "rtaa_provider_connections_opened"


def _metric_values(text: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            name = sample.name[:-6] if sample.name.endswith("_total") else sample.name
            out[(name, sample.labels.get("code", ""))] = out.get((name, sample.labels.get("code", "")), 0.0) + sample.value
    return out


def provider_counts_from_metrics(before: str, after: str) -> ProviderCounts:
    """Provider-side counts from a target's ``/metrics`` scraped before and after the run (the
    increase; it includes any other traffic the target had meanwhile). Absent metrics -> None."""
    b, a = _metric_values(before), _metric_values(after)

    def delta(name: str, code: str = "") -> int | None:
        if (name, code) not in a:
            return None
        return int(a[(name, code)] - b.get((name, code), 0.0))

    dup = delta(METRIC_DUPLICATES)
    c = ProviderCounts(source="target metrics", audio_bytes=None)
    c.duplicates = dup  # type: ignore[assignment]  # None: the target does not count them
    c.closes_1011 = delta(METRIC_PROVIDER_CLOSES, "1011") or 0
    c.connections = delta(METRIC_PROVIDER_OPENED) or 0
    return c


# --------------------------------------------------------------------------- timeline

class Timeline:
    """Per-bucket series for the HTML report: calls started/ended/failed, active calls, errors and
    final-latency histograms. ``bucket_s`` is chosen from the planned duration so there are at most
    ~``max_points`` buckets; events past the last bucket fold into it (bounded)."""

    def __init__(self, t0: float, duration_s: float, max_points: int = 600) -> None:
        self.t0 = t0
        self.bucket_s = max(1.0, math.ceil(max(duration_s, 1.0) * 1.5 / max_points))
        self.n = max_points
        self.started = [0] * max_points
        self.ended = [0] * max_points
        self.failed = [0] * max_points
        self.errors = [0] * max_points
        self.latency: list[Histogram | None] = [None] * max_points
        self.first_partial: list[Histogram | None] = [None] * max_points
        self.last = 0

    def _idx(self, t: float) -> int:
        i = int((t - self.t0) // self.bucket_s)
        i = 0 if i < 0 else (self.n - 1 if i >= self.n else i)
        self.last = max(self.last, i)
        return i

    def add_call(self, rec: CallRecord) -> None:
        self.started[self._idx(rec.started_at)] += 1
        end = self._idx(rec.ended_at)
        self.ended[end] += 1
        if rec.failure:
            self.failed[end] += 1
        if rec.errors:
            self.errors[end] += len(rec.errors)
        for series, samples in ((self.latency, rec.final), (self.first_partial, rec.first_partial)):
            for t, ms in samples:
                i = self._idx(t)
                h = series[i]
                if h is None:
                    h = series[i] = Histogram(LATENCY_RESOLUTION_MS)
                h.add(ms)

    def series(self) -> dict[str, Any]:
        n = self.last + 1
        active, cur = [], 0
        for i in range(n):
            cur += self.started[i]
            active.append(cur)
            cur -= self.ended[i]

        def pct(hs: list[Histogram | None], p: float) -> list[float | None]:
            return [None if h is None else h.percentile(p) for h in hs[:n]]

        return {
            "bucket_s": self.bucket_s,
            "t": [i * self.bucket_s for i in range(n)],
            "started": self.started[:n], "ended": self.ended[:n], "failed": self.failed[:n],
            "errors": self.errors[:n], "active": active,
            "final_p50": pct(self.latency, 50), "final_p95": pct(self.latency, 95),
            "final_max": [None if h is None else h.max for h in self.latency[:n]],
            "first_partial_p50": pct(self.first_partial, 50),
        }


# --------------------------------------------------------------------------- the aggregator

@dataclass
class PacingLimits:
    max_lateness_p99_ms: float = 25.0  # above: the load generator was the bottleneck -> INVALID


class SoakStats:
    """Accumulates call records; ``summary()`` gives the report document (verdict included)."""

    def __init__(self, *, t0: float = 0.0, duration_s: float = 60.0, delivery_tolerance_ms: float = 1000.0,
                 max_failure_samples: int = 50) -> None:
        self.calls_started = 0  # from call-start notifications (live), >= records
        self.records = 0
        self.completed = 0
        self.failed = 0
        self.by_kind: dict[str, dict[str, int]] = {}
        self.first_partial = Histogram(LATENCY_RESOLUTION_MS)
        self.final = Histogram(LATENCY_RESOLUTION_MS)
        self.lateness = LatenessHistogram()
        self.max_abs_drift_ms = 0.0
        self.delivered = 0
        self.delivery_eligible = 0
        self.audio_bytes_sent = 0
        self.frames_sent = 0
        self.caller_1011 = 0
        self.closes: dict[str, int] = {}
        self.bad_input_calls = 0
        self.bad_input_unexpected = 0
        self.failure_reasons: dict[str, int] = {}
        self.failure_samples: list[dict[str, Any]] = []
        self.max_failure_samples = max_failure_samples
        self.delivery_tolerance_ms = delivery_tolerance_ms
        self.timeline = Timeline(t0, duration_s)
        self.provider: ProviderCounts | None = None
        self.memory: TargetMemory | None = None  # the target's RSS, when its /metrics has it
        self.memory_window_s = (0.0, 0.0)  # steady part of the run (seconds from t0) for the growth slope
        self.generator_cpu_warning = False
        self.invalid_reasons: list[str] = []

    # -- feeding
    def call_started(self) -> None:
        self.calls_started += 1

    def add(self, rec: CallRecord) -> None:
        self.records += 1
        kind = self.by_kind.setdefault(rec.kind, {"calls": 0, "failed": 0})
        kind["calls"] += 1
        self.frames_sent += rec.frames_sent
        self.audio_bytes_sent += rec.audio_bytes_sent
        self.lateness.merge(rec.lateness)
        self.max_abs_drift_ms = max(self.max_abs_drift_ms, abs(rec.drift_ms))
        for code in rec.closes:
            key = "none" if code is None else str(code)
            self.closes[key] = self.closes.get(key, 0) + 1
        if rec.is_bad_input:
            self.bad_input_calls += 1
            if not rec.closes or rec.closes[-1] not in rec.expected_closes:
                self.bad_input_unexpected += 1
                self._failure(rec, f"bad input {rec.kind}: expected close {rec.expected_closes}, got {rec.closes}")
                kind["failed"] += 1
                self.failed += 1
            else:
                self.completed += 1
        else:
            self.caller_1011 += sum(1 for c in rec.closes if c == 1011)
            for _, ms in rec.first_partial:
                self.first_partial.add(ms)
            for _, ms in rec.final:
                self.final.add(ms)
            if rec.connected and rec.audio_bytes_sent > 0 and rec.transcripts_observed:
                self.delivery_eligible += 1
                if self.is_delivered(rec):
                    self.delivered += 1
            if rec.failure:
                self.failed += 1
                kind["failed"] += 1
                self._failure(rec, rec.failure)
            else:
                self.completed += 1
        self.timeline.add_call(rec)

    def is_delivered(self, rec: CallRecord) -> bool:
        """A call is delivered when its final results cover the audio it sent, within tolerance
        (so a target that never finalizes on stop loses the call's tail and is caught)."""
        return rec.final_audio_end_ms is not None and \
            rec.final_audio_end_ms >= rec.audio_ms_sent - self.delivery_tolerance_ms

    def _failure(self, rec: CallRecord, reason: str) -> None:
        key = reason.split(":")[0][:80]
        self.failure_reasons[key] = self.failure_reasons.get(key, 0) + 1
        if len(self.failure_samples) < self.max_failure_samples:
            self.failure_samples.append({"call_sid": rec.call_sid, "kind": rec.kind, "reason": reason[:300]})

    def set_provider(self, counts: ProviderCounts | None) -> None:
        self.provider = counts

    # -- reduction
    def metrics(self) -> dict[str, float | None]:
        started = max(self.calls_started, self.records)
        p = self.provider
        prov_1011 = p.closes_1011 if p else None
        audio_loss = None
        if p and p.audio_bytes is not None and self.audio_bytes_sent > 0:
            audio_loss = max(0.0, 1.0 - p.audio_bytes / self.audio_bytes_sent)
        total_1011 = self.caller_1011 + (prov_1011 or 0)
        return {
            "duplicates": None if p is None else p.duplicates,
            "closes_1011_rate": (total_1011 / started) if started else None,
            "caller_1011_rate": (self.caller_1011 / started) if started else None,
            "provider_1011_rate": (prov_1011 / started) if (started and prov_1011 is not None) else None,
            "latency_final_p95_ms": self.final.percentile(95),
            "latency_final_p99_ms": self.final.percentile(99),
            "latency_first_partial_p95_ms": self.first_partial.percentile(95),
            "delivery_rate": (self.delivered / self.delivery_eligible) if self.delivery_eligible else None,
            "audio_loss": audio_loss,
            "failed_rate": (self.failed / self.records) if self.records else None,
            "bad_input_unexpected": self.bad_input_unexpected,
            "memory_growth_mb_per_h": None if self.memory is None else self.memory.growth_mb_per_h(*self.memory_window_s),
        }

    def evaluate(self, thresholds: dict[str, Threshold], pacing: PacingLimits) -> tuple[str, list[dict[str, Any]]]:
        values = self.metrics()
        rows = []
        for name, th in thresholds.items():
            value = values.get(name)
            rows.append({"name": name, "limit": th.limit, "kind": th.kind,
                         "value": None if value is None else round(value, 6), "passed": th.check(value)})
        invalid = list(self.invalid_reasons)
        late_p99 = self.lateness.percentile(99) if self.lateness.count else None
        if late_p99 is not None and late_p99 > pacing.max_lateness_p99_ms:
            invalid.append(f"load generator lateness p99 {late_p99:.1f} ms > {pacing.max_lateness_p99_ms:g} ms")
        if self.generator_cpu_warning:
            invalid.append("load generator CPU above 90 % (Locust CPU warning)")
        if self.records == 0:
            invalid.append("no call finished: nothing was measured")
        self._invalid = invalid
        if invalid:
            return "invalid", rows
        return ("fail" if any(r["passed"] is False for r in rows) else "pass"), rows

    def summary(self, thresholds: dict[str, Threshold], pacing: PacingLimits) -> dict[str, Any]:
        verdict, rows = self.evaluate(thresholds, pacing)
        started = max(self.calls_started, self.records)
        m = self.metrics()
        p = self.provider
        prov_1011 = p.closes_1011 if p else None
        return {
            "verdict": verdict,
            "invalid_reasons": self._invalid,
            "calls": {"started": started, "finished": self.records, "completed": self.completed,
                      "failed": self.failed, "unfinished": started - self.records, "by_kind": self.by_kind,
                      "bad_input": self.bad_input_calls, "bad_input_unexpected": self.bad_input_unexpected},
            "duplicates": m["duplicates"],
            "provider": None if p is None else {"source": p.source, "connections": p.connections,
                                                 "audio_bytes": p.audio_bytes},
            "closes_1011": {"provider": prov_1011, "caller": self.caller_1011, "rate": m["closes_1011_rate"]},
            "caller_closes": dict(sorted(self.closes.items())),
            "latency_ms": {"first_partial": self.first_partial.summary(), "final": self.final.summary()},
            "delivery_rate": m["delivery_rate"],
            "delivered": self.delivered, "delivery_eligible": self.delivery_eligible,
            "audio": {"bytes_sent": self.audio_bytes_sent, "bytes_received_by_provider": None if p is None else p.audio_bytes,
                      "loss": m["audio_loss"], "frames_sent": self.frames_sent},
            "pacing": {"lateness_ms": lateness_summary(self.lateness), "max_abs_drift_ms": round(self.max_abs_drift_ms, 3),
                       "limit_p99_ms": pacing.max_lateness_p99_ms, "cpu_warning": self.generator_cpu_warning},
            "thresholds": rows,
            "failures": {"by_reason": self.failure_reasons, "samples": self.failure_samples},
            "timeline": self.timeline.series(),
            "target_memory": None if self.memory is None else self.memory.summary(*self.memory_window_s),
        }
