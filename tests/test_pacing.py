"""Pacer core driven by a fake clock: no drift over an hour, lateness accounting, holds, speed."""
from __future__ import annotations

import asyncio
import random

import pytest

from rtaa_cli.pacing import LatenessHistogram, Pacer, wait_async, wait_sync

FRAME_S = 0.036


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "waiter slept for a non-positive time"
        self.now += seconds


def test_no_drift_over_one_hour_of_36ms_frames_with_a_sloppy_sleeper() -> None:
    # Every sleep overshoots by 0.2-1.5 ms and the sender stalls 30 ms now and then. Cumulative
    # sleeps would drift by roughly frames x overshoot (~85 s over an hour); absolute due times don't.
    clock, rng = FakeClock(), random.Random(7)
    pacer = Pacer(speed=1.0, clock=clock)
    pacer.start()
    t0 = clock()
    frames = int(3600 / FRAME_S)  # 100_000

    def sloppy_sleep(seconds: float) -> None:
        clock.sleep(seconds + rng.uniform(0.0002, 0.0015))

    for k in range(frames):
        wait_sync(pacer, k * FRAME_S, sleep=sloppy_sleep)
        if k % 5000 == 2500:
            clock.now += 0.030  # a stall (GC pause, loaded CPU) after this frame's wait
        pacer.sent(k * FRAME_S)

    stats = pacer.stats()
    assert stats.frames == frames
    assert pacer.due((frames - 1) * FRAME_S) == pytest.approx(t0 + (frames - 1) * FRAME_S, abs=1e-9)
    assert 0.2 <= stats.drift_ms <= 1.6  # the last frame is late only by its own overshoot
    assert 0.2 <= stats.late_p50_ms <= 1.6
    assert stats.late_p99_ms <= 1.6
    assert 30.0 <= stats.late_max_ms <= 31.6  # the stalls are seen, and not carried forward
    assert clock() - t0 == pytest.approx(3600 - FRAME_S, abs=0.002)


def test_lateness_is_actual_minus_due_and_summarised() -> None:
    clock = FakeClock(50.0)
    pacer = Pacer(clock=clock)
    pacer.start()
    lateness_ms = [0.0, 1.0, 2.0, 3.0, 40.0, 0.5, 0.5, 250.0, 0.0, 1.0]
    for k, late in enumerate(lateness_ms):
        clock.now = 50.0 + k * FRAME_S + late / 1000.0
        assert pacer.delay(k * FRAME_S) == 0.0
        assert pacer.sent(k * FRAME_S) == pytest.approx(late / 1000.0)
    stats = pacer.stats()
    assert stats.frames == 10
    assert stats.late_max_ms == pytest.approx(250.0)
    assert stats.late_mean_ms == pytest.approx(sum(lateness_ms) / 10, abs=1e-3)
    assert stats.late_p50_ms == pytest.approx(1.0, abs=0.05)  # 5th of 10 sorted values
    assert stats.late_p99_ms == pytest.approx(250.0, abs=5.0)
    assert stats.drift_ms == pytest.approx(1.0)


def test_early_wakeups_count_as_on_time() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.start()
    clock.now -= 0.0001
    pacer.sent(0.0)
    assert pacer.stats().late_max_ms == 0.0


def test_delay_is_time_until_due() -> None:
    clock = FakeClock(10.0)
    pacer = Pacer(clock=clock)
    pacer.start()
    assert pacer.delay(0.0) == 0.0
    assert pacer.delay(0.5) == pytest.approx(0.5)
    clock.now = 10.2
    assert pacer.delay(0.5) == pytest.approx(0.3)
    clock.now = 11.0
    assert pacer.delay(0.5) == 0.0


def test_hold_keeps_schedule_absolute() -> None:
    # 100 frames, a 12 s hold after frame 49: frames after it are due at t0 + k*frame + 12 s,
    # even though the frame before the hold was sent 200 ms late.
    clock = FakeClock(0.0)
    pacer = Pacer(clock=clock)
    pacer.start()
    hold_s, offsets = 12.0, []
    for k in range(100):
        offsets.append(k * FRAME_S + (hold_s if k >= 50 else 0.0))
    sent_at = []
    for k, offset in enumerate(offsets):
        wait_sync(pacer, offset, sleep=clock.sleep)
        if k == 49:
            clock.now += 0.2
        pacer.sent(offset)
        sent_at.append(clock())
    assert sent_at[50] - sent_at[49] == pytest.approx(hold_s + FRAME_S - 0.2)
    assert sent_at[99] == pytest.approx(99 * FRAME_S + hold_s)
    assert pacer.stats().drift_ms == pytest.approx(0.0)
    assert pacer.stats().late_max_ms == pytest.approx(200.0)


@pytest.mark.parametrize("speed", [2.0, 10.0, 0.5])
def test_speed_scales_the_schedule(speed: float) -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(speed=speed, clock=clock)
    pacer.start()
    for k in range(50):
        wait_sync(pacer, k * FRAME_S, sleep=clock.sleep)
        pacer.sent(k * FRAME_S)
    assert clock() == pytest.approx(49 * FRAME_S / speed)
    assert pacer.stats().late_max_ms == pytest.approx(0.0, abs=1e-6)


def test_speed_zero_never_waits_and_never_counts_late() -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(speed=0, clock=clock)
    pacer.start()

    def forbidden_sleep(seconds: float) -> None:
        raise AssertionError(f"speed 0 slept {seconds}")

    for k in range(1000):
        wait_sync(pacer, k * FRAME_S, sleep=forbidden_sleep)
        clock.now += 0.01
        pacer.sent(k * FRAME_S)
    stats = pacer.stats()
    assert (stats.frames, stats.late_max_ms, stats.drift_ms) == (0, 0.0, 0.0)


def test_negative_speed_rejected() -> None:
    with pytest.raises(ValueError):
        Pacer(speed=-1)


def test_histogram_percentiles_and_merge() -> None:
    a, b = LatenessHistogram(), LatenessHistogram()
    for ms in range(100):  # 0..99 ms
        a.add(float(ms))
    for _ in range(100):
        b.add(6000.0)  # beyond the coarse range: overflow bin, exact max
    assert a.percentile(50) == pytest.approx(50.0, abs=5.0)
    assert a.percentile(10) == pytest.approx(9.05, abs=0.06)
    assert a.percentile(100) == 99.0
    a.merge(b)
    assert a.count == 200
    assert a.max_ms == 6000.0
    assert a.percentile(99) == 6000.0
    assert a.percentile(25) == pytest.approx(50.0, abs=5.0)
    assert LatenessHistogram().percentile(99) == 0.0


def test_async_waiter_on_the_real_loop_waits_until_due() -> None:
    # Real clock, small offsets: asserts only that we never send before the due time.
    async def run() -> list[float]:
        pacer = Pacer(speed=1.0)
        pacer.start()
        lates = []
        for k in range(5):
            await wait_async(pacer, k * 0.01)
            lates.append(pacer.sent(k * 0.01))
        return lates

    lates = asyncio.run(run())
    assert all(late >= 0.0 for late in lates), lates
