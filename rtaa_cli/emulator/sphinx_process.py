"""pocketsphinx decoding in worker processes, behind the same interface as :class:`SphinxTranscriber`.

pocketsphinx holds the GIL inside each decoder call (up to ~1 s for an utterance's ``end_utt`` on a busy
machine). In a thread of the emulator's (or the pipeline's) process that stalls its event loop: frames
are read late and voice-activity events (SpeechStarted) wait behind recognition, which barge-in tests
depend on. Here each stream's decoder lives in one of a few worker processes (one per core, started on
first use and shared by every stream of this process); the caller's thread only pickles audio onto a pipe
and, for ``words``, blocks on the reply, with the GIL released. Same decoder, same words: the worker runs
:class:`SphinxTranscriber` itself.

A worker that dies fails the streams it held (``words`` raises ``SphinxWorkerLost``); the next stream
gets a fresh worker. A worker ends when this process does (its pipe reaches EOF); a forked child starts
workers of its own.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from itertools import count
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from rtaa_cli.emulator.segmenter import Window
from rtaa_cli.emulator.transcribers import Word


class SphinxWorkerLost(RuntimeError):
    """The decoder process of a stream ended (killed, crashed): the stream cannot be decoded further."""


class _Worker:
    """One decoder process and the pipe pair to it; a reader thread routes replies to their streams."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtaa_cli.emulator.sphinx_process", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)
        self._send_lock = threading.Lock()
        self._replies: dict[int, queue.SimpleQueue] = {}
        self.streams = 0
        self.alive = True
        threading.Thread(target=self._read, name="rtaa-sphinx-replies", daemon=True).start()

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            if not self.alive:
                raise SphinxWorkerLost("the pocketsphinx worker process has ended")
            try:
                self._out.send(msg)
            except OSError as exc:
                self._lost()
                raise SphinxWorkerLost(f"the pocketsphinx worker process has ended ({exc})") from None

    def register(self, sid: int) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        self._replies[sid] = q
        return q

    def unregister(self, sid: int) -> None:
        self._replies.pop(sid, None)

    def _read(self) -> None:
        while True:
            try:
                sid, reply = self._in.recv()
            except (EOFError, OSError):
                break
            q = self._replies.get(sid)
            if q is not None:
                q.put(reply)
        self._lost()

    def _lost(self) -> None:
        self.alive = False
        for q in list(self._replies.values()):
            q.put(SphinxWorkerLost(f"the pocketsphinx worker process ended (exit code {self.proc.poll()})"))


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._size = max(1, min(4, os.cpu_count() or 1))

    def acquire(self) -> _Worker:
        """The least-loaded live worker (a new one while fewer than one per core run)."""
        with self._lock:
            self._workers = [w for w in self._workers if w.alive]
            if len(self._workers) < self._size:
                self._workers.append(_Worker())
            worker = min(self._workers, key=lambda w: w.streams)
            worker.streams += 1
            return worker

    def release(self, worker: _Worker) -> None:
        with self._lock:
            worker.streams -= 1

    def forget(self) -> None:
        """In a forked child: the parent's workers are not ours (their reply threads did not survive the
        fork); drop our copies of their pipes so they still see EOF when the parent ends."""
        for worker in self._workers:
            for conn in (worker._out, worker._in):
                try:
                    conn.close()
                except OSError:
                    pass
        self._workers = []
        self._lock = threading.Lock()


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.forget)
_SIDS = count(1)


class RemoteSphinxTranscriber:
    """:class:`SphinxTranscriber`'s interface; the decoding runs in a worker process. Like it, not
    thread-safe: one thread drives a stream (its ``words`` replies come back in order)."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self._sid = next(_SIDS)
        self._worker = _POOL.acquire()
        self._replies = self._worker.register(self._sid)
        self._closed = False
        self._worker.send(("open", self._sid, sample_rate))

    def feed(self, samples: np.ndarray) -> None:
        self._worker.send(("feed", self._sid, np.ascontiguousarray(samples, dtype=np.int16).tobytes()))

    def words(self, window: Window, final: bool) -> list[Word]:
        self._worker.send(("words", self._sid, (window.start, window.end, window.voiced_start, window.voiced_end),
                           final))
        reply = self._replies.get()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._worker.send(("close", self._sid))
        except SphinxWorkerLost:
            pass
        self._worker.unregister(self._sid)
        _POOL.release(self._worker)


def _serve(inbox: Connection, outbox: Connection) -> None:
    """The worker: one :class:`SphinxTranscriber` per stream id; errors go back as the reply."""
    from rtaa_cli.emulator.transcribers import SphinxTranscriber

    decoders: dict[int, SphinxTranscriber] = {}
    failed: dict[int, BaseException] = {}
    while True:
        try:
            msg = inbox.recv()
        except EOFError:
            return
        op, sid = msg[0], msg[1]
        try:
            if op == "open":
                decoders[sid] = SphinxTranscriber(msg[2])
            elif op == "feed":
                if sid in decoders:
                    decoders[sid].feed(np.frombuffer(msg[2], dtype=np.int16))
            elif op == "words":
                if sid in failed:
                    outbox.send((sid, failed.pop(sid)))
                else:
                    outbox.send((sid, decoders[sid].words(Window(*msg[2]), msg[3])))
            elif op == "close":
                failed.pop(sid, None)
                decoder = decoders.pop(sid, None)
                if decoder is not None:
                    decoder.close()
        except Exception as exc:  # noqa: BLE001 - a stream's decode error fails that stream, not the worker
            decoders.pop(sid, None)
            err = RuntimeError(f"pocketsphinx: {type(exc).__name__}: {exc}")
            if op == "words":
                outbox.send((sid, err))
            else:
                failed[sid] = err


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
