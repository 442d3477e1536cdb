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

from array import array

from rtaa_cli.pipeline.ring import ByteRing


class CallTimeline:
    """Byte positions are stream audio time; ``bytes_per_ms`` converts (16-bit mono: rate / 500)."""

    __slots__ = ("bytes_per_ms", "end", "final_end", "_ring", "trimmed_bytes", "_recv_end", "_recv_at",
                 "_recv_next", "_recv_count", "_lost_end")

    def __init__(self, sample_rate: int, replay_limit_s: float = 15.0, latency_window: int = 512) -> None:
        self.bytes_per_ms = sample_rate * 2 / 1000.0
        self.end = 0  # bytes received so far
        self.final_end = 0  # bytes covered by published final results
        # Audio [ring.start, end): not yet covered by a final, at most replay_limit_s of it.
        self._ring = ByteRing(max(2, int(replay_limit_s * 1000 * self.bytes_per_ms)) & ~1)
        self.trimmed_bytes = 0  # replayable audio given up at the limit (counted, documented)
        self._lost_end = 0  # audio before this position was already reported as a gap
        # (audio end, receive time) of the last ``latency_window`` frames: two preallocated rings of C
        # numbers (8 KB per call at 512), not a deque of Python ints and floats per frame.
        latency_window = max(1, latency_window)
        self._recv_end = array("q", bytes(8 * latency_window))
        self._recv_at = array("d", bytes(8 * latency_window))
        self._recv_next = 0  # slot the next frame goes to
        self._recv_count = 0

    def resume_at(self, position: int) -> None:
        """A call taken over from another worker: audio up to ``position`` was finalised there."""
        self.end = self.final_end = position
        self._ring.reset(position)

    # -- audio in -------------------------------------------------------------------------------
    def append(self, pcm: bytes, received_at: float) -> int:
        """Record a frame; returns its end position."""
        end = self.end = self.end + len(pcm)
        self.trimmed_bytes += self._ring.append(pcm)
        i = self._recv_next
        self._recv_end[i] = end
        self._recv_at[i] = received_at
        i += 1
        self._recv_next = 0 if i == len(self._recv_end) else i
        if self._recv_count < i:
            self._recv_count = i
        return end

    def unfinalized(self) -> tuple[int, bytes]:
        """(start position, audio) that a new provider connection must be sent to lose nothing."""
        ring = self._ring
        return ring.start, ring.read(ring.start)

    def since(self, pos: int) -> bytes:
        """Buffered audio from stream position ``pos`` to the end (what arrived after a replay began)."""
        return self._ring.read(pos)

    def close(self) -> None:
        """The call is over: give the replay buffer's memory back now."""
        self._ring.close()

    # -- gaps -----------------------------------------------------------------------------------
    def replay_gap(self) -> tuple[int, int] | None:
        """For a connection about to be sent ``unfinalized()``: the (start, end) positions no final covers
        and the replay no longer holds (trimmed at the limit while no connection could finalise them), once."""
        return self._lose(self._ring.start)

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
        self._ring.discard_to(pos)

    def received_at(self, end_ms: float) -> float | None:
        """Receive time of the frame holding audio position ``end_ms`` (None if outside the window)."""
        pos = end_ms * self.bytes_per_ms - 1
        ends, count = self._recv_end, self._recv_count
        size = len(ends)
        oldest = self._recv_next if count == size else 0  # slot of the oldest frame held
        lo, hi = 0, count  # binary search, in age order, for the first frame ending at or after pos
        while lo < hi:
            mid = (lo + hi) // 2
            if ends[(oldest + mid) % size] < pos:
                lo = mid + 1
            else:
                hi = mid
        if lo >= count or (lo == 0 and count == size):
            return None  # not received yet, or older than the window
        return self._recv_at[(oldest + lo) % size]
