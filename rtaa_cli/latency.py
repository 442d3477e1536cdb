"""The one latency definition, used by replay, soak, smoke and the tests (docs/transcript-feed.md).

A result's latency is the wall time the **caller** received it minus the wall time at which the
caller sent the media frame that contains the end of the audio the result covers
(``audio_end_ms``). What counts, exactly (:class:`LatencySamples`):

* a result "has text" when its text is not empty after stripping whitespace; results without text
  (Deepgram's empty interims and endpointing finals over silence) are never latency samples;
* **first partial**: the first non-final result with text after the previous final (any final,
  with or without text, ends an utterance), one per utterance;
* **final**: every final result with text;
* a result whose audio offset is unknown (the feed carries none and no matcher found it) or covers
  audio the caller has not sent yet is counted (``finals``, ``unmeasured``) but gives no sample;
* coverage (delivery): the furthest ``audio_end_ms`` of any final result, with or without text.

Percentiles are nearest-rank over values rounded to 1 ms (:class:`rtaa_cli.soak.stats.Histogram`,
the one percentile implementation for latency).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES_PER_CALL = 20_000  # bounded: a 60-minute call yields a few thousand results


@dataclass
class SendLog:
    """Maps stream audio time to the wall time the caller sent it.

    ``record(audio_end_ms, wall)`` is called once per media frame, in send order, with the audio
    position at the end of that frame (ms since stream start, by bytes sent) and ``time.time()``.
    Bounded by the call length: one float pair per frame (a 60 min call at 36 ms is 100k frames).
    """

    audio_end_ms: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def record(self, audio_end_ms: float, wall: float) -> None:
        self.audio_end_ms.append(audio_end_ms)
        self.sent_at.append(wall)

    def sent_time_of(self, audio_ms: float) -> float | None:
        """Wall time at which the frame containing ``audio_ms`` was sent (None if not yet sent)."""
        i = bisect.bisect_left(self.audio_end_ms, audio_ms - 1e-6)
        if i >= len(self.audio_end_ms):
            return None
        return self.sent_at[i]

    def latency_ms(self, audio_end_ms: float, received_at: float) -> float | None:
        sent = self.sent_time_of(audio_end_ms)
        return None if sent is None else (received_at - sent) * 1000.0


@dataclass
class LatencySamples:
    """One call's latency samples and result counts, by the rules in the module docstring.

    Samples are ``(received_at_wall, latency_ms)`` pairs (soak's timeline needs the time).
    """

    first_partial: list[tuple[float, float]] = field(default_factory=list)
    final: list[tuple[float, float]] = field(default_factory=list)
    results: int = 0  # every transcript result of the call, with or without text
    finals: int = 0  # final results with text
    unmeasured: int = 0  # first partials / finals with text whose latency could not be measured
    final_audio_end_ms: float | None = None  # furthest audio covered by any final
    in_utterance: bool = False

    def add(self, is_final: bool, text: str, audio_end_ms: float | None, latency_ms: float | None,
            received_at: float) -> str | None:
        """Count one result; returns ``"first_partial"``/``"final"`` when it is one (else None)."""
        self.results += 1
        has_text = bool(text.strip())
        if is_final:
            self.in_utterance = False
            if audio_end_ms is not None and (self.final_audio_end_ms is None or audio_end_ms > self.final_audio_end_ms):
                self.final_audio_end_ms = audio_end_ms
            if not has_text:
                return None
            self.finals += 1
            self._sample(self.final, latency_ms, received_at)
            return "final"
        if not has_text or self.in_utterance:
            return None
        self.in_utterance = True
        self._sample(self.first_partial, latency_ms, received_at)
        return "first_partial"

    def _sample(self, into: list[tuple[float, float]], latency_ms: float | None, received_at: float) -> None:
        if latency_ms is None:
            self.unmeasured += 1
        elif len(into) < MAX_SAMPLES_PER_CALL:
            into.append((received_at, latency_ms))


def latency_summary(samples: LatencySamples) -> dict[str, dict[str, Any]]:
    """count/p50/p95/p99/max (ms) of finals and of first partials, for replay's and smoke's reports."""
    from rtaa_cli.soak.stats import LATENCY_RESOLUTION_MS, Histogram  # the one percentile code

    def one(values: list[tuple[float, float]]) -> dict[str, Any]:
        h = Histogram(LATENCY_RESOLUTION_MS)
        h.extend(ms for _, ms in values)
        return {"count": h.n, "p50_ms": h.percentile(50), "p95_ms": h.percentile(95),
                "p99_ms": h.percentile(99), "max_ms": None if h.max is None else round(h.max, 3)}

    return {"final": one(samples.final), "first_partial": one(samples.first_partial)}
