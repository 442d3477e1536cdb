"""Sans-I/O bookkeeping of one call's audio in *stream audio time* (bytes since the call's first frame,
across every Exotel stream and provider connection of the call).

It answers three questions the worker has after a provider reconnect, without touching a socket:
which audio to replay (everything not yet covered by a final result, bounded), where the new
connection's time zero sits (``base``), and whether a final result repeats one already published.
It also remembers when each recent frame was received, for the end-to-end latency histogram, and which
audio the transcript can no longer cover (a *gap*): trimmed from the replay buffer before a new connection
could be sent it, or never finalised when the call ended without its finals.
"""
from __future__ import annotations

import bisect
from collections import deque


class CallTimeline:
    """Byte positions are stream audio time; ``bytes_per_ms`` converts (16-bit mono: rate / 500)."""

    __slots__ = ("bytes_per_ms", "end", "final_end", "_buf", "_buf_start", "_limit", "_slack",
                 "trimmed_bytes", "_recv_end", "_recv_at", "_lost_end")

    def __init__(self, sample_rate: int, replay_limit_s: float = 15.0, latency_window: int = 512) -> None:
        self.bytes_per_ms = sample_rate * 2 / 1000.0
        self.end = 0  # bytes received so far
        self.final_end = 0  # bytes covered by published final results
        self._buf = bytearray()  # audio [_buf_start, end): not yet covered by a final
        self._buf_start = 0
        self._limit = max(2, int(replay_limit_s * 1000 * self.bytes_per_ms)) & ~1
        # Trim in steps of ~1 s so a call at the limit does not memmove the buffer on every frame.
        self._slack = max(2, int(1000 * self.bytes_per_ms)) & ~1
        self.trimmed_bytes = 0  # replayable audio given up at the limit (counted, documented)
        self._lost_end = 0  # audio before this position was already reported as a gap
        self._recv_end: deque[int] = deque(maxlen=latency_window)
        self._recv_at: deque[float] = deque(maxlen=latency_window)

    def resume_at(self, position: int) -> None:
        """A call taken over from another worker: audio up to ``position`` was finalised there."""
        self.end = self.final_end = self._buf_start = position

    # -- audio in -------------------------------------------------------------------------------
    def append(self, pcm: bytes, received_at: float) -> int:
        """Record a frame; returns its end position."""
        self._buf += pcm
        self.end += len(pcm)
        self._recv_end.append(self.end)
        self._recv_at.append(received_at)
        if len(self._buf) > self._limit + self._slack:
            cut = len(self._buf) - self._limit
            del self._buf[:cut]
            self._buf_start += cut
            self.trimmed_bytes += cut
        return self.end

    def unfinalized(self) -> tuple[int, bytes]:
        """(start position, audio) that a new provider connection must be sent to lose nothing."""
        return self._buf_start, bytes(self._buf)

    def since(self, pos: int) -> bytes:
        """Buffered audio from stream position ``pos`` to the end (what arrived after a replay began)."""
        return bytes(self._buf[max(0, pos - self._buf_start):])

    # -- gaps -----------------------------------------------------------------------------------
    def replay_gap(self) -> tuple[int, int] | None:
        """For a connection about to be sent ``unfinalized()``: the (start, end) positions no final covers
        and the replay no longer holds (trimmed at the limit while no connection could finalise them), once."""
        return self._lose(self._buf_start)

    def lost_tail(self) -> tuple[int, int] | None:
        """The call ends without its finals: the (start, end) positions no final covers, once."""
        return self._lose(self.end)

    def _lose(self, upto: int) -> tuple[int, int] | None:
        start = max(self.final_end, self._lost_end)
        if upto <= start:
            return None
        self._lost_end = upto
        return start, upto

    # -- results out ----------------------------------------------------------------------------
    def to_stream_ms(self, base: int, provider_seconds: float) -> float:
        """A provider timestamp on a connection whose first byte was stream position ``base``."""
        return base / self.bytes_per_ms + provider_seconds * 1000.0

    def is_stale(self, end_ms: float) -> bool:
        """True when a result ends inside audio already covered by a final (a repeat after replay)."""
        return end_ms * self.bytes_per_ms <= self.final_end + 1

    def on_final(self, end_ms: float) -> None:
        """A final result covering audio up to ``end_ms`` was published: that audio needs no replay."""
        pos = min(self.end, int(end_ms * self.bytes_per_ms)) & ~1
        if pos <= self.final_end:
            return
        self.final_end = pos
        if pos > self._buf_start:
            cut = min(pos - self._buf_start, len(self._buf))
            del self._buf[:cut]
            self._buf_start += cut

    def received_at(self, end_ms: float) -> float | None:
        """Receive time of the frame holding audio position ``end_ms`` (None if outside the window)."""
        pos = end_ms * self.bytes_per_ms
        i = bisect.bisect_left(self._recv_end, pos - 1)
        if i >= len(self._recv_end) or (i == 0 and len(self._recv_end) == self._recv_end.maxlen):
            return None  # not received yet, or older than the window
        return self._recv_at[i]
