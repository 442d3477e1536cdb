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
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from rtaa_cli import textmark, verdict
from rtaa_cli.emulator.messages import INTERNAL_FAULT
from rtaa_cli.pacing import LatenessHistogram
from rtaa_cli.protocols.deepgram import NET0001
from rtaa_cli.soak.callsample import CallSampler
from rtaa_cli.soak.memory import TargetMemory
from rtaa_cli.watermark import PACKET_BITS, CallSeen, call_hex

if TYPE_CHECKING:
    from rtaa_cli.call.recorder import CallResult

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

    @property
    def sum_ms(self) -> float:
        return self._sum

    def count_le(self, edge_ms: float) -> int:
        """Values at or below ``edge_ms`` (to the resolution): a Prometheus histogram bucket."""
        top = math.floor(edge_ms / self.resolution_ms + 1e-9)
        return sum(n for bucket, n in self.counts.items() if bucket <= top)

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
    finals: int = 0  # final results with text
    feed_messages: int = 0  # messages that arrived on the call's transcript feed
    feed_unrecognised: int = 0  # of those, not understood (a foreign schema without --feed-map)
    first_partial: list[tuple[float, float]] = field(default_factory=list)
    final: list[tuple[float, float]] = field(default_factory=list)
    lateness: LatenessHistogram = field(default_factory=LatenessHistogram)  # the pacer's own histogram
    drift_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    # wall-time spans in which the caller sent no media on purpose (holds, reconnect pauses): the
    # audio it sent during a provider connection's life is the connection's span minus these
    media_gaps: list[tuple[float, float]] = field(default_factory=list)
    server_hangup: bool = False  # the server closed 1000 before stop and the scenario allows it
    # the emulator's text watermark on the call's feed (rtaa_cli/textmark.py)
    marked_results: int = 0
    repeated_finals: int = 0  # marked finals that arrived again
    gaps: int = 0  # `gap` messages on the call's feed: audio the pipeline says no final will cover
    gap_ms: float = 0.0
    mark_connections: dict[str, int] = field(default_factory=dict)  # emulator connection id -> marked results

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
    def from_result(cls, r: CallResult) -> CallRecord:
        """The soak's record of a call the caller core played (rtaa_cli/call/recorder.py).

        ``audio_ms_sent`` is the audio's length once the call's media is complete (every frame sent,
        or the bot hung up, ``server_hangup``); a call cut short mid-media reports 0 (its audio is
        counted in bytes)."""
        s = r.latency
        complete = r.frames_sent >= r.frames_total or r.server_hangup
        return cls(
            call_sid=r.call_sid, kind=r.kind, started_at=r.started_at, ended_at=r.ended_at, connected=r.connected,
            failure=r.failure, streams=r.streams, closes=[c.code for c in r.closes],
            close_reasons=[c.reason for c in r.closes], expected_closes=list(r.expected_closes),
            frames_sent=r.frames_sent, audio_bytes_sent=r.bytes_sent,
            audio_ms_sent=r.audio_ms_sent if complete else 0.0,
            final_audio_end_ms=s.final_audio_end_ms, transcripts_observed=r.transcripts_observed,
            results=s.results, finals=s.finals, feed_messages=r.feed_messages, feed_unrecognised=r.feed_unrecognised,
            first_partial=s.first_partial, final=s.final,
            lateness=r.pacer.lateness if r.pacer is not None else LatenessHistogram(),
            drift_ms=r.pacer.drift_s * 1000.0 if r.pacer is not None else 0.0,
            errors=list(r.errors), media_gaps=list(r.media_gaps), server_hangup=r.server_hangup,
            marked_results=r.marked_results, repeated_finals=r.repeated_finals, gaps=r.gaps, gap_ms=r.gap_ms,
            mark_connections=dict(r.mark_connections))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CallRecord":
        d = dict(d)
        d["lateness"] = lateness_from_dict(d["lateness"])
        d["first_partial"] = [tuple(x) for x in d.get("first_partial", [])]
        d["final"] = [tuple(x) for x in d.get("final", [])]
        d["media_gaps"] = [tuple(x) for x in d.get("media_gaps", [])]
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
    strict: bool = False  # "<" / ">" instead of "<=" / ">="

    @property
    def op(self) -> str:
        return ("<" if self.kind == "max" else ">") + ("" if self.strict else "=")

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None  # not measurable in this run (e.g. no provider stats for a remote target)
        if self.kind == "max":
            return value < self.limit if self.strict else value <= self.limit
        return value > self.limit if self.strict else value >= self.limit


# metric name -> (kind, default limit or None when off by default, description)
METRICS: dict[str, tuple[str, float | None, str]] = {
    "completed_calls": ("min", 1, "calls that completed (0 completed calls always fails)"),
    "failed_rate": ("max", 0.10, "share of calls that failed (handshake refused, connection error, unexpected close)"),
    "duplicates": ("max", 0, "provider connections opened while another was open for the same call"),
    "closes_1011_rate": ("max", 0.05, "1011 closes (provider + caller side) per call started"),
    "caller_1011_rate": ("max", None, "1011 closes seen by callers per call started"),
    "provider_1011_rate": ("max", None, "1011 closes on provider connections per call started"),
    "latency_final_p95_ms": ("max", 2000, "p95 latency of final results (ms)"),
    "latency_final_p99_ms": ("max", None, "p99 latency of final results (ms)"),
    "latency_first_partial_p95_ms": ("max", None, "p95 latency of first partial results (ms)"),
    "delivery_rate": ("min", 0.80, "share of calls whose final results covered their audio"),
    "audio_loss": ("max", 0.01, "share of the sent audio that never reached the provider (calls with one provider "
                   "connection, and reconnecting calls by their audio watermark)"),
    "unattributed_connections": ("max", 0, "provider connections during the run that no call of the run can be "
                                 "matched to (no tag / extra=interaction_id)"),
    "calls_unreached_rate": ("max", 0, "share of the run's audio-sending calls for which the provider saw no connection"),
    "provider_open_at_end": ("max", 0, "provider streams still open after the post-run watch window (leaked)"),
    "provider_opened_after_end": ("max", 0, "provider connections opened after the last call ended (reconnect loops)"),
    "bad_input_unexpected": ("max", 0, "bad-input calls that did not get their expected close code"),
    "results_repeated": ("max", 0, "final results that arrived on a call's feed more than once (by the emulator's "
                         "text mark; judged when the provider marks its results)"),
    "cross_talk_results": ("max", 0, "results on a call's feed that the provider produced for another call's "
                           "connection (by the text mark; judged when the provider marks its results)"),
    "memory_growth_mb_per_h": ("max", None, "growth of the target's resident memory over the steady part of the "
                               "run, MB/hour (its /metrics process_resident_memory_bytes; needs >= 60 s of it)"),
}

# Every percentile of both latencies is a metric (``latency_final_p50_ms`` ... ``latency_first_partial_max_ms``).
LATENCY_KINDS = ("final", "first_partial")
LATENCY_STATS = ("p50", "p90", "p95", "p99", "max")
for _kind in LATENCY_KINDS:
    for _stat in LATENCY_STATS:
        METRICS.setdefault(f"latency_{_kind}_{_stat}_ms",
                           ("max", None, f"{_stat} latency of {_kind.replace('_', ' ')} results (ms)"))

# The thresholds that need the provider's per-connection records (the emulator's /stats).
PROVIDER_RECORD_METRICS = ("audio_loss", "unattributed_connections", "calls_unreached_rate", "provider_open_at_end",
                           "provider_opened_after_end")


def default_thresholds() -> dict[str, Threshold]:
    return {name: Threshold(name, float(limit), kind)
            for name, (kind, limit, _) in METRICS.items() if limit is not None}


_OPERATORS = ("<=", ">=", "==", "<", ">", "=")  # longest first
_LATENCY_ALIAS = re.compile(r"latency_(final|first_partial)_(p\d+|max)(?:_ms)?")


def canonical_metric(token: str) -> str:
    """``latency.final.p99`` / ``closes_1011.rate`` / a METRICS name -> the METRICS name; ValueError naming it."""
    t = token.strip()
    if t in METRICS:
        return t
    flat = t.replace(".", "_").replace("-", "_")
    if flat in METRICS:
        return flat
    m = _LATENCY_ALIAS.fullmatch(flat)
    if m and f"latency_{m[1]}_{m[2]}_ms" in METRICS:
        return f"latency_{m[1]}_{m[2]}_ms"
    raise ValueError(f"unknown metric {t!r}: use one of {', '.join(n for n in METRICS if not n.startswith('latency_'))}, "
                     f"or latency.final|first_partial.{'|'.join(LATENCY_STATS)}")


def parse_threshold_override(text: str) -> tuple[str, float | None | Threshold]:
    """``NAME=VALUE`` (the metric's own direction; ``NAME=off`` disables) or ``NAME OP VALUE`` with OP one
    of ``< <= > >=`` (``-t 'latency.final.p99<1500'``). VALUE is a number, ``80%`` = 0.8. Returns the
    metric name and a limit, None (off) or a Threshold (an explicit operator). ValueError names the bad token."""
    pos, op = min(((text.find(o), o) for o in _OPERATORS if o in text), default=(-1, ""),
                  key=lambda found: (found[0], -len(found[1])))
    if not op:
        raise ValueError(f"bad threshold {text!r}: expected NAME=VALUE or NAME<VALUE (e.g. latency.final.p99<1500)")
    try:
        name = canonical_metric(text[:pos])
    except ValueError as exc:
        raise ValueError(f"bad threshold {text!r}: {exc}") from None
    value = text[pos + len(op):].strip()
    if value.lower() in ("off", "none", "disabled") and op in ("=", "=="):
        return name, None
    try:
        limit = float(value.rstrip("%")) / (100.0 if value.endswith("%") else 1.0)
    except ValueError:
        raise ValueError(f"bad threshold {text!r}: {value!r} is not a number") from None
    if op in ("=", "=="):
        return name, limit
    return name, Threshold(name, limit, "max" if op.startswith("<") else "min", strict=op in ("<", ">"))


def apply_overrides(base: dict[str, Threshold],
                    overrides: dict[str, float | None | Threshold]) -> dict[str, Threshold]:
    out = dict(base)
    for name, limit in overrides.items():
        if name not in METRICS:
            raise ValueError(f"unknown threshold {name!r}; known: {', '.join(METRICS)}")
        if limit is None:
            out.pop(name, None)
        elif isinstance(limit, Threshold):
            out[name] = limit
        else:
            out[name] = Threshold(name, float(limit), METRICS[name][0])
    return out


# --------------------------------------------------------------------------- provider stats

@dataclass
class ProviderCounts:
    """What the provider side (emulator /stats, or the target's metrics) says about this run's calls.

    ``records`` is True when the source has per-connection records (the emulator): then the
    attribution fields below are measured; from a target's metrics they are not (None/empty)."""

    connections: int = 0  # attributed to this run's calls
    duplicates: int | None = 0  # None: the source cannot tell
    closes_1011: int = 0
    audio_bytes: int | None = None  # None when the source has no per-byte accounting
    source: str = ""
    records: bool = False
    unattributed: int = 0  # connections opened during the run that match no call of it
    unattributed_audio_bytes: int = 0
    per_call: dict[str, list[int]] = field(default_factory=dict)  # call_sid -> [connections, audio bytes]
    open_now: int = 0  # this run's (and unattributed) connections open at the snapshot
    opened_after: int = 0  # of those, opened after ``after`` (the last call's end)
    keepalives: int = 0
    causes_1011: dict[str, int] = field(default_factory=dict)
    rejected_429: int | None = None  # handshakes refused 429 during the run (totals delta)
    # wall times of provider events during the run, for the report's plot over time: "connection"
    # (this run's, opened), "unattributed" (opened), "reconnect", "429", "1011" and "1011 <cause>"
    event_times: dict[str, list[float]] = field(default_factory=dict)
    # this run's connections per call (compact emulator records), for the report's per-call drill-down
    conn_records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    text_mark: bool = False  # the provider marks its results' text (rtaa fake-deepgram, segmenter engine)
    connection_calls: dict[int, str] = field(default_factory=dict)  # connection id (mod 2^20) -> this run's call
    attributed_by_tag: int = 0  # of ``connections``: by tag= / extra=interaction_id:
    attributed_by_watermark: int = 0  # by the audio watermark alone (rtaa_cli.watermark, the LSB code)
    # by the robust mark alone (rtaa_cli.robustmark: the LSB code was not found, e.g. resampled audio)
    attributed_by_robust_mark: int = 0
    # per call, seconds of audio its robust-mark connections received: their bytes are at the target's
    # rate (e.g. 16 kHz), so the soak compares durations instead
    robust_audio_s: dict[str, float] = field(default_factory=dict)
    marked_connections: int = 0  # connections of the run whose audio carried one of its calls' marks
    # per call, the watermark packets its connections carried (union of their sequence runs) and how
    # many arrived more than once: exact loss and replay of calls that reconnected
    marked_seen: dict[str, CallSeen] = field(default_factory=dict)
    marked_repeated: dict[str, int] = field(default_factory=dict)

    @property
    def reconnects(self) -> int:
        return sum(max(0, n - 1) for n, _ in self.per_call.values())


OTHER_RTAA_RUN = re.compile(r"^rtaa[0-9a-f]{8}-")  # another rtaa run's calls on a shared emulator


@dataclass(frozen=True)
class SendWindow:
    """When a call sent media (real-time paced): from ``start`` to ``end`` except its ``gaps``."""

    start: float
    end: float
    gaps: tuple[tuple[float, float], ...] = ()

    def audio_ms_between(self, t0: float, t1: float) -> float:
        """Milliseconds of audio the caller sent between wall times ``t0`` and ``t1``."""
        def overlap(a: float, b: float) -> float:
            return max(0.0, min(b, t1) - max(a, t0))
        return 1000.0 * max(0.0, overlap(self.start, self.end) - sum(overlap(a, b) for a, b in self.gaps))


def classify_1011(conn: dict[str, Any], expected_ms: float | None) -> str:
    """Why a provider connection closed 1011 (by the emulator's close reason and its counters):

    - ``injected fault``: the emulator's /control/faults closed it;
    - ``starvation``: idle timeout while the provider had received under half the audio the caller
      sent during the connection's life (``expected_ms``; for an unattributed connection: under half
      its lifetime in audio);
    - ``idle, no KeepAlive``: idle timeout with no KeepAlive ever received (a hold went silent);
    - ``idle``: idle timeout although KeepAlives came; ``other``: any other 1011."""
    reason = str(conn.get("close_reason") or "")
    if reason == INTERNAL_FAULT:
        return "injected fault"
    if reason != NET0001:
        return "other"
    got_ms = float(conn.get("audio_seconds") or 0.0) * 1000.0
    if expected_ms is None:
        expected_ms = max(0.0, (float(conn.get("closed_at") or 0.0) - float(conn.get("opened_at") or 0.0)) * 1000.0)
    if got_ms > 0 and got_ms < 0.5 * expected_ms:
        return "starvation"
    return "idle" if conn.get("keepalives") else "idle, no KeepAlive"


def provider_counts_from_emulator(stats: dict[str, Any], interaction_prefix: str, *, since: float | None = None,
                                  after: float | None = None,
                                  send_windows: dict[str, SendWindow] | None = None,
                                  call_sids: Iterable[str] = ()) -> ProviderCounts:
    """Reduce an emulator ``/stats`` document to this run's interactions (ids starting with
    ``interaction_prefix``). A connection opened since ``since`` (the run's start) with no id of this
    run whose audio carried the watermark of one of ``call_sids`` (the emulator's ``watermark.call``)
    is that call's connection; the others that carry no id of this run, nor of another rtaa run, are
    *unattributed*: untagged traffic of the target."""
    out = ProviderCounts(source="emulator", audio_bytes=0, records=True)
    for iid, info in (stats.get("interactions") or {}).items():
        if str(iid).startswith(interaction_prefix):
            out.duplicates += int(info.get("duplicates", 0))
    by_mark = {call_hex(c): c for c in call_sids}
    have_bytes = False
    opened_by_call: dict[str, list[float]] = {}
    spans: dict[str, list[tuple[float, float, bool]]] = {}  # call -> (opened, closed, by watermark)
    events: dict[str, list[float]] = {"connection": [], "unattributed": [], "reconnect": [], "429": [], "1011": []}
    for conn in stats.get("connections") or []:
        iid = str(conn.get("interaction") or conn.get("interaction_id") or "")
        mine = iid.startswith(interaction_prefix)
        opened = float(conn.get("opened_at") or 0.0)
        wm = None
        robust = False  # marked by the robust mark only (the LSB code did not survive the target)
        if since is not None and opened < since:
            marked = None  # older than the run: cannot carry its calls' marks
        else:
            wm = conn.get("watermark")
            marked = by_mark.get(wm.get("call")) if isinstance(wm, dict) else None
            rmark = conn.get("robust_mark")
            if marked is None and isinstance(rmark, dict):
                marked = by_mark.get(rmark.get("call"))
                robust = marked is not None
        out.marked_connections += marked is not None
        by_watermark = not mine and marked is not None and not OTHER_RTAA_RUN.match(iid)
        if by_watermark:
            iid, mine = marked, True  # type: ignore[assignment]
        if not mine:
            if since is None or opened < since or OTHER_RTAA_RUN.match(iid):
                continue
            out.unattributed += 1
            out.unattributed_audio_bytes += int(conn.get("audio_bytes") or 0)
            events["unattributed"].append(opened)
        else:
            out.connections += 1
            out.attributed_by_watermark += by_watermark and not robust
            out.attributed_by_robust_mark += by_watermark and robust
            out.attributed_by_tag += not by_watermark
            opened_by_call.setdefault(iid, []).append(opened)
            events["connection"].append(opened)
            if conn.get("id") is not None:
                out.connection_calls[int(conn["id"]) % (1 << textmark.CONN_BITS)] = iid
            if marked == iid and isinstance(wm, dict) and not robust:
                _add_marked(out, iid, wm)
            if by_watermark and robust:
                out.robust_audio_s[iid] = out.robust_audio_s.get(iid, 0.0) + float(conn.get("audio_seconds") or 0.0)
            closed = conn.get("closed_at")
            spans.setdefault(iid, []).append((opened, math.inf if closed is None else float(closed), by_watermark))
            b = conn.get("audio_bytes", conn.get("bytes_received"))
            if b is not None:
                have_bytes = True
                out.audio_bytes += int(b)
                entry = out.per_call.setdefault(iid, [0, 0])
                entry[0] += 1
                entry[1] += 0 if by_watermark and robust else int(b)
        out.keepalives += int(conn.get("keepalives") or 0)
        if conn.get("closed_at") is None:
            out.open_now += 1
        if after is not None and opened > after:
            out.opened_after += 1
        if conn.get("close_code") == 1011:
            if mine:
                out.closes_1011 += 1
            window = (send_windows or {}).get(iid) if mine else None
            expected = None if window is None else window.audio_ms_between(opened, float(conn.get("closed_at") or opened))
            cause = classify_1011(conn, expected)
            out.causes_1011[cause] = out.causes_1011.get(cause, 0) + 1
            events["1011"].append(float(conn.get("closed_at") or opened))
            events.setdefault(f"1011 {cause}", []).append(float(conn.get("closed_at") or opened))
        else:
            cause = None
        if mine:
            out.conn_records.setdefault(iid, []).append(_conn_record(conn, cause, by_watermark, by_watermark and robust))
    if not have_bytes:
        out.audio_bytes = None
    out.duplicates += _watermark_duplicates(spans)
    for times in opened_by_call.values():  # every connection of a call after its first is a reconnect
        events["reconnect"].extend(sorted(times)[1:])
    events["429"] = [float(r["at"]) for r in stats.get("rejections") or []
                     if r.get("status") == 429 and (since is None or float(r["at"]) >= since)]
    out.event_times = events
    out.text_mark = bool(stats.get("text_mark"))
    return out


PACKET_BYTES = PACKET_BITS * 2  # one watermark packet: 96 samples of s16le


def _watermark_loss(p: ProviderCounts, call: str, sent_bytes: int) -> tuple[int, int] | None:
    """(packets lost, packets that arrived more than once) of a call from the watermark its provider
    connections carried; None when that cannot be judged (unmarked, overflow, several calls mixed).
    Every whole packet the caller sent counts (its audio is marked from the first sample); a packet
    cut by a connection boundary cannot be decoded, so each reconnect can add up to two packets
    (24 ms at 8 kHz) of loss that was really delivered."""
    seen = p.marked_seen.get(call)
    if seen is None or seen.overflow:
        return None
    sent_packets = sent_bytes // PACKET_BYTES
    return max(0, sent_packets - seen.unique), seen.packets - seen.unique + p.marked_repeated.get(call, 0)


def _add_marked(out: ProviderCounts, call: str, wm: dict[str, Any]) -> None:
    runs = wm.get("runs")
    if not isinstance(runs, list) or wm.get("overflow") or wm.get("calls"):
        out.marked_seen.setdefault(call, CallSeen()).overflow = True  # cannot be judged packet by packet
        return
    seen = out.marked_seen.setdefault(call, CallSeen())
    for a, b in runs:
        seen.add(int(a), int(b))
    out.marked_repeated[call] = out.marked_repeated.get(call, 0) + int(wm.get("repeated") or 0)


def _conn_record(conn: dict[str, Any], cause_1011: str | None, by_watermark: bool,
                 robust: bool = False) -> dict[str, Any]:
    """The few fields of an emulator connection record the per-call drill-down shows."""
    keep = ("id", "opened_at", "closed_at", "close_code", "close_reason", "audio_seconds", "audio_bytes",
            "keepalives", "finalizes", "close_stream", "results_sent", "duplicate")
    rec = {k: conn.get(k) for k in keep if conn.get(k) is not None}
    if cause_1011:
        rec["cause_1011"] = cause_1011
    if by_watermark:
        rec["by_watermark"] = True
    if robust:
        rec["by_robust_mark"] = True
    return rec


def watermark_note(counts: ProviderCounts | None, watermark: bool, sent_audio: bool) -> str | None:
    """Marked audio went out, the provider has connection records, and not one carried a mark (or only
    the robust mark: the target changes the audio, the call is known but not its frames)."""
    if not watermark or not sent_audio or counts is None or not counts.records:
        return None
    if counts.attributed_by_robust_mark:
        return (f"watermark LSB code not found on {counts.attributed_by_robust_mark} connection(s): the target "
                "changes the audio (resampling, gain or transcoding); attributed by the robust mark "
                "(the call only: no per-frame loss or replay)")
    if counts.marked_connections:
        return None
    if counts.connections + counts.unattributed == 0:
        return None
    return ("watermark not found: the target changes the audio (resampling, gain or transcoding): "
            "connections are attributed by tag only")


def _watermark_duplicates(spans: dict[str, list[tuple[float, float, bool]]]) -> int:
    """Duplicates among connections attributed by watermark (the emulator counts tagged ones): a
    connection opened while another connection of the same call was still open."""
    dup = 0
    for conns in spans.values():
        if not any(w for _, _, w in conns):
            continue
        conns = sorted(conns)
        for i, (opened, _closed, by_watermark) in enumerate(conns):
            if by_watermark and any(o <= opened < c for o, c, _ in conns[:i]):
                dup += 1
    return dup


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
        self.provider: dict[str, list[int]] = {}  # provider events per bucket (from the emulator)
        self.users: list[int | None] = [None] * max_points  # Locust's user count (max seen in the bucket)
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

    def set_users(self, t: float, users: int) -> None:
        i = self._idx(t)
        seen = self.users[i]
        self.users[i] = users if seen is None else max(seen, users)

    def set_provider_events(self, event_times: dict[str, list[float]]) -> None:
        """The provider's events (replacing any earlier snapshot's): counts per bucket."""
        self.provider = {}
        for name, times in event_times.items():
            counts = self.provider.setdefault(name, [0] * self.n)
            for t in times:
                counts[self._idx(t)] += 1

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
            "errors": self.errors[:n], "active": active, "users": self.users[:n],
            "final_p50": pct(self.latency, 50), "final_p95": pct(self.latency, 95),
            "final_max": [None if h is None else h.max for h in self.latency[:n]],
            "final_count": [0 if h is None else h.n for h in self.latency[:n]],
            "first_partial_p50": pct(self.first_partial, 50),
            "provider": {name: counts[:n] for name, counts in self.provider.items()},
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
        self.handshake_failed = 0  # failed before any stream opened (HTTP 404/403, refused, not a WebSocket)
        self.by_kind: dict[str, dict[str, int]] = {}
        self.first_partial = Histogram(LATENCY_RESOLUTION_MS)
        self.final = Histogram(LATENCY_RESOLUTION_MS)
        self.lateness = LatenessHistogram()
        self.max_abs_drift_ms = 0.0
        self.delivered = 0
        self.delivery_eligible = 0
        self.finals_without_offsets_calls = 0  # finals arrived, but without audio offsets: delivery unknown
        self.marked_results = 0  # results whose text carried the emulator's mark
        self.server_hangups = 0  # completed calls the server ended with 1000 before stop (server_hangup = "ok")
        self.repeated_finals = 0
        self.gaps = 0  # `gap` messages the pipeline published (audio it says no final will cover)
        self.gap_ms = 0.0
        self.gap_calls = 0
        self.mark_connections_by_call: dict[str, dict[int, int]] = {}
        self.feed_messages = 0
        self.feed_unrecognised = 0
        self.feed_not_understood_calls = 0  # calls whose feed carried messages, none understood
        self.feed_unread_calls = 0  # calls whose feed could not be read at all
        self.audio_bytes_sent = 0
        self.audio_sent_by_call: dict[str, tuple[int, float]] = {}  # call -> (bytes, ms) of normal calls
        self.send_windows: dict[str, SendWindow] = {}  # call -> when it sent media (1011 causes)
        self.frames_sent = 0
        self.caller_1011 = 0
        self.closes: dict[str, int] = {}
        self.bad_input_calls = 0
        self.bad_input_unexpected = 0
        self.failure_reasons: dict[str, int] = {}
        self.failure_examples: dict[str, str] = {}  # failure kind -> one call_sid
        self.failure_samples: list[dict[str, Any]] = []
        self.max_failure_samples = max_failure_samples
        self.delivery_tolerance_ms = delivery_tolerance_ms
        self.timeline = Timeline(t0, duration_s)
        self.call_samples = CallSampler(t0, max_failed=max_failure_samples)  # the report's drill-down
        self._last_failure: str | None = None  # the failure reason of the call being added
        self.provider: ProviderCounts | None = None
        self.provider_hint = ""  # how to get provider evidence when there is none
        self.memory: TargetMemory | None = None  # the target's RSS, when its /metrics has it
        self.memory_window_s = (0.0, 0.0)  # steady part of the run (seconds from t0) for the growth slope
        self.generator_cpu_warning = False
        self.invalid_reasons: list[str] = []
        self.last_call_ended = 0.0

    # -- feeding
    def call_started(self) -> None:
        self.calls_started += 1

    def add(self, rec: CallRecord) -> None:
        self._last_failure = None
        self.records += 1
        self.last_call_ended = max(self.last_call_ended, rec.ended_at)
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
            if rec.audio_bytes_sent > 0:
                self.audio_sent_by_call[rec.call_sid] = (rec.audio_bytes_sent, rec.audio_ms_sent)
                self.send_windows[rec.call_sid] = SendWindow(rec.started_at, rec.ended_at,
                                                             tuple(tuple(g) for g in rec.media_gaps))
            self.feed_messages += rec.feed_messages
            self.feed_unrecognised += rec.feed_unrecognised
            self.marked_results += rec.marked_results
            self.repeated_finals += rec.repeated_finals
            if rec.gaps:
                self.gaps += rec.gaps
                self.gap_ms += rec.gap_ms
                self.gap_calls += 1
            if rec.mark_connections:
                self.mark_connections_by_call[rec.call_sid] = {int(k): v for k, v in rec.mark_connections.items()}
            understood = not (rec.feed_messages > 0 and rec.feed_unrecognised >= rec.feed_messages)
            if not understood:
                self.feed_not_understood_calls += 1
            if rec.connected and not rec.transcripts_observed:
                self.feed_unread_calls += 1
            # delivery is judged only on feeds rtaa could read and understand: a feed in a schema
            # rtaa cannot parse is missing evidence, not "nothing delivered"
            # ... nor on finals that carry no audio offsets (a foreign schema): coverage is unknown there
            no_offsets = rec.finals > 0 and rec.final_audio_end_ms is None
            if rec.connected and rec.audio_bytes_sent > 0 and rec.transcripts_observed and understood and no_offsets:
                self.finals_without_offsets_calls += 1
            elif rec.connected and rec.audio_bytes_sent > 0 and rec.transcripts_observed and understood:
                self.delivery_eligible += 1
                if self.is_delivered(rec):
                    self.delivered += 1
            if rec.failure:
                self.failed += 1
                kind["failed"] += 1
                if not rec.connected:
                    self.handshake_failed += 1
                self._failure(rec, rec.failure)
            else:
                self.completed += 1
                self.server_hangups += int(rec.server_hangup)
        self.timeline.add_call(rec)
        self.call_samples.add(rec, self._last_failure)

    def is_delivered(self, rec: CallRecord) -> bool:
        """A call is delivered when its final results cover the audio it sent, within tolerance
        (so a target that never finalizes on stop loses the call's tail and is caught)."""
        return rec.final_audio_end_ms is not None and \
            rec.final_audio_end_ms >= rec.audio_ms_sent - self.delivery_tolerance_ms

    def _failure(self, rec: CallRecord, reason: str) -> None:
        self._last_failure = reason
        key = reason[:80]
        self.failure_reasons[key] = self.failure_reasons.get(key, 0) + 1
        self.failure_examples.setdefault(key, rec.call_sid)
        if len(self.failure_samples) < self.max_failure_samples:
            self.failure_samples.append({"call_sid": rec.call_sid, "kind": rec.kind, "reason": reason[:300]})

    def early_stop_reason(self, min_calls: int = 3) -> str | None:
        """The first ``min_calls`` calls all failed at the handshake and none completed: running the
        whole duration would only repeat it. One line with the cause and an example call."""
        if self.completed or self.records < min_calls or self.handshake_failed < self.records:
            return None
        kind, n = max(self.failure_reasons.items(), key=lambda kv: kv[1])
        return (f"stopped early: the first {self.records} calls all failed at the handshake ({kind}, "
                f"{n} calls, e.g. {self.failure_examples[kind]}): is --target the ingest URL?")

    def set_provider(self, counts: ProviderCounts | None) -> None:
        self.provider = counts
        if counts is not None and counts.records:
            self.timeline.set_provider_events(counts.event_times)

    # -- reduction
    def audio_accounting(self) -> dict[str, Any]:
        """Sent vs received by the provider, per call (so one call's replays cannot hide another's
        loss). Calls with more than one provider connection (reconnects replay audio) are reported
        apart: without a per-frame watermark their lost and replayed bytes cannot be told apart."""
        p = self.provider
        out: dict[str, Any] = {"bytes_sent": self.audio_bytes_sent, "frames_sent": self.frames_sent,
                               "bytes_received_by_provider": None if p is None else p.audio_bytes,
                               "loss": None, "lost_bytes": None, "measured_calls": 0, "reconnecting_calls": 0,
                               "reconnecting_bytes_sent": 0, "reconnecting_bytes_received": 0,
                               "received_more_than_sent_bytes": None, "unreached_calls": None,
                               "watermark_measured_calls": 0, "replayed_bytes": 0}
        if p is None or not p.records:
            return out
        out["unreached_calls"] = sum(1 for call in self.audio_sent_by_call if call not in p.per_call)
        if p.audio_bytes is None and p.per_call:  # records evicted: byte totals would be partial
            return out
        lost = sent_measured = extra = 0
        unreached = 0
        for call, (sent, sent_ms) in self.audio_sent_by_call.items():
            conns, got = p.per_call.get(call, (0, 0))
            if call in p.robust_audio_s and sent_ms > 0:  # at the target's rate: by duration, in sent bytes
                got += int(round(p.robust_audio_s[call] * 1000.0 * sent / sent_ms))
            if conns == 0:
                unreached += 1
                if p.unattributed:
                    continue  # it may be one of the unattributed connections: cannot tell
                lost += sent
                sent_measured += sent
            elif conns == 1:
                lost += max(0, sent - got)
                extra += max(0, got - sent)
                sent_measured += sent
            elif (wm_lost := _watermark_loss(p, call, sent)) is not None:
                # reconnected, but its audio was marked: the packets that never arrived, and the replays
                lost_packets, replayed_packets = wm_lost
                lost += lost_packets * PACKET_BYTES
                sent_measured += sent
                out["watermark_measured_calls"] += 1
                out["replayed_bytes"] += replayed_packets * PACKET_BYTES
            else:
                out["reconnecting_calls"] += 1
                out["reconnecting_bytes_sent"] += sent
                out["reconnecting_bytes_received"] += got
        out["measured_calls"] = len(self.audio_sent_by_call) - out["reconnecting_calls"] - (unreached if p.unattributed else 0)
        out["received_more_than_sent_bytes"] = extra
        if sent_measured > 0:
            out["lost_bytes"] = lost
            out["loss"] = lost / sent_measured
        return out

    def cross_talk(self) -> dict[str, int | None]:
        """Marked results on a call's feed that came from another call's provider connection.
        ``results`` is None when nothing could be judged (no marks, or no marked connection attributable)."""
        p = self.provider
        if not self.marked_results or p is None or not p.records:
            return {"results": None, "judged": 0, "unattributed": 0}
        wrong = judged = unknown = 0
        for call, conns in self.mark_connections_by_call.items():
            for conn, n in conns.items():
                owner = p.connection_calls.get(conn)
                if owner is None:
                    unknown += n
                    continue
                judged += n
                if owner != call:
                    wrong += n
        return {"results": wrong if judged else None, "judged": judged, "unattributed": unknown}

    def textmark_off(self) -> list[str]:
        """The text-mark thresholds no evidence can exist for: the provider does not mark its results."""
        p = self.provider
        return [] if (p is not None and p.text_mark) else ["results_repeated", "cross_talk_results"]

    def _latency_metrics(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for kind, h in (("final", self.final), ("first_partial", self.first_partial)):
            for stat in LATENCY_STATS:
                out[f"latency_{kind}_{stat}_ms"] = h.max if stat == "max" else h.percentile(int(stat[1:]))
        return out

    def metrics(self) -> dict[str, float | None]:
        started = max(self.calls_started, self.records)
        p = self.provider
        prov_1011 = p.closes_1011 if p else None
        total_1011 = self.caller_1011 + (prov_1011 or 0)
        audio = self.audio_accounting()
        rec = p is not None and p.records
        eligible = len(self.audio_sent_by_call)
        unreached = audio["unreached_calls"]
        duplicates = None if p is None else p.duplicates
        normal = self.records - self.bad_input_calls
        if rec and p.unattributed and unreached:  # some calls' connections may be among the unattributed
            duplicates = None
        return {
            "completed_calls": self.completed if self.records else None,
            # bad-input calls are judged by bad_input_unexpected, not twice
            "failed_rate": ((self.failed - self.bad_input_unexpected) / normal) if normal else None,
            "duplicates": duplicates,
            "closes_1011_rate": (total_1011 / started) if started else None,
            "caller_1011_rate": (self.caller_1011 / started) if started else None,
            "provider_1011_rate": (prov_1011 / started) if (started and prov_1011 is not None) else None,
            **self._latency_metrics(),
            "delivery_rate": (self.delivered / self.delivery_eligible) if self.delivery_eligible else None,
            "audio_loss": audio["loss"],
            "unattributed_connections": p.unattributed if rec else None,
            "calls_unreached_rate": (unreached / eligible) if (rec and eligible and unreached is not None) else None,
            "provider_open_at_end": p.open_now if rec else None,
            "provider_opened_after_end": p.opened_after if rec else None,
            "bad_input_unexpected": self.bad_input_unexpected,
            "results_repeated": self.repeated_finals if self.marked_results else None,
            "cross_talk_results": self.cross_talk()["results"],
            "memory_growth_mb_per_h": None if self.memory is None else self.memory.growth_mb_per_h(*self.memory_window_s),
        }

    def unmeasured_reason(self, name: str) -> str:
        """What was missing for ``name`` and how to get it (one line, docs/soak.md lists them all)."""
        p = self.provider
        off = f"or -t {name}=off"
        if not self.records:
            return "no call finished"
        if name in ("duplicates", "provider_1011_rate") or name in PROVIDER_RECORD_METRICS:
            if p is None:
                return (f"no provider evidence: {self.provider_hint or 'pass --provider-stats URL (the emulator /stats)'}"
                        f" {off}")
            if not p.records and name in PROVIDER_RECORD_METRICS:
                return f"the {p.source} has no per-connection records: pass --provider-stats (the emulator's /stats) {off}"
            if name == "duplicates" and p.duplicates is None:
                return f"the {p.source} does not count duplicate connections: pass --provider-stats {off}"
            eligible = len(self.audio_sent_by_call)
            reached = eligible - (self.audio_accounting()["unreached_calls"] or 0)
            if name == "duplicates":
                return (f"the provider saw connections attributable to {reached} of this run's {eligible} calls "
                        f"({p.unattributed} unattributed connections seen): make the target tag its connections "
                        f"(tag=CALL_SID or extra=interaction_id:CALL_SID, docs/soak.md) {off}")
            if name == "audio_loss":
                a = self.audio_accounting()
                if p.audio_bytes is None:
                    return f"the provider's per-connection byte records were evicted or absent {off}"
                if a["reconnecting_calls"]:
                    return (f"all {a['reconnecting_calls']} measurable calls reconnected: replayed audio cannot be "
                            f"told from lost audio without the watermark {off}")
                return (f"no call's audio could be matched to provider connections ({reached} of {eligible} calls "
                        f"attributed, {p.unattributed} unattributed connections) {off}")
            if name == "calls_unreached_rate":
                return f"no call of the run sent audio {off}"
        if name.startswith("latency"):
            if self.feed_not_understood_calls:
                return self._feed_reason(off)
            if self.feed_unread_calls and not self.delivery_eligible:
                return f"no transcript feed was read ({self.feed_unread_calls} calls): pass --transcripts URL {off}"
            what = "first partial" if "partial" in name else "final"
            if self.finals_without_offsets_calls:
                return (f"results with text arrived on {self.finals_without_offsets_calls} calls' feeds but carry "
                        "no audio offsets, so their latency cannot be computed: map audio_end_ms=PATH (or "
                        f"audio_end_s) with --feed-map / [feed] map, see docs/transcript-feed.md {off}")
            return (f"no {what} result with text arrived on any call's feed ({self.delivered} delivered, "
                    f"{self.feed_messages} feed messages) {off}")
        if name == "delivery_rate":
            if self.feed_not_understood_calls:
                return self._feed_reason(off)
            if self.finals_without_offsets_calls:
                return (f"the finals of {self.finals_without_offsets_calls} calls carry no audio offsets, so "
                        "whether each call was transcribed to its end is unknown: map audio_end_ms=PATH (or "
                        f"audio_end_s) with --feed-map / [feed] map, see docs/transcript-feed.md {off}")
            if self.feed_unread_calls:
                return f"no transcript feed was read ({self.feed_unread_calls} calls): pass --transcripts URL {off}"
            return f"no call both connected and sent audio {off}"
        if name == "results_repeated":
            return ("the provider marks every result's text, but no marked text reached any call's feed: the "
                    f"target rewrites or drops the text, or --transcripts is not its feed {off}")
        if name == "cross_talk_results":
            if not self.marked_results:
                return self.unmeasured_reason("results_repeated")
            ct = self.cross_talk()
            return (f"{ct['unattributed']} marked results came from provider connections this run cannot attribute "
                    f"to its calls: make the target tag its connections {off}")
        if name == "memory_growth_mb_per_h":
            if self.memory is None:
                return f"the target's memory was not sampled: pass --metrics URL (its Prometheus /metrics) {off}"
            return self.memory.unmeasured_reason(*self.memory_window_s) + f" {off}"
        return f"no value in this run {off}"

    def _feed_reason(self, off: str) -> str:
        return (f"{self.feed_messages} messages arrived on {self.feed_not_understood_calls} calls' feeds and "
                f"{self.feed_unrecognised} were not understood (a foreign schema): map its fields with "
                f"--feed-map, see docs/transcript-feed.md {off}")

    def evaluate(self, thresholds: dict[str, Threshold], pacing: PacingLimits,
                 off: Iterable[str] = ()) -> tuple[str, list[dict[str, Any]]]:
        values = self.metrics()
        auto_off = self.textmark_off()
        thresholds = {k: v for k, v in thresholds.items() if k not in auto_off}
        off = [*off, *(n for n in auto_off if n not in off)]
        rows = []
        for name, th in thresholds.items():
            value = values.get(name)
            rows.append(verdict.row(name, None if value is None else round(value, 6), th.limit, th.kind,
                                    th.check(value), reason="" if value is not None else self.unmeasured_reason(name),
                                    op=th.op))
        for name in off:
            if name not in thresholds and name in METRICS:
                value = values.get(name)
                why = ("the provider does not mark its results' text (not rtaa fake-deepgram's segmenter engine)"
                       if name in auto_off else "")
                rows.append(verdict.row(name, None if value is None else round(value, 6), None, METRICS[name][0],
                                        None, off=True, reason=why))
        run_invalid = list(self.invalid_reasons)
        late_p99 = self.lateness.percentile(99) if self.lateness.count else None
        if late_p99 is not None and late_p99 > pacing.max_lateness_p99_ms:
            run_invalid.append(f"load generator lateness p99 {late_p99:.1f} ms > {pacing.max_lateness_p99_ms:g} ms")
        if self.generator_cpu_warning:
            run_invalid.append("load generator CPU above 90 % (Locust CPU warning)")
        if self.records == 0:
            run_invalid.append("no call finished: nothing was measured")
        result, self._invalid = verdict.judge(rows, run_invalid)
        return result, rows

    def summary(self, thresholds: dict[str, Threshold], pacing: PacingLimits, off: Iterable[str] = ()) -> dict[str, Any]:
        result, rows = self.evaluate(thresholds, pacing, off)
        started = max(self.calls_started, self.records)
        m = self.metrics()
        p = self.provider
        prov_1011 = p.closes_1011 if p else None
        provider = None
        if p is not None:
            provider = {"source": p.source, "connections": p.connections, "audio_bytes": p.audio_bytes}
            if p.records:
                eligible = len(self.audio_sent_by_call)
                unreached = self.audio_accounting()["unreached_calls"] or 0
                provider.update({
                    "unattributed_connections": p.unattributed, "unattributed_audio_bytes": p.unattributed_audio_bytes,
                    "attributed_by_tag": p.attributed_by_tag, "attributed_by_watermark": p.attributed_by_watermark,
                    "attributed_by_robust_mark": p.attributed_by_robust_mark,
                    "marked_connections": p.marked_connections,
                    "calls_reached": eligible - unreached, "calls_with_audio": eligible,
                    "open_at_end": p.open_now, "opened_after_end": p.opened_after, "reconnects": p.reconnects,
                    "keepalives": p.keepalives,
                    "keepalives_per_connection": round(p.keepalives / max(1, p.connections + p.unattributed), 3),
                    "closes_1011_by_cause": dict(sorted(p.causes_1011.items())), "rejected_429": p.rejected_429,
                })
        return {
            "verdict": result,
            "invalid_reasons": self._invalid,
            "calls": {"started": started, "finished": self.records, "completed": self.completed,
                      "failed": self.failed, "handshake_failed": self.handshake_failed,
                      "unfinished": started - self.records, "by_kind": self.by_kind,
                      "server_hangups": self.server_hangups,
                      "bad_input": self.bad_input_calls, "bad_input_unexpected": self.bad_input_unexpected},
            "duplicates": m["duplicates"],
            "provider": provider,
            "closes_1011": {"provider": prov_1011, "caller": self.caller_1011, "rate": m["closes_1011_rate"]},
            "caller_closes": dict(sorted(self.closes.items())),
            "latency_ms": {"first_partial": self.first_partial.summary(), "final": self.final.summary()},
            "delivery_rate": m["delivery_rate"],
            "text_mark": {"marked_results": self.marked_results, "repeated_finals": self.repeated_finals,
                          **{f"cross_talk_{k}": v for k, v in self.cross_talk().items()}},
            "delivered": self.delivered, "delivery_eligible": self.delivery_eligible,
            "finals_without_offsets_calls": self.finals_without_offsets_calls,
            "feed": {"messages": self.feed_messages, "unrecognised": self.feed_unrecognised,
                     "calls_not_understood": self.feed_not_understood_calls, "calls_unread": self.feed_unread_calls,
                     "gaps": self.gaps, "gap_ms": round(self.gap_ms, 1), "gap_calls": self.gap_calls},
            "audio": self.audio_accounting(),
            "pacing": {"lateness_ms": lateness_summary(self.lateness), "max_abs_drift_ms": round(self.max_abs_drift_ms, 3),
                       "limit_p99_ms": pacing.max_lateness_p99_ms, "cpu_warning": self.generator_cpu_warning},
            "thresholds": rows,
            "failures": {"by_reason": self.failure_reasons, "examples": self.failure_examples,
                         "samples": self.failure_samples},
            "timeline": self.timeline.series(),
            "call_samples": self.call_samples.report(p.conn_records if p is not None and p.records else None),
            "target_memory": None if self.memory is None else self.memory.summary(*self.memory_window_s),
        }
