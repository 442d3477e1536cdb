"""``rtaa soak --csv PREFIX``: per-call records and per-interval time series as CSV (Locust's ``--csv``
convention: ``PREFIX_calls.csv``, ``PREFIX_timeline.csv``).

Calls are written as they finish (a long soak keeps no list of them); the timeline at the end, one row
per bucket of the report's timeline (``bucket_s`` wide).
"""
from __future__ import annotations

import csv
from typing import Any, TextIO

from rtaa_cli.soak.stats import CallRecord, Histogram, LATENCY_RESOLUTION_MS

CALL_COLUMNS = ("call_sid", "kind", "started_at", "ended_at", "duration_s", "completed", "failure", "streams",
                "closes", "frames_sent", "audio_ms_sent", "results", "finals", "final_latency_count",
                "final_latency_p50_ms", "final_latency_max_ms", "first_partial_latency_ms", "final_audio_end_ms",
                "feed_messages", "feed_unrecognised", "marked_results", "repeated_finals", "errors")
TIMELINE_COLUMNS = ("t_s", "started", "ended", "failed", "errors", "active", "final_p50_ms", "final_p95_ms",
                    "final_max_ms", "first_partial_p50_ms", "provider_reconnects", "provider_429",
                    "provider_1011", "users")


def csv_paths(prefix: str) -> tuple[str, str]:
    return f"{prefix}_calls.csv", f"{prefix}_timeline.csv"


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    return round(v, 3) if isinstance(v, float) else v


def call_row(rec: CallRecord) -> list[Any]:
    h = Histogram(LATENCY_RESOLUTION_MS)
    for _t, ms in rec.final:
        h.add(ms)
    first = rec.first_partial[0][1] if rec.first_partial else None
    return [_cell(v) for v in (
        rec.call_sid, rec.kind, rec.started_at, rec.ended_at, rec.ended_at - rec.started_at, rec.failure is None,
        rec.failure, rec.streams, " ".join("" if c is None else str(c) for c in rec.closes), rec.frames_sent,
        rec.audio_ms_sent, rec.results, rec.finals, h.n, h.percentile(50), h.max, first, rec.final_audio_end_ms,
        rec.feed_messages, rec.feed_unrecognised, rec.marked_results, rec.repeated_finals, "; ".join(rec.errors))]


class CallCsv:
    """``PREFIX_calls.csv``, one row per finished call, written as it arrives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._writer = csv.writer(self._file)
        self._writer.writerow(CALL_COLUMNS)

    def add(self, rec: CallRecord) -> None:
        self._writer.writerow(call_row(rec))

    def close(self) -> None:
        self._file.close()


def write_timeline_csv(path: str, timeline: dict[str, Any]) -> None:
    prov = timeline.get("provider") or {}
    series = [timeline.get(k, []) for k in ("t", "started", "ended", "failed", "errors", "active", "final_p50",
                                            "final_p95", "final_max", "first_partial_p50")]
    series += [prov.get(k, []) for k in ("reconnect", "429", "1011")] + [timeline.get("users", [])]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(TIMELINE_COLUMNS)
        for i in range(len(series[0])):
            w.writerow([_cell(s[i]) if i < len(s) else "" for s in series])
