"""The one latency definition (DESIGN.md): receive time minus the wall time at which the caller
sent the end of the audio that the result covers. Used by replay, soak, smoke and the tests."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field


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
