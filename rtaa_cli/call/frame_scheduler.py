"""One greenlet per process sends every paced call's media frames (a heap of due times).

Why: with a timer and two greenlet switches per frame per call, plus websockets' locked send path
and gevent's ``sendall`` (a ``getsockopt`` per call), one Locust process spent ~50 us of CPU per
36 ms frame and ran late beyond ~150 calls. Here a call's greenlet hands a *run* of frames (up to
its next hold / reconnect / second stream) to the process's scheduler and waits; the scheduler
pops whichever frame is due next, builds it from base64 encoded once per process
(:func:`rtaa_cli.protocols.exotel.b64_payloads`), frames it (:func:`text_frame`, masked as a client must)
and writes it with one non-blocking ``os.write``.

The schedule is drift-free and lateness is measured as for one call alone: frame ``k`` of a run is due at
``pacer.due(k * frame_s + gap)`` and ``pacer.sent`` is recorded just before its write.

The scheduler never blocks. A frame it cannot write whole right now goes back to the call's own
greenlet, which finishes it through the blocking path and resubmits the rest of the run:

* the connection is not OPEN any more (the call greenlet's ``ws.send`` raises ``ConnectionClosed``,
  recorded by the driver);
* websockets itself is writing (its lock is held: a pong or a close reply stuck on a full socket
  buffer), or the socket buffer is full (``EAGAIN``): written by ``ws.send`` under that lock;
* a partial write: the tail is flushed under that lock, so frames never interleave;
* the socket is not a plain gevent (non-blocking) socket, e.g. TLS: every frame goes back.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, Sequence

# raw frames written to websockets' socket: the one guarded module of library internals
from rtaa_cli.internals import text_frame, write_nowait

if TYPE_CHECKING:
    from rtaa_cli.call.recorder import CallRecorder
    from rtaa_cli.call.script import Payloads
    from rtaa_cli.pacing import Pacer
    from rtaa_cli.protocols.exotel import StreamEncoder

_YIELD_EVERY = 64  # sends per batch before letting other greenlets (readers, handshakes) run


class FrameSink(Protocol):
    """What the scheduler needs of a call's stream (the gevent driver's ``Stream``, which imports this
    module, so the scheduler knows it only by this protocol): its encoder, its websockets sync
    connection and whether that may be written to directly."""

    enc: StreamEncoder
    ws: Any
    fast: bool


class MediaRun:
    """Frames ``k .. end-1`` of one stream, due at ``pacer.due(k * frame_s + gap)``."""

    __slots__ = ("stream", "pacer", "recorder", "frames", "b64", "k", "end", "gap", "frame_s",
                 "done", "pending", "error", "cancelled")

    def __init__(self, stream: FrameSink, pacer: Pacer, recorder: CallRecorder, frames: Sequence[bytes],
                 b64: Payloads, k: int, end: int, gap: float, frame_s: float) -> None:
        self.stream, self.pacer, self.recorder = stream, pacer, recorder
        self.frames, self.b64 = frames, b64
        self.k, self.end, self.gap, self.frame_s = k, end, gap, frame_s
        self.done = threading.Event()
        # (text, unsent tail or None) of frame k, handed back to the call greenlet
        self.pending: tuple[str, bytes | None] | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def due(self) -> float:
        return self.pacer.due(self.k * self.frame_s + self.gap)

    def sent(self, nbytes: int) -> None:
        """Frame k was written whole: into the call's record (and the latency definition's send log)."""
        self.recorder.media_sent(nbytes, time.time())
        self.k += 1


class FrameScheduler:
    """The process's one frame sender (see the module docstring). Start lazily with :func:`scheduler`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, MediaRun]] = []
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._sleeping_until = float("inf")
        self._thread = threading.Thread(target=self._loop, name="rtaa-frame-scheduler", daemon=True)
        self._thread.start()

    def play(self, run: MediaRun, timeout: float) -> None:
        """Send ``run`` (blocks this greenlet until it ends or a frame is handed back)."""
        if run.k >= run.end:
            return
        run.done.clear()
        run.cancelled = False
        due = run.due()
        heapq.heappush(self._heap, (due, next(self._seq), run))
        if due < self._sleeping_until:
            self._wake.set()
        try:
            if not run.done.wait(timeout):
                raise TimeoutError(f"frame scheduler did not finish a run within {timeout:.0f} s")
        finally:
            run.cancelled = True  # killed or timed out: the scheduler drops it

    def _loop(self) -> None:
        heap, clock, sleep = self._heap, time.monotonic, time.sleep
        batch = 0
        while True:
            if not heap:
                self._sleeping_until = float("inf")
                self._wake.wait()
                self._wake.clear()
                continue
            due, _, run = heap[0]
            now = clock()
            if due > now:
                self._sleeping_until = due
                batch = 0
                if self._wake.wait(due - now):
                    self._wake.clear()
                continue
            if run.cancelled:
                heapq.heappop(heap)
                continue
            try:
                self._send(run)
            except Exception as exc:  # noqa: BLE001 - a bug must end the call, not the process's sender
                run.error = exc
                run.done.set()
            if run.done.is_set():
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (run.due(), next(self._seq), run))
            batch += 1
            if batch >= _YIELD_EVERY:
                batch = 0
                self._sleeping_until = float("inf")
                sleep(0)

    @staticmethod
    def _send(run: MediaRun) -> None:
        k = run.k
        stream = run.stream
        pcm_len = len(run.frames[k])
        text = stream.enc.media_b64(run.b64[k], pcm_len)
        offset = k * run.frame_s + run.gap
        if stream.fast:
            at = run.pacer.clock()
            tail = write_nowait(stream.ws, text_frame(text.encode()))
            if tail is not None:  # written, whole or in part: it left now
                run.pacer.sent(offset, at)
                if tail == b"":
                    run.sent(pcm_len)
                    if run.k >= run.end:
                        run.done.set()
                    return
        else:
            tail = None
        # The call greenlet finishes frame k through the blocking path; a frame not written at all here
        # is recorded as sent (for lateness) there, when it really leaves.
        run.pending = (text, tail)
        run.done.set()


_scheduler: FrameScheduler | None = None


def scheduler() -> FrameScheduler:
    """This process's scheduler (a Locust worker is its own process)."""
    global _scheduler
    if _scheduler is None:
        _scheduler = FrameScheduler()
    return _scheduler
