"""The one pacer: sends happen at absolute times on the monotonic clock, never after cumulative sleeps.

Sans-I/O core: :class:`Pacer` maps a *stream offset* (seconds since the stream started, including
holds) to a due time ``t0 + offset / speed`` and records how late each send was. It never sleeps;
it takes a clock (any ``() -> float``, a fake one in tests). Because every due time is computed
from ``t0``, a late send does not push later frames back: the schedule has no drift by
construction, and ``drift`` in the summary measures the *sender's* shortfall at the end.

Thin waiters: :func:`wait_async` (asyncio) and :func:`wait_sync` (blocking ``time.sleep``, which
gevent patches under Locust). ``speed=0`` means as fast as possible: nothing waits and nothing is
counted as late.

Lateness is kept in a fixed histogram (:class:`LatenessHistogram`, 8 KB), not a list, so a
60-minute call or hundreds of concurrent callers cost constant memory; percentiles are exact to
0.05 ms below 50 ms and to 5 ms up to 5 s; the maximum is exact.
"""
from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Callable

Clock = Callable[[], float]

_FINE_MS, _FINE_BINS = 0.05, 1000  # [0, 50) ms
_COARSE_MS, _COARSE_BINS = 5.0, 990  # [50, 5000) ms; one overflow bin after that
_FINE_END = _FINE_MS * _FINE_BINS
_NBINS = _FINE_BINS + _COARSE_BINS + 1


@dataclass(frozen=True)
class PacingStats:
    frames: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    late_mean_ms: float
    drift_ms: float  # last send's actual time minus its scheduled time

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class LatenessHistogram:
    """Counts of send lateness in ms; constant memory, mergeable across callers."""

    __slots__ = ("counts", "count", "total_ms", "max_ms")

    def __init__(self) -> None:
        self.counts = array("I", bytes(4 * _NBINS))
        self.count = 0
        self.total_ms = 0.0
        self.max_ms = 0.0

    def add(self, late_ms: float) -> None:
        if late_ms < 0.0:  # woke a hair early: on time
            late_ms = 0.0
        if late_ms < _FINE_END:
            index = int(late_ms / _FINE_MS)
        else:
            index = min(_FINE_BINS + int((late_ms - _FINE_END) / _COARSE_MS), _NBINS - 1)
        self.counts[index] += 1
        self.count += 1
        self.total_ms += late_ms
        if late_ms > self.max_ms:
            self.max_ms = late_ms

    def merge(self, other: LatenessHistogram) -> None:
        # vectorised: a Python loop over the 1991 bins cost ~90 us per merged call, which a load
        # generator paid while its other calls were still sending (every call ends with a merge)
        import numpy as np

        mine = np.frombuffer(self.counts, dtype=np.uint32)
        theirs = np.frombuffer(other.counts, dtype=np.uint32)
        if int(mine.max(initial=0)) + int(theirs.max(initial=0)) > 0xFFFFFFFF:
            raise OverflowError("lateness histogram bin overflow")
        np.add(mine, theirs, out=mine)
        self.count += other.count
        self.total_ms += other.total_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def count_le(self, edge_ms: float) -> int:
        """Samples in the bins whose upper edge is at or below ``edge_ms`` (a Prometheus bucket)."""
        if edge_ms < _FINE_END:
            n_bins = int(edge_ms / _FINE_MS + 1e-9)
        else:
            n_bins = min(_FINE_BINS + int((edge_ms - _FINE_END) / _COARSE_MS + 1e-9), _NBINS - 1)
        return sum(self.counts[:n_bins])

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (capped at the exact max)."""
        if not self.count:
            return 0.0
        rank = max(1, -(-self.count * q // 100))  # ceil, nearest-rank method
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if i < _FINE_BINS:
                    edge = (i + 1) * _FINE_MS
                elif i < _NBINS - 1:
                    edge = _FINE_END + (i - _FINE_BINS + 1) * _COARSE_MS
                else:
                    edge = self.max_ms
                return min(edge, self.max_ms)
        return self.max_ms


class Pacer:
    """Schedule + lateness statistics for one stream. Pure: reads the given clock, never sleeps."""

    __slots__ = ("speed", "clock", "t0", "lateness", "drift_s")

    def __init__(self, speed: float = 1.0, clock: Clock = time.monotonic) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        self.speed = speed
        self.clock = clock
        self.t0: float | None = None
        self.lateness = LatenessHistogram()
        self.drift_s = 0.0

    def start(self, t0: float | None = None) -> None:
        """Fix the schedule's origin (offset 0); defaults to now."""
        self.t0 = self.clock() if t0 is None else t0

    def due(self, offset_s: float) -> float:
        """Clock time at which the send scheduled at stream ``offset_s`` is due."""
        if self.t0 is None:
            self.start()
        if self.speed == 0:
            return self.t0  # type: ignore[return-value]
        return self.t0 + offset_s / self.speed  # type: ignore[operator]

    def delay(self, offset_s: float) -> float:
        """Seconds to wait before sending ``offset_s`` (0 when due or overdue)."""
        return max(0.0, self.due(offset_s) - self.clock())

    def sent(self, offset_s: float, at: float | None = None) -> float:
        """Record that the send scheduled at ``offset_s`` happened (now, or at ``at``); returns lateness in s."""
        if self.speed == 0:
            return 0.0
        now = self.clock() if at is None else at
        late = now - self.due(offset_s)
        self.lateness.add(late * 1000.0)
        self.drift_s = late
        return late

    def stats(self) -> PacingStats:
        h = self.lateness
        return PacingStats(
            frames=h.count,
            late_p50_ms=round(h.percentile(50), 3),
            late_p99_ms=round(h.percentile(99), 3),
            late_max_ms=round(h.max_ms, 3),
            late_mean_ms=round(h.total_ms / h.count, 3) if h.count else 0.0,
            drift_ms=round(self.drift_s * 1000.0, 3),
        )


async def wait_async(pacer: Pacer, offset_s: float) -> None:
    """Sleep (asyncio) until ``offset_s`` is due. Loops because a loop may wake a tick early."""
    while (delay := pacer.delay(offset_s)) > 0:
        await asyncio.sleep(delay)


def wait_sync(pacer: Pacer, offset_s: float, sleep: Callable[[float], None] | None = None) -> None:
    """Blocking wait until ``offset_s`` is due.

    ``time.sleep`` is looked up at call time, not bound at import: Locust monkey-patches it with
    gevent's after this module is imported, and the unpatched one would block every greenlet.
    """
    sleep = sleep or time.sleep
    while (delay := pacer.delay(offset_s)) > 0:
        sleep(delay)
