"""The emulator's configuration and its runtime faults (pure code: checked here, used by the I/O shell)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl

ENGINES = ("segmenter", "sphinx")
FAULT_FIELDS = ("handshake_delay_ms", "result_latency_ms", "result_jitter_ms", "drop_after_s",
                "close_1011_after_s", "refuse_429_fraction")


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


def parse_fault_query(query: str) -> dict:
    """``POST /control/faults?...`` query -> changes (``none`` clears a timer)."""
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
