"""Stream I/O: one accepted ``/v1/listen`` connection from its handler to its accounted close.

Each stream gets a :class:`~rtaa_cli.emulator.session.Session` (the sans-I/O core), a sender task that
releases messages at their due time, and an idle watchdog task.

Hot path (segmenter engine, hundreds of streams per core): each message goes from websockets' parser
straight into the session inside ``data_received`` (:class:`~rtaa_cli.emulator.connection.InlineConnection`,
no task switch per frame), and a message that is due now is written at once when nothing is queued ahead
of it and the socket takes it; only delayed messages, closes and back-pressured writes go through the
sender task. The sphinx engine drives each stream from a thread of its own (decoding itself runs in worker
processes, rtaa_cli/emulator/sphinx_process.py) and reads with ``async for``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rtaa_cli.protocols.closecodes import Close as CloseCode
from rtaa_cli.emulator.accounting import Accounting, ConnectionRecord
from rtaa_cli.emulator.config import EmulatorConfig
from rtaa_cli.emulator.connection import InlineConnection
from rtaa_cli.emulator.control import log_event
from rtaa_cli.emulator.handshake import Accepted
from rtaa_cli.emulator.messages import INTERNAL_FAULT
from rtaa_cli.emulator.session import Close, Send, Session, VoiceTap
from rtaa_cli.emulator.sphinx_process import RemoteSphinxTranscriber
from rtaa_cli.emulator.transcribers import PlaceholderTranscriber

log = logging.getLogger("rtaa.emulator")

SPHINX_BACKLOG = 4096  # frames read ahead of a sphinx stream's decoding (~150 s of 36 ms frames)
OUTBOX_LIMIT = 1000  # messages waiting for their due time or for a slow reader; beyond -> close 1008


def iso_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Stream:
    """I/O state of one accepted stream."""

    __slots__ = ("ws", "session", "record", "outbox", "wake", "executor", "sent_close", "sender_idle", "finished")

    def __init__(self, ws: ServerConnection, session: Session, record: ConnectionRecord,
                 executor: ThreadPoolExecutor | None) -> None:
        self.ws = ws
        self.session = session
        self.record = record
        self.outbox: deque[Send | Close] = deque()
        self.wake = asyncio.Event()
        self.executor = executor
        self.sent_close: Close | None = None
        self.sender_idle = False  # the sender task waits on ``wake`` with an empty outbox
        self.finished = False  # close accounted for

    def sync_record(self) -> None:
        s, r = self.session, self.record
        r.audio_bytes, r.audio_seconds, r.keepalives = s.audio_bytes, s.audio_seconds, s.keepalives
        r.finalizes, r.close_stream, r.schema_errors = s.finalizes, s.close_stream_seen, s.schema_errors
        if s.watermark is not None:
            r.watermark = s.watermark.report()
        if s.robust_mark is not None:
            r.robust_mark = s.robust_mark.report(final=self.finished)  # live: no extra decoding per /stats



class StreamRunner:
    """Runs the accepted streams of one emulator: ``handle`` is websockets' connection handler."""

    def __init__(self, config: EmulatorConfig, accounting: Accounting, delay_s: Callable[[], float],
                 take: Callable[[ServerConnection], Accepted | None]) -> None:
        self.config = config
        self.accounting = accounting
        self._delay_s = delay_s
        self._take = take
        self.streams: dict[int, Stream] = {}
        self.quiet = asyncio.Event()  # set whenever the last open stream has been accounted for
        self._loop: asyncio.AbstractEventLoop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _new_session(self, accepted: Accepted, connection_id: int) -> tuple[Session, VoiceTap | None]:
        cfg = self.config
        seed = cfg.seed or 0
        params = accepted.params
        if cfg.engine == "sphinx":
            factory = RemoteSphinxTranscriber  # decoded in a worker process: it must not hold this loop's GIL
            # An HMM decoder needs whole words: endpoints shorter than 300 ms would cut them apart.
            if params.endpointing_ms is not None and params.endpointing_ms < 300:
                params = dataclasses.replace(params, endpointing_ms=300)
        else:
            mark = connection_id if cfg.text_mark else None

            def factory(rate: int) -> PlaceholderTranscriber:
                # Confidences vary per stream (seeded by the connection id) yet repeat run after run.
                return PlaceholderTranscriber(rate, seed, mark=mark, confidence_seed=seed * 1000003 + connection_id,
                                              boosted=params.boosted, suppressed=params.suppressed,
                                              fillers=params.text.filler_words)
        # Sphinx: longer forced-final windows, so continuous speech is rarely cut inside a word.
        options = {"max_window_ms": 15000} if cfg.engine == "sphinx" else None
        tap = None
        if cfg.engine == "sphinx" and params.vad_events:
            # SpeechStarted from the audio as it arrives, not after the decode of earlier speech.
            tap = VoiceTap(params, self._delay_s, options)
            params = dataclasses.replace(params, vad_events=False)
        session = Session(params, request_id=accepted.request_id, created=iso_now(), now=self._loop.time(),
                          idle_timeout_s=cfg.idle_timeout_s, delay_s=self._delay_s, transcriber_factory=factory,
                          segmenter_options=options)
        return session, tap

    async def handle(self, ws: ServerConnection) -> None:
        accepted = self._take(ws)
        if accepted is None:  # cannot happen: every 101 went through HandshakePolicy.check
            await ws.close(CloseCode.INTERNAL_ERROR, "no handshake state")
            return
        cfg = self.config
        loop = self._loop
        record = self.accounting.open(accepted.request_id, accepted.params.interaction_id, time.time())
        session, tap = self._new_session(accepted, record.id)
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"sphinx-{record.id}") if cfg.engine == "sphinx" else None
        stream = Stream(ws, session, record, executor)
        self.streams[record.id] = stream
        log_event("open", connection=record.id, interaction=record.interaction, request_id=record.request_id,
                  duplicate=record.duplicate)
        helpers = [asyncio.create_task(self._sender(stream)), asyncio.create_task(self._idle_watchdog(stream))]
        if cfg.drop_after_s is not None:
            helpers.append(asyncio.create_task(self._fault_later(stream, cfg.drop_after_s, "drop")))
        if cfg.close_1011_after_s is not None:
            helpers.append(asyncio.create_task(self._fault_later(stream, cfg.close_1011_after_s, "1011")))
        try:
            if isinstance(ws, InlineConnection):
                ws.attach(*self._inline_inputs(stream), lambda: self._finish(stream))
                await ws.wait_closed()
            else:
                # Reading and processing are apart: a frame is noted (idle timer, SpeechStarted) when it
                # arrives, and processed in order in the stream's thread, where it may wait behind a decode.
                # Keep reading until the connection is closed, even after the session started closing:
                # reading is what lets the client's close frame in.
                backlog: asyncio.Queue = asyncio.Queue(SPHINX_BACKLOG)
                helpers.append(asyncio.create_task(self._process(stream, backlog)))
                async for message in ws:
                    if session.closing is not None:
                        continue
                    now = loop.time()
                    session.note_arrival(message, now)
                    if tap is not None and not isinstance(message, str):
                        sends = tap.receive_audio(message, now)
                        if sends:
                            self._push(stream, sends)
                    await backlog.put((message, now))  # full: the socket is read no faster than decoded
        except ConnectionClosed:
            pass
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            self._finish(stream)

    async def _process(self, stream: Stream, backlog: asyncio.Queue) -> None:
        session = stream.session
        while True:
            message, arrived = await backlog.get()
            if session.closing is not None:
                continue
            fn = session.receive_text if isinstance(message, str) else session.receive_audio
            await self._call(stream, fn, message, arrived)

    def _finish(self, stream: Stream) -> None:
        """Account for the close (once): from ``connection_lost`` for inline streams, else at handler exit."""
        if stream.finished:
            return
        stream.finished = True
        ws = stream.ws
        self.streams.pop(stream.record.id, None)
        stream.sync_record()
        protocol = ws.protocol
        if stream.sent_close is not None:
            code, reason = stream.sent_close.code, stream.sent_close.reason
        elif protocol.close_sent is not None and not protocol.close_rcvd_then_sent:
            # websockets closed it (protocol error, bad UTF-8, message too big, shutdown): book the code sent,
            # not 1006 (a failing server does not read the client's reply).
            code, reason = protocol.close_sent.code, protocol.close_sent.reason
        else:
            code = ws.close_code if ws.close_code is not None else int(CloseCode.ABNORMAL)
            reason = ws.close_reason or ("dropped (fault injection)" if code == CloseCode.ABNORMAL else "")
        self.accounting.close(stream.record, code, reason, time.time())
        if not self.streams:
            self.quiet.set()
        r = stream.record
        log_event("close", connection=r.id, interaction=r.interaction, request_id=r.request_id, code=code,
                  reason=reason, audio_seconds=round(r.audio_seconds, 3), results=r.results_sent)

    def _inline_inputs(self, stream: Stream):
        """The per-message callbacks of an inline stream (the hot path: keep them lean)."""
        session, time_now, push = stream.session, self._loop.time, self._push
        receive_audio, receive_text = session.receive_audio, session.receive_text

        def on_audio(data: bytes) -> None:
            if session.closing is not None:
                return  # closing: later frames are read (so the close frame gets in) but ignored
            try:
                receive_audio(data, time_now())
            except Exception:  # noqa: BLE001 - an emulator bug ends this stream only, visibly
                self._session_failed(stream)
                return
            if session.has_output:
                push(stream, session.data_to_send())

        def on_text(text: str) -> None:
            if session.closing is not None:
                return
            try:
                receive_text(text, time_now())
            except Exception:  # noqa: BLE001
                self._session_failed(stream)
                return
            if session.has_output:
                push(stream, session.data_to_send())

        return on_audio, on_text

    def _session_failed(self, stream: Stream) -> None:
        log.exception("emulator session error (connection %s)", stream.record.id)
        if stream.session.closing is None:
            stream.session.closing = Close(self._loop.time(), int(CloseCode.INTERNAL_ERROR),
                                           "rtaa emulator internal error (see its log)")
            self._push(stream, [stream.session.closing])

    async def _call(self, stream: Stream, fn, *args) -> None:
        """Run a session input (in the stream's thread for sphinx: decoding must not block the loop)."""
        try:
            if stream.executor is None:
                fn(*args)
            else:
                await self._loop.run_in_executor(stream.executor, fn, *args)
        except Exception:  # noqa: BLE001 - an emulator bug ends this stream only, visibly
            self._session_failed(stream)
            return
        out = stream.session.data_to_send()
        if out:
            self._push(stream, out)

    def _push(self, stream: Stream, items: list[Send | Close]) -> None:
        outbox = stream.outbox
        if stream.sender_idle and not outbox and isinstance(stream.ws, InlineConnection):
            # Nothing queued ahead: write what is due now directly (no task wake-up per result).
            now = self._loop.time()
            record, write = stream.record, stream.ws.write_text_now
            for index, item in enumerate(items):
                if item.due > now or type(item) is not Send or not write(item.data):
                    items = items[index:]
                    break
                record.messages_sent += 1
                if item.kind == "Results":
                    record.results_sent += 1
            else:
                return
        outbox.extend(items)
        if len(outbox) > OUTBOX_LIMIT:
            # The client is not reading. Drop what is queued and close: unbounded memory is worse.
            outbox.clear()
            reason = "client is not reading results (emulator outbox full)"
            stream.session.closing = Close(self._loop.time(), int(CloseCode.POLICY_VIOLATION), reason)
            outbox.append(stream.session.closing)
        stream.wake.set()

    async def _sender(self, stream: Stream) -> None:
        loop, ws, record = self._loop, stream.ws, stream.record
        try:
            while True:
                while not stream.outbox:
                    stream.wake.clear()
                    stream.sender_idle = True
                    try:
                        await stream.wake.wait()
                    finally:
                        stream.sender_idle = False
                item = stream.outbox.popleft()
                delay = item.due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if isinstance(item, Close):
                    stream.sent_close = item
                    await ws.close(item.code, item.reason)
                    return
                await ws.send(item.data, text=True)
                if stream.finished:  # the connection was lost while the write waited: not delivered
                    return
                record.messages_sent += 1
                if item.kind == "Results":
                    record.results_sent += 1
        except ConnectionClosed:
            return

    async def _idle_watchdog(self, stream: Stream) -> None:
        session = stream.session
        while session.closing is None:
            delay = session.idle_deadline - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._call(stream, session.check_idle, self._loop.time())

    async def _fault_later(self, stream: Stream, after_s: float, kind: str) -> None:
        await asyncio.sleep(after_s)
        if stream.session.closing is not None:
            return
        if kind == "drop":
            transport = stream.ws.transport
            if transport is not None:
                transport.abort()  # TCP reset, no close frame: the client sees 1006
        else:
            await self._call(stream, stream.session.fail, int(CloseCode.INTERNAL_ERROR), INTERNAL_FAULT,
                             self._loop.time())
