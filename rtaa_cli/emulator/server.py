"""I/O shell: the websockets 17 asyncio server of the emulator (one port for WebSocket and HTTP).

``process_request`` answers the plain HTTP paths (``/stats``, ``/metrics``, ``/control/faults``...) and
refuses bad handshakes (400/401/429 with Deepgram's body and headers). Each accepted stream gets a
:class:`~rtaa_cli.emulator.session.Session` (the sans-I/O core), a sender task that releases messages at
their due time, and an idle watchdog task.

Hot path (segmenter engine, hundreds of streams per core): each message goes from websockets' parser
straight into the session inside ``data_received`` (:class:`~rtaa_cli.emulator.connection.InlineConnection`,
no task switch per frame), and a message that is due now is written at once when nothing is queued ahead
of it and the socket takes it; only delayed messages, closes and back-pressured writes go through the
sender task. The sphinx engine decodes in a thread per stream and reads with ``async for``.

Request bodies: websockets' HTTP parser refuses any request body, so ``POST /control/faults`` takes its
changes as query parameters (``?result_latency_ms=200&drop_after_s=none``) and answers JSON.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import http
import logging
import math
import random
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rtaa_cli.closecodes import Close as CloseCode
from rtaa_cli.emulator.accounting import Accounting, ConnectionRecord, make_registry
from rtaa_cli.emulator.connection import InlineConnection
from rtaa_cli.emulator.messages import INTERNAL_FAULT
from rtaa_cli.emulator.params import HandshakeRejected, StreamParams, engine_refusal, parse_listen_params
from rtaa_cli.emulator.session import Close, Send, Session, VoiceTap
from rtaa_cli.emulator.transcribers import PlaceholderTranscriber, SphinxTranscriber

log = logging.getLogger("rtaa.emulator")

ENGINES = ("segmenter", "sphinx")
SPHINX_BACKLOG = 4096  # frames read ahead of a sphinx stream's decoding (~150 s of 36 ms frames)
FAULT_FIELDS = ("handshake_delay_ms", "result_latency_ms", "result_jitter_ms", "drop_after_s",
                "close_1011_after_s", "refuse_429_fraction")
OUTBOX_LIMIT = 1000  # messages waiting for their due time or for a slow reader; beyond -> close 1008
EXPOSE = "dg-model-name,dg-model-uuid,dg-char-count,dg-request-id,dg-error"


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None  # None = accept any key (a missing Authorization is still 401)
    max_concurrent: int | None = None  # handshakes beyond -> HTTP 429
    idle_timeout_s: float = 10.0  # no audio/KeepAlive -> Metadata then close 1011 NET-0001
    engine: str = "segmenter"  # or "sphinx"
    handshake_delay_ms: tuple[float, float] = (0.0, 0.0)  # uniform range
    result_latency_ms: float = 0.0
    result_jitter_ms: float = 0.0
    drop_after_s: float | None = None  # TCP drop (no close frame) this long after open
    close_1011_after_s: float | None = None  # close 1011 this long after open
    refuse_429_fraction: float = 0.0
    seed: int | None = None
    max_closed_records: int = 10000  # closed connection records kept for /stats (the rest are counted)
    max_interactions: int = 10000  # idle interactions kept for /stats
    # segmenter engine: each result with text starts with mark words naming its connection and audio end
    # (rtaa_cli/textmark.py), so rtaa can match text on any feed, in any schema, to the result
    text_mark: bool = True


# Upper bounds of the faults: a client times out its handshake long before a minute, and a timer past a
# day is a typo. Non-finite values are refused (``inf`` would hang every handshake, ``nan`` compares false).
MAX_FAULT_MS = 60_000.0
MAX_FAULT_S = 86_400.0


def _fault_number(name: str, raw: object, hi: float) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or not 0 <= value <= hi:
        raise ValueError(f"{name} must be a finite number in 0..{hi:g}, not {raw!r}")
    return value


def validate_faults(changes: dict) -> dict:
    """Check fault changes (from Python, the CLI or the control endpoint); returns them normalised."""
    out: dict = {}
    for name, value in changes.items():
        if name not in FAULT_FIELDS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_FIELDS)}")
        if name == "handshake_delay_ms":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"handshake_delay_ms must be a range lo,hi in ms, not {value!r}")
            lo, hi = (_fault_number(name, v, MAX_FAULT_MS) for v in value)
            if lo > hi:
                raise ValueError("handshake_delay_ms must be a range lo,hi with 0 <= lo <= hi")
            value = (lo, hi)
        elif name in ("drop_after_s", "close_1011_after_s"):
            if value is not None:
                value = _fault_number(name, value, MAX_FAULT_S)
        elif name == "refuse_429_fraction":
            value = _fault_number(name, value, 1.0)
        else:
            value = _fault_number(name, value, MAX_FAULT_MS)
        out[name] = value
    return out


def _parse_fault_query(query: str) -> dict:
    changes: dict = {}
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if raw.lower() in ("", "none", "null"):
            changes[name] = None
        elif name == "handshake_delay_ms":
            parts = raw.split(",")
            changes[name] = (parts[0], parts[-1])
        else:
            changes[name] = raw
    return changes


@dataclass(slots=True)
class _Accepted:
    params: StreamParams
    request_id: str


class _Stream:
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


def _json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    payload = orjson.dumps(body)
    h = Headers({"Content-Type": "application/json", "Content-Length": str(len(payload))})
    for k, v in (headers or {}).items():
        h[k] = v
    status_obj = http.HTTPStatus(status)
    return Response(status_obj.value, status_obj.phrase, h, payload)


def header_safe(text: str, limit: int = 256) -> str:
    """``text`` as a header value: printable ASCII only (the message echoes the client's parameter values,
    which may hold CR/LF or non-Latin-1 characters that no header can carry), others as ``\\uXXXX``
    escapes, cut at ``limit``. The JSON body keeps the exact text."""
    safe = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)
    return safe if len(safe) <= limit else safe[:limit - 3] + "..."


def _iso_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log(event: str, **fields_: object) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(orjson.dumps({"event": event, **fields_}).decode())


class Emulator:
    """The Deepgram live emulator on the running asyncio loop (``async with Emulator(cfg) as emu``)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        cfg = EmulatorConfig(**asdict(config)) if config is not None else EmulatorConfig()
        if cfg.engine not in ENGINES:
            raise ValueError(f"unknown engine {cfg.engine!r}; use one of {', '.join(ENGINES)}")
        validate_faults({k: getattr(cfg, k) for k in FAULT_FIELDS})
        self.config = cfg
        self._rng = random.Random(cfg.seed)
        self.accounting = Accounting(max_closed=cfg.max_closed_records, max_interactions=cfg.max_interactions)
        self.registry = make_registry(self._synced_accounting)
        self._pending: dict[ServerConnection, _Accepted] = {}
        self._streams: dict[int, _Stream] = {}
        self._server: Server | None = None
        self._quiet = asyncio.Event()  # set whenever the last open stream has been accounted for
        self.url = ""
        self.http_url = ""
        self.port = 0

    # ------------------------------------------------------------------------------------ public API

    async def __aenter__(self) -> Emulator:
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._handler, self.config.host, self.config.port,
            # Segmenter: messages go straight into the session (see connection.py). Sphinx decodes in a
            # thread per stream and reads with ``async for``.
            create_connection=ServerConnection if self.config.engine == "sphinx" else InlineConnection,
            process_request=self._process_request, process_response=self._process_response,
            select_subprotocol=self._select_subprotocol,
            compression=None,  # Assumption [??]: Deepgram's deflate support is unknown; off saves CPU
            close_timeout=5, max_size=1 << 20, server_header="rtaa-fake-deepgram",
        )
        sockname = self._server.sockets[0].getsockname()
        self.port = sockname[1]
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"ws://{host}:{self.port}"
        self.http_url = f"http://{host}:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=True)  # open streams get 1001
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=10)
        except TimeoutError:
            log.warning("emulator shutdown: connections still closing after 10 s")
        self._server = None

    def stats(self) -> dict:
        snap = self._synced_accounting().snapshot()
        snap["faults"] = self.faults()
        # whether results carry the text watermark (rtaa_cli/textmark.py): a soak judges feeds by it
        snap["text_mark"] = self.config.text_mark and self.config.engine == "segmenter"
        return snap

    def reset_stats(self) -> None:
        self.accounting.reset()

    def faults(self) -> dict:
        out = {name: getattr(self.config, name) for name in FAULT_FIELDS}
        out["handshake_delay_ms"] = list(out["handshake_delay_ms"])  # same shape as the JSON
        return out

    async def wait_quiet(self) -> None:
        """Wait until no stream is open (every close is accounted for). Callers bound it themselves."""
        while self._streams:
            self._quiet.clear()
            await self._quiet.wait()

    def set_faults(self, **changes: object) -> None:
        """Change faults at runtime. Latency/jitter apply to results scheduled from now on; drop/close
        timers apply to streams opened from now on; handshake faults to the next handshakes."""
        for name, value in validate_faults(changes).items():
            setattr(self.config, name, value)

    # ------------------------------------------------------------------------------------- internals

    def _synced_accounting(self) -> Accounting:
        for stream in self._streams.values():
            stream.sync_record()
        return self.accounting

    @staticmethod
    def _select_subprotocol(conn: ServerConnection, offered) -> str | None:
        # Browser auth form: "Sec-WebSocket-Protocol: token, KEY" -> the server selects "token".
        for name in ("token", "bearer"):
            if name in offered:
                return name
        return None

    def _delay_s(self) -> float:
        cfg = self.config
        jitter = self._rng.uniform(0.0, cfg.result_jitter_ms) if cfg.result_jitter_ms > 0 else 0.0
        return (cfg.result_latency_ms + jitter) / 1000.0

    def _presented_key(self, request: Request) -> str | None:
        auth = request.headers.get("Authorization")
        if auth:
            scheme, _, credential = auth.strip().partition(" ")
            if scheme.lower() in ("token", "bearer") and credential.strip():
                return credential.strip()
            return None
        offered = [p.strip() for p in ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")]
        if len(offered) >= 2 and offered[0].lower() in ("token", "bearer") and offered[1]:
            return offered[1]
        return None

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path.rstrip("/") or "/"
        method = request.method
        if path == "/v1/listen":
            if method != "GET":
                return _json_response(405, {"err_code": "Method Not Allowed", "err_msg": "use GET"})
            return await self._listen_handshake(conn, request, url.query)
        if path == "/stats" and method == "GET":
            return _json_response(200, self.stats())
        if path == "/stats/reset" and method == "POST":
            self.reset_stats()
            return _json_response(200, {"ok": True})
        if path == "/metrics" and method == "GET":
            body = generate_latest(self.registry)
            return Response(200, "OK", Headers({"Content-Type": CONTENT_TYPE_LATEST,
                                               "Content-Length": str(len(body))}), body)
        if path == "/control/faults" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    self.set_faults(**_parse_fault_query(url.query))
                except (ValueError, TypeError) as exc:
                    return _json_response(400, {"error": str(exc)})
                _log("faults", **self.faults())
            return _json_response(200, self.faults())
        if path in ("/", "/health") and method == "GET":
            return _json_response(200, {"ok": True, "listen": f"{self.url}/v1/listen",
                                        "open_streams": len(self._streams)})
        return _json_response(404, {"error": f"no route for {method} {url.path}"})

    def _reject(self, request_id: str, status: int, err_code: str, err_msg: str) -> Response:
        self.accounting.rejected(status, time.time())
        return _json_response(status, {"err_code": err_code, "err_msg": err_msg, "request_id": request_id},
                              {"dg-error": header_safe(err_msg), "dg-request-id": request_id,
                               "access-control-expose-headers": EXPOSE})

    async def _listen_handshake(self, conn: ServerConnection, request: Request, query: str) -> Response | None:
        cfg = self.config
        request_id = str(uuid.uuid4())
        lo, hi = cfg.handshake_delay_ms
        if hi > 0:
            # The fault is a slow server: the client waits this long for its 101 (or its error).
            await asyncio.sleep(self._rng.uniform(lo, hi) / 1000.0)
        key = self._presented_key(request)
        if key is None or (cfg.api_key is not None and key != cfg.api_key):
            return self._reject(request_id, 401, "INVALID_AUTH", "Invalid credentials.")
        try:
            params = parse_listen_params(parse_qsl(query, keep_blank_values=True))
        except HandshakeRejected as exc:
            return self._reject(request_id, exc.status, exc.err_code, exc.err_msg)
        refused = engine_refusal(params, cfg.engine)
        if refused is not None:
            return self._reject(request_id, refused.status, refused.err_code, refused.err_msg)
        if cfg.refuse_429_fraction > 0 and self._rng.random() < cfg.refuse_429_fraction:
            return self._reject(request_id, 429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later.")
        if cfg.max_concurrent is not None:
            # Accepted handshakes whose handler has not registered yet count too. websockets 17 starts the
            # handler in the same task step as the 101, so this is defensive (it keeps the limit exact if
            # an await ever appears in between); a reservation whose connection died is ignored.
            in_flight = sum(1 for c in self._pending if c.state.name != "CLOSED")
            if len(self._streams) + in_flight >= cfg.max_concurrent:
                return self._reject(request_id, 429, "TOO_MANY_REQUESTS",
                                    "Too many requests. Please try again later.")
        for stale in [c for c in self._pending if c.state.name == "CLOSED"]:
            del self._pending[stale]  # handshakes that died between here and the handler
        self._pending[conn] = _Accepted(params, request_id)
        return None

    def _process_response(self, conn: ServerConnection, request: Request, response: Response) -> None:
        accepted = self._pending.get(conn)
        if accepted is None:
            return None
        if response.status_code != 101:  # websockets refused the upgrade itself (e.g. plain GET)
            del self._pending[conn]
            response.headers["dg-request-id"] = accepted.request_id
            return None
        response.headers["dg-request-id"] = accepted.request_id
        response.headers["access-control-expose-headers"] = EXPOSE
        return None

    def _new_session(self, accepted: _Accepted, connection_id: int) -> tuple[Session, VoiceTap | None]:
        cfg = self.config
        seed = cfg.seed or 0
        params = accepted.params
        if cfg.engine == "sphinx":
            factory = SphinxTranscriber
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
        session = Session(params, request_id=accepted.request_id, created=_iso_now(), now=self._loop.time(),
                          idle_timeout_s=cfg.idle_timeout_s, delay_s=self._delay_s, transcriber_factory=factory,
                          segmenter_options=options)
        return session, tap

    async def _handler(self, ws: ServerConnection) -> None:
        accepted = self._pending.pop(ws, None)
        if accepted is None:  # cannot happen: every 101 went through _listen_handshake
            await ws.close(CloseCode.INTERNAL_ERROR, "no handshake state")
            return
        cfg = self.config
        loop = self._loop
        record = self.accounting.open(accepted.request_id, accepted.params.interaction_id, time.time())
        session, tap = self._new_session(accepted, record.id)
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"sphinx-{record.id}") if cfg.engine == "sphinx" else None
        stream = _Stream(ws, session, record, executor)
        self._streams[record.id] = stream
        _log("open", connection=record.id, interaction=record.interaction, request_id=record.request_id,
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

    async def _process(self, stream: _Stream, backlog: asyncio.Queue) -> None:
        session = stream.session
        while True:
            message, arrived = await backlog.get()
            if session.closing is not None:
                continue
            fn = session.receive_text if isinstance(message, str) else session.receive_audio
            await self._call(stream, fn, message, arrived)

    def _finish(self, stream: _Stream) -> None:
        """Account for the close (once): from ``connection_lost`` for inline streams, else at handler exit."""
        if stream.finished:
            return
        stream.finished = True
        ws = stream.ws
        self._streams.pop(stream.record.id, None)
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
        if not self._streams:
            self._quiet.set()
        r = stream.record
        _log("close", connection=r.id, interaction=r.interaction, request_id=r.request_id, code=code,
             reason=reason, audio_seconds=round(r.audio_seconds, 3), results=r.results_sent)

    def _inline_inputs(self, stream: _Stream):
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

    def _session_failed(self, stream: _Stream) -> None:
        log.exception("emulator session error (connection %s)", stream.record.id)
        if stream.session.closing is None:
            stream.session.closing = Close(self._loop.time(), int(CloseCode.INTERNAL_ERROR),
                                           "rtaa emulator internal error (see its log)")
            self._push(stream, [stream.session.closing])

    async def _call(self, stream: _Stream, fn, *args) -> None:
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

    def _push(self, stream: _Stream, items: list[Send | Close]) -> None:
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

    async def _sender(self, stream: _Stream) -> None:
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

    async def _idle_watchdog(self, stream: _Stream) -> None:
        session = stream.session
        while session.closing is None:
            delay = session.idle_deadline - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._call(stream, session.check_idle, self._loop.time())

    async def _fault_later(self, stream: _Stream, after_s: float, kind: str) -> None:
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
