"""The target's resident memory over a soak, from its Prometheus ``process_resident_memory_bytes``.

"Memory that grows for hours" is one of the failures rtaa exists to find, so a soak samples the target's
RSS while it runs and reports the growth rate over the *steady* part of the run (after the ramp-up and
one call length, when the number of live calls no longer rises): a least-squares slope in MB per hour.
A leak shows as a positive slope that a longer run does not flatten; allocator warm-up does not survive a
30-minute window. Sans-I/O: the runner feeds ``(seconds into the run, bytes)`` samples.
"""
from __future__ import annotations

from typing import Any

RSS_METRIC = "process_resident_memory_bytes"  # prometheus_client's ProcessCollector (rtaa serve has it)
MIN_WINDOW_S = 60.0  # a slope over less than a minute says more about GC timing than about leaks
MIN_SAMPLES = 10
MAX_PLOT_POINTS = 600  # the report's series is decimated to this; the slope uses every sample


def rss_from_metrics(text: str | None) -> float | None:
    """``process_resident_memory_bytes`` from Prometheus text; None when absent or unparsable."""
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith(RSS_METRIC):
            name, _, value = line.partition(" ")
            if name != RSS_METRIC:
                continue  # e.g. a labelled or longer-named sample
            try:
                return float(value.split()[0])
            except (ValueError, IndexError):
                return None
    return None


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, MB)`` points, in MB per hour."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0.0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600.0


class TargetMemory:
    """RSS samples of the target, and their reduction for the report."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.samples: list[tuple[float, float]] = []  # (seconds into the run, MB)

    def add(self, t_s: float, rss_bytes: float) -> None:
        self.samples.append((round(t_s, 3), rss_bytes / 1e6))

    def growth_mb_per_h(self, steady_from_s: float, steady_to_s: float) -> float | None:
        """Slope over the steady window; None when the window is too short to mean anything."""
        pts = [(t, v) for t, v in self.samples if steady_from_s <= t <= steady_to_s]
        if len(pts) < MIN_SAMPLES or pts[-1][0] - pts[0][0] < MIN_WINDOW_S:
            return None
        return slope_per_hour(pts)

    def unmeasured_reason(self, steady_from_s: float, steady_to_s: float) -> str:
        """Why :meth:`growth_mb_per_h` is None (one line for the report)."""
        if not self.samples:
            return f"{self.source} never gave process_resident_memory_bytes (is it a Prometheus /metrics?)"
        pts = [t for t, _ in self.samples if steady_from_s <= t <= steady_to_s]
        span = (pts[-1] - pts[0]) if pts else 0.0
        return (f"the steady window ({steady_from_s:.0f}-{steady_to_s:.0f} s into the run) held {len(pts)} RSS samples "
                f"over {span:.0f} s; the slope needs >= {MIN_SAMPLES} over >= {MIN_WINDOW_S:g} s: run longer "
                f"(--duration)")

    def summary(self, steady_from_s: float, steady_to_s: float) -> dict[str, Any] | None:
        if not self.samples:
            return None
        values = [v for _, v in self.samples]
        growth = self.growth_mb_per_h(steady_from_s, steady_to_s)
        # The second half's slope alone: a leak keeps it near the whole window's; allocator warm-up and
        # fragmentation, which level off, leave it well below (the threshold still uses the whole window).
        middle = (steady_from_s + steady_to_s) / 2.0
        late = self.growth_mb_per_h(middle, steady_to_s)
        return {
            "source": self.source,
            "samples": len(values),
            "rss_mb": {"first": round(values[0], 2), "last": round(values[-1], 2), "max": round(max(values), 2)},
            "steady_window_s": [round(steady_from_s, 1), round(steady_to_s, 1)],
            "growth_mb_per_h": None if growth is None else round(growth, 3),
            "second_half_growth_mb_per_h": None if late is None else round(late, 3),
            "series": _decimated(self.samples),
        }


def _decimated(samples: list[tuple[float, float]]) -> dict[str, list[float]]:
    step = max(1, -(-len(samples) // MAX_PLOT_POINTS))
    kept = samples[::step]
    return {"t": [t for t, _ in kept], "rss_mb": [round(v, 3) for _, v in kept]}
