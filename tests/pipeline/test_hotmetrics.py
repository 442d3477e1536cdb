"""The lock-free per-frame metrics expose exactly what prometheus_client's own Counter/Histogram would."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from rtaa_cli.pipeline.hotmetrics import LoopCounter, LoopHistogram

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.1)


def _samples(registry: CollectorRegistry) -> list[str]:
    # *_created samples are timestamps of object creation: the one thing allowed to differ
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1, c2 = LoopCounter("x_frames", "doc", ours), Counter("x_frames", "doc", registry=theirs)
    h1 = LoopHistogram("x_latency_seconds", "doc", BUCKETS, ours)
    h2 = Histogram("x_latency_seconds", "doc", buckets=BUCKETS, registry=theirs)
    rng = random.Random(3)
    values = [rng.choice(BUCKETS) for _ in range(50)] + [rng.uniform(0, 0.2) for _ in range(500)] + [5.0]
    for v in values:  # bucket edges included: le means "less than or equal"
        c1.inc()
        c2.inc()
        h1.observe(v)
        h2.observe(v)
    c1.inc(2.5)
    c2.inc(2.5)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("x_frames_total") == len(values) + 2.5
    assert ours.get_sample_value("x_latency_seconds_bucket", {"le": "+Inf"}) == len(values)
