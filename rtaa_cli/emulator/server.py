"""I/O shell: the websockets 17 asyncio server of the emulator (one port for WebSocket and HTTP).

The :class:`Emulator` wires three parts to one ``websockets.serve``: the handshake policy of
``/v1/listen`` (handshake.py: 400/401/429 with Deepgram's body and headers), the plain HTTP control routes
(control.py: ``/stats``, ``/metrics``, ``/control/faults``...) and the stream I/O of accepted connections
(streams.py: session, sender, idle watchdog, faults). Configuration and fault checks are in config.py.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import asdict
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from rtaa_cli.emulator.accounting import Accounting, make_registry
from rtaa_cli.emulator.config import ENGINES, FAULT_FIELDS, EmulatorConfig, validate_faults
from rtaa_cli.emulator.connection import InlineConnection
from rtaa_cli.emulator.control import route
from rtaa_cli.emulator.handshake import HandshakePolicy, header_safe, json_response, select_subprotocol
from rtaa_cli.emulator.streams import OUTBOX_LIMIT, SPHINX_BACKLOG, StreamRunner

log = logging.getLogger("rtaa.emulator")

# Kept importable from here: the CLI and older callers use these names from rtaa_cli.emulator.server.
__all__ = ["ENGINES", "FAULT_FIELDS", "OUTBOX_LIMIT", "SPHINX_BACKLOG", "Emulator", "EmulatorConfig",
           "header_safe", "validate_faults"]


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
        self._handshakes = HandshakePolicy(cfg, self._rng, self.accounting, self.open_streams)
        self._runner = StreamRunner(cfg, self.accounting, self._delay_s, self._handshakes.take)
        self._server: Server | None = None
        self.url = ""
        self.http_url = ""
        self.port = 0

    # ------------------------------------------------------------------------------------ public API

    async def __aenter__(self) -> Emulator:
        self._runner.start(asyncio.get_running_loop())
        self._server = await serve(
            self._runner.handle, self.config.host, self.config.port,
            # Segmenter: messages go straight into the session (see connection.py). Sphinx decodes in a
            # thread per stream and reads with ``async for``.
            create_connection=ServerConnection if self.config.engine == "sphinx" else InlineConnection,
            process_request=self._process_request, process_response=self._handshakes.process_response,
            select_subprotocol=select_subprotocol,
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

    def open_streams(self) -> int:
        return len(self._runner.streams)

    async def wait_quiet(self) -> None:
        """Wait until no stream is open (every close is accounted for). Callers bound it themselves."""
        runner = self._runner
        while runner.streams:
            runner.quiet.clear()
            await runner.quiet.wait()

    def set_faults(self, **changes: object) -> None:
        """Change faults at runtime. Latency/jitter apply to results scheduled from now on; drop/close
        timers apply to streams opened from now on; handshake faults to the next handshakes."""
        for name, value in validate_faults(changes).items():
            setattr(self.config, name, value)

    # ------------------------------------------------------------------------------------- internals

    def _synced_accounting(self) -> Accounting:
        for stream in self._runner.streams.values():
            stream.sync_record()
        return self.accounting

    def _delay_s(self) -> float:
        cfg = self.config
        jitter = self._rng.uniform(0.0, cfg.result_jitter_ms) if cfg.result_jitter_ms > 0 else 0.0
        return (cfg.result_latency_ms + jitter) / 1000.0

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path.rstrip("/") or "/"
        if path == "/v1/listen":
            if request.method != "GET":
                return json_response(405, {"err_code": "Method Not Allowed", "err_msg": "use GET"})
            return await self._handshakes.check(conn, request, url.query)
        return route(self, request.method, path, url.query, url.path)
