"""Handshake policy of ``/v1/listen``: which upgrades get their 101, and Deepgram's 400/401/429 otherwise.

Order of checks (docs/emulator.md): handshake delay, auth, parameters (params.py, then what the engine
cannot do), 429 faults, ``max_concurrent``. An accepted handshake leaves its parameters and request id
here until the stream's handler takes them (:meth:`HandshakePolicy.take`).
"""
from __future__ import annotations

import asyncio
import http
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtaa_cli.emulator.accounting import Accounting
from rtaa_cli.emulator.config import EmulatorConfig
from rtaa_cli.emulator.params import HandshakeRejected, StreamParams, engine_refusal, parse_listen_params

EXPOSE = "dg-model-name,dg-model-uuid,dg-char-count,dg-request-id,dg-error"


@dataclass(slots=True)
class Accepted:
    params: StreamParams
    request_id: str


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
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


def select_subprotocol(conn: ServerConnection, offered) -> str | None:
    # Browser auth form: "Sec-WebSocket-Protocol: token, KEY" -> the server selects "token".
    for name in ("token", "bearer"):
        if name in offered:
            return name
    return None


def presented_key(request: Request) -> str | None:
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


class HandshakePolicy:
    def __init__(self, config: EmulatorConfig, rng: random.Random, accounting: Accounting,
                 open_streams: Callable[[], int]) -> None:
        self.config = config  # shared with the Emulator: faults changed at runtime apply to the next handshake
        self._rng = rng
        self._accounting = accounting
        self._open_streams = open_streams
        self._pending: dict[ServerConnection, Accepted] = {}

    def take(self, conn: ServerConnection) -> Accepted | None:
        return self._pending.pop(conn, None)

    def reject(self, request_id: str, status: int, err_code: str, err_msg: str) -> Response:
        self._accounting.rejected(status, time.time())
        return json_response(status, {"err_code": err_code, "err_msg": err_msg, "request_id": request_id},
                             {"dg-error": header_safe(err_msg), "dg-request-id": request_id,
                              "access-control-expose-headers": EXPOSE})

    async def check(self, conn: ServerConnection, request: Request, query: str) -> Response | None:
        """None: accept (websockets sends the 101); else the refusal to send."""
        cfg = self.config
        request_id = str(uuid.uuid4())
        lo, hi = cfg.handshake_delay_ms
        if hi > 0:
            # The fault is a slow server: the client waits this long for its 101 (or its error).
            await asyncio.sleep(self._rng.uniform(lo, hi) / 1000.0)
        key = presented_key(request)
        if key is None or (cfg.api_key is not None and key != cfg.api_key):
            return self.reject(request_id, 401, "INVALID_AUTH", "Invalid credentials.")
        try:
            params = parse_listen_params(parse_qsl(query, keep_blank_values=True))
        except HandshakeRejected as exc:
            return self.reject(request_id, exc.status, exc.err_code, exc.err_msg)
        refused = engine_refusal(params, cfg.engine)
        if refused is not None:
            return self.reject(request_id, refused.status, refused.err_code, refused.err_msg)
        if cfg.refuse_429_fraction > 0 and self._rng.random() < cfg.refuse_429_fraction:
            return self.reject(request_id, 429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later.")
        if cfg.max_concurrent is not None:
            # Accepted handshakes whose handler has not registered yet count too. websockets 17 starts the
            # handler in the same task step as the 101, so this is defensive (it keeps the limit exact if
            # an await ever appears in between); a reservation whose connection died is ignored.
            in_flight = sum(1 for c in self._pending if c.state.name != "CLOSED")
            if self._open_streams() + in_flight >= cfg.max_concurrent:
                return self.reject(request_id, 429, "TOO_MANY_REQUESTS",
                                   "Too many requests. Please try again later.")
        for stale in [c for c in self._pending if c.state.name == "CLOSED"]:
            del self._pending[stale]  # handshakes that died between here and the handler
        self._pending[conn] = Accepted(params, request_id)
        return None

    def process_response(self, conn: ServerConnection, request: Request, response: Response) -> None:
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
