"""The soak's clock (rtaa_cli/soak/schedule.py): the instants a run is driven by, from its scenario,
computed by hand here from the scenario's numbers."""
from __future__ import annotations

import pytest

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.schedule import (
    BURST_DELAY_S, DRAIN_SLACK_S, STOP_SLACK_S, Schedule, decode_audio, max_call_seconds, stop_timeout,
)
from rtaa_cli.soak.scenario import Scenario

T0 = 1_800_000_000.0


def _sc(**kw: object) -> Scenario:
    base: dict[str, object] = {"audio": ["synthetic"], "call_length_s": 20.0, "frame_ms": 20, "wait_final_s": 10.0}
    return Scenario(**{**base, **kw})  # type: ignore[arg-type]


def test_the_longest_call_is_its_audio_plus_a_hold_or_a_reconnect_pause() -> None:
    assert max_call_seconds(_sc(reconnect_after_s=0.5)) == pytest.approx(20.0 + 2.5)  # 1000 frames of 20 ms
    assert max_call_seconds(_sc(mix={"normal": 1.0, "hold": 1.0}, hold_s=15.0)) == pytest.approx(35.0)
    assert max_call_seconds(_sc(audio=["synthetic", "synthetic"], call_length_s=7.2, frame_ms=36,
                                reconnect_after_s=4.0)) == pytest.approx(7.2 + 6.0)


def test_a_steady_run_stops_new_calls_at_its_duration_and_waits_for_the_longest_call() -> None:
    sc = _sc(users=10, spawn_rate=5.0, duration_s=60.0)
    s = Schedule(sc, T0, 22.5)
    assert (s.start_delay, s.burst_at, s.end_at) == (0.0, None, T0 + 60.0)
    assert s.drain_deadline == T0 + 60.0 + 22.5 + 10.0 + DRAIN_SLACK_S
    # steady: every user spawned (2 s), then one whole call, until new calls stop
    assert s.memory_window_s == pytest.approx((2.0 + 22.5, 60.0))
    assert stop_timeout(sc, 22.5) is None


def test_a_burst_starts_every_first_call_at_once_after_the_last_spawn() -> None:
    s = Schedule(_sc(users=10, spawn_rate=5.0, duration_s=60.0, burst=True), T0, 22.5)
    assert s.start_delay == BURST_DELAY_S
    assert s.burst_at == T0 + 2.0 + BURST_DELAY_S
    assert s.end_at == T0 + 60.0 + BURST_DELAY_S
    assert s.memory_window_s == pytest.approx((BURST_DELAY_S + 2.0 + 22.5, 60.0 + BURST_DELAY_S))


def test_stages_reach_full_load_at_the_stage_that_ends_at_the_most_users() -> None:
    stages = [(10.0, 4), (20.0, 8), (10.0, 0)]
    sc = _sc(stages=stages, users=8, duration_s=40.0)
    s = Schedule(sc, T0, 12.0)
    assert s.memory_window_s == pytest.approx((30.0 + 12.0, 40.0))
    assert stop_timeout(sc, 12.0) == 12.0 + 10.0 + STOP_SLACK_S  # a ramp down lets a stopped caller finish


def test_missing_audio_fails_before_anything_starts(tmp_path) -> None:
    decode_audio(_sc())  # synthetic: nothing to read
    with pytest.raises(RtaaError, match="no such file"):
        decode_audio(_sc(audio=["synthetic", str(tmp_path / "absent.wav")]))
