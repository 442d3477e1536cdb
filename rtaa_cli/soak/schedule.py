"""A soak's clock, from its scenario: when the first calls may start, when new calls stop, how long the
run waits for the calls in flight, and the steady window the target's memory slope is taken over.

Pure: wall times are offsets from the run's start ``t0``, which the runner reads once every Locust
worker is there.
"""
from __future__ import annotations

from dataclasses import dataclass

from rtaa_cli.soak.audioset import call_frames
from rtaa_cli.soak.scenario import Scenario, stage_boundaries

BURST_DELAY_S = 1.0  # burst: after the last user spawned, this long until every first call starts at once
DRAIN_SLACK_S = 15.0  # beyond the longest call and its final wait, before the run stops waiting for calls
STOP_SLACK_S = 5.0  # beyond the longest call and its final wait, before Locust stops a ramped-down user


def decode_audio(sc: Scenario) -> None:
    """Decode every audio file of the scenario into the per-process cache: a missing file fails here
    (before any process starts), and the decoding is done before the clock matters."""
    for audio in sc.audio:
        call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)


def max_call_seconds(sc: Scenario) -> float:
    """The longest call the scenario plays: its longest audio plus a hold or a reconnect's pause."""
    longest = 0.0
    for audio in sc.audio:
        frames = call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)
        longest = max(longest, len(frames) * sc.frame_ms / 1000.0)
    extra = max(sc.hold_s if sc.mix.get("hold") else 0.0, sc.reconnect_after_s + 2.0)
    return longest + extra


def stop_timeout(sc: Scenario, max_call_s: float) -> float | None:
    """Locust's stop timeout: with stages, a ramp down lets each stopped caller finish its call (never
    cut one short); without, None (users stop when the run says so)."""
    return max_call_s + sc.wait_final_s + STOP_SLACK_S if sc.stages else None


@dataclass(frozen=True)
class Schedule:
    scenario: Scenario
    t0: float  # wall time the run started (the load starts spawning)
    max_call_s: float  # max_call_seconds(scenario)

    @property
    def start_delay(self) -> float:
        return BURST_DELAY_S if self.scenario.burst else 0.0

    @property
    def burst_at(self) -> float | None:
        """Burst: every user's first call starts at this instant, after they have all spawned."""
        sc = self.scenario
        return self.t0 + sc.users / sc.spawn_rate + BURST_DELAY_S if sc.burst else None

    @property
    def end_at(self) -> float:
        """No new call starts after this wall time; the calls in flight finish."""
        return self.t0 + self.scenario.duration_s + self.start_delay

    @property
    def drain_deadline(self) -> float:
        """The run ends at this wall time even if calls are still running."""
        return self.end_at + self.max_call_s + self.scenario.wait_final_s + DRAIN_SLACK_S

    @property
    def memory_window_s(self) -> tuple[float, float]:
        """The steady part (seconds from t0): every user spawned and one whole call played since, until
        new calls stop."""
        sc = self.scenario
        full_at = (stage_boundaries(sc.stages)[[u for _, u in sc.stages].index(sc.users)] if sc.stages
                   else sc.users / sc.spawn_rate)  # when every user has spawned
        return (self.start_delay + full_at + self.max_call_s, self.end_at - self.t0)
