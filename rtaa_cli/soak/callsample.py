"""A bounded sample of whole calls for the HTML report's per-call drill-down.

A one-hour soak makes thousands of calls; keeping each one's full detail would grow without bound.
Kept instead: every failed call up to ``max_failed``, the first ``max_normal`` completed calls and the
completed call with the slowest final result (replaced as slower ones finish). Each kept call is
compacted at once: its result points are capped at ``max_points``. Times are seconds into the run.
Sans-I/O: fed :class:`CallRecord` objects, joined with the provider's connection records at the end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtaa_cli.soak.stats import CallRecord


def _s(t: float | None, t0: float) -> float | None:
    return None if t is None else round(float(t) - t0, 3)


class CallSampler:
    def __init__(self, t0: float, max_failed: int = 50, max_normal: int = 5, max_points: int = 300) -> None:
        self.t0 = t0
        self.max_failed, self.max_normal, self.max_points = max_failed, max_normal, max_points
        self.failed: list[dict[str, Any]] = []
        self.normal: list[dict[str, Any]] = []
        self.slowest: dict[str, Any] | None = None
        self.failed_seen = 0
        self.completed_seen = 0

    def add(self, rec: "CallRecord", failure: str | None) -> None:
        """``failure``: why the soak judged the call failed (a bad-input call's unexpected close is
        not in ``rec.failure``); None when it completed."""
        if failure is not None:
            self.failed_seen += 1
            if len(self.failed) < self.max_failed:
                self.failed.append({**self._compact(rec, "failed"), "failure": failure[:300]})
            return
        self.completed_seen += 1
        if len(self.normal) < self.max_normal:
            self.normal.append(self._compact(rec, "completed"))
            return
        worst = max((ms for _, ms in rec.final), default=None)
        if worst is not None and (self.slowest is None or worst > self.slowest["final_max_ms"]):
            self.slowest = self._compact(rec, "slowest completed")

    def _compact(self, rec: "CallRecord", why: str) -> dict[str, Any]:
        t0, cap = self.t0, self.max_points

        def points(samples: list[tuple[float, float]]) -> list[list[float | None]]:
            return [[_s(t, t0), round(ms, 1)] for t, ms in samples[:cap]]

        return {
            "call_sid": rec.call_sid, "kind": rec.kind, "sampled_as": why, "failure": rec.failure,
            "started_s": _s(rec.started_at, t0), "ended_s": _s(rec.ended_at, t0), "connected": rec.connected,
            "streams": rec.streams, "closes": list(rec.closes), "close_reasons": [r[:200] for r in rec.close_reasons],
            "expected_closes": list(rec.expected_closes), "server_hangup": rec.server_hangup,
            "frames_sent": rec.frames_sent, "audio_ms_sent": round(rec.audio_ms_sent, 1),
            "media_gaps": [[_s(a, t0), _s(b, t0)] for a, b in rec.media_gaps[:cap]],
            "results": rec.results, "finals": rec.finals, "final_audio_end_ms": rec.final_audio_end_ms,
            "final": points(rec.final), "first_partial": points(rec.first_partial),
            "points_dropped": max(0, len(rec.final) - cap) + max(0, len(rec.first_partial) - cap),
            "final_max_ms": max((ms for _, ms in rec.final), default=None),
            "gaps": rec.gaps, "gap_ms": round(rec.gap_ms, 1), "errors": [e[:300] for e in rec.errors[:10]],
        }

    def report(self, conn_records: dict[str, list[dict[str, Any]]] | None) -> dict[str, Any]:
        """The kept calls (failed first), each with its provider connections when the provider has
        per-connection records (``None``: it has none, e.g. a remote target's metrics)."""
        calls = self.failed + ([self.slowest] if self.slowest else []) + self.normal
        out = []
        for call in calls:
            call = dict(call)
            if conn_records is None:
                call["provider_connections"] = None
            else:
                conns = sorted(conn_records.get(call["call_sid"], []), key=lambda c: c.get("opened_at") or 0.0)
                call["provider_connections"] = [
                    {**c, "opened_s": _s(c.get("opened_at"), self.t0), "closed_s": _s(c.get("closed_at"), self.t0)}
                    for c in conns[:50]]
            out.append(call)
        return {
            "policy": (f"every failed call up to {self.max_failed}, the first {self.max_normal} completed calls and "
                       f"the completed call with the slowest final result; at most {self.max_points} result points "
                       f"and 50 provider connections per call"),
            "failed_seen": self.failed_seen, "completed_seen": self.completed_seen,
            "failed_kept": len(self.failed), "calls": out,
        }
