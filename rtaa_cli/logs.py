"""Structured logs: one JSON object a line, always with an ``event`` name and, for call events,
the ``interaction_id``. Built on stdlib logging so libraries and handlers compose; orjson does the
encoding (it is on every bad frame's path, so it should be cheap)."""
from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": "info", "logger": "rtaa.ingest", "event": "...", **fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def setup(stream: IO[str] | None = None, level: str | int = "INFO") -> logging.Handler:
    """Send every ``rtaa.*`` logger's records, as JSON lines, to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("rtaa")
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = False
    return handler


class EventLog:
    """``log.info("call_started", interaction_id="CA1", stream_sid="S1")`` -> one JSON line.

    Thin wrapper so call sites pass fields as keywords instead of ``extra={...}``.
    """

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra=fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


def get(name: str) -> EventLog:
    return EventLog(name)


def now() -> float:
    return time.time()
