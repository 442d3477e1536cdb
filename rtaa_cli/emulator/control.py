"""The emulator's plain HTTP routes on its WebSocket port: ``/stats``, ``/stats/reset``, ``/metrics``,
``/control/faults``, ``/`` and ``/health`` (``/v1/listen`` is the handshake's, handshake.py).

Request bodies: websockets' HTTP parser refuses any request body, so ``POST /control/faults`` takes its
changes as query parameters (``?result_latency_ms=200&drop_after_s=none``) and answers JSON.
"""
from __future__ import annotations

import logging
from typing import Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.datastructures import Headers
from websockets.http11 import Response

from rtaa_cli.emulator.config import parse_fault_query
from rtaa_cli.emulator.handshake import json_response

log = logging.getLogger("rtaa.emulator")


class Controlled(Protocol):
    """What the routes read and change (the Emulator)."""

    url: str
    registry: CollectorRegistry

    def stats(self) -> dict: ...

    def reset_stats(self) -> None: ...

    def faults(self) -> dict: ...

    def set_faults(self, **changes: object) -> None: ...

    def open_streams(self) -> int: ...


def log_event(event: str, **fields_: object) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(orjson.dumps({"event": event, **fields_}).decode())


def route(emu: Controlled, method: str, path: str, query: str, raw_path: str) -> Response:
    if path == "/stats" and method == "GET":
        return json_response(200, emu.stats())
    if path == "/stats/reset" and method == "POST":
        emu.reset_stats()
        return json_response(200, {"ok": True})
    if path == "/metrics" and method == "GET":
        body = generate_latest(emu.registry)
        return Response(200, "OK", Headers({"Content-Type": CONTENT_TYPE_LATEST,
                                           "Content-Length": str(len(body))}), body)
    if path == "/control/faults" and method in ("GET", "POST"):
        if method == "POST":
            try:
                emu.set_faults(**parse_fault_query(query))
            except (ValueError, TypeError) as exc:
                return json_response(400, {"error": str(exc)})
            log_event("faults", **emu.faults())
        return json_response(200, emu.faults())
    if path in ("/", "/health") and method == "GET":
        return json_response(200, {"ok": True, "listen": f"{emu.url}/v1/listen", "open_streams": emu.open_streams()})
    return json_response(404, {"error": f"no route for {method} {raw_path}"})
