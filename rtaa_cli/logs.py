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


class Sampled:
    """Bounded logging for events that can come once per message or frame (unknown events, audio after a
    call ended): per key, the first ``burst`` lines of each ``window_s`` are written, the rest are only
    counted and the next line written says how many were left out (``suppressed``). The metrics stay
    exact; this bounds only the log (a garbage flood once wrote 7.4 MB in 10 s).

    Keys are event kinds, not calls: per-call keys would let many connections multiply the bound."""

    __slots__ = ("_log", "burst", "window_s", "_clock", "_windows")

    def __init__(self, log: EventLog, burst: int = 5, window_s: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self._log, self.burst, self.window_s, self._clock = log, burst, window_s, clock
        self._windows: dict[str, list[float]] = {}  # key -> [window start, lines written, suppressed]

    def admit(self, key: str) -> int | None:
        """None: leave this line out. Otherwise the number of lines left out since the last one written."""
        now = self._clock()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.window_s:
            suppressed = int(w[2]) if w else 0
            self._windows[key] = [now, 1, 0]
            return suppressed
        if w[1] < self.burst:
            w[1] += 1
            suppressed, w[2] = int(w[2]), 0
            return suppressed
        w[2] += 1
        return None

    def warning(self, event: str, key: str | None = None, **fields: Any) -> None:
        suppressed = self.admit(key or event)
        if suppressed is not None:
            if suppressed:
                fields["suppressed"] = suppressed
            self._log.warning(event, **fields)


def get(name: str) -> EventLog:
    return EventLog(name)


def now() -> float:
    return time.time()
