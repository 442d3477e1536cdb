"""The one verdict rule of ``rtaa soak`` and ``rtaa smoke`` (docs/soak.md "Verdicts from evidence").

A threshold row passes only on a measured value. Its ``status`` is one of:

- ``pass`` / ``fail``: measured, and within / beyond its limit;
- ``not measured``: in effect but this run had no evidence for it; ``reason`` says what was missing
  and how to get it. It never counts as a pass: the run is INVALID (exit 2) unless something
  measured already failed (then FAIL, exit 1: a breach is a breach);
- ``off``: turned off by the user (``-t NAME=off``); shown, never counted either way.

Run-level problems that make every figure doubtful (the load generator lagged, the run was
interrupted) make the run INVALID whatever the rows say.
"""
from __future__ import annotations

from typing import Any

PASS, FAIL, NOT_MEASURED, OFF = "pass", "fail", "not measured", "off"
EXIT_CODES = {"pass": 0, "fail": 1, "invalid": 2}


OPS = {"max": "<=", "min": ">=", "eq": "=="}  # a row's comparison when it names none


def row(name: str, value: Any, limit: Any, kind: str, passed: bool | None, *, reason: str = "",
        detail: str = "", off: bool = False, op: str | None = None) -> dict[str, Any]:
    """One threshold row. ``passed`` None means not measured (``reason`` should say why)."""
    status = OFF if off else (NOT_MEASURED if passed is None else (PASS if passed else FAIL))
    out = {"name": name, "limit": limit, "kind": kind, "op": op or OPS.get(kind, ""), "value": value,
           "passed": None if off else passed, "status": status}
    if reason and status in (NOT_MEASURED, OFF):
        out["reason"] = reason
    if detail:
        out["detail"] = detail
    return out


def format_value(v: Any) -> str:
    """A measured figure as every report prints it: "n/a" when not measured, floats to 4 significant digits."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def status_of(r: dict[str, Any]) -> str:
    """A row's status (rows written before ``status`` existed carry only ``passed``)."""
    if "status" in r:
        return str(r["status"])
    return NOT_MEASURED if r.get("passed") is None else (PASS if r["passed"] else FAIL)


def unmeasured_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``name: not measured: reason`` for every row in effect that had no evidence."""
    return [f"{r['name']}: not measured: {r.get('reason') or 'no value in this run'}"
            for r in rows if status_of(r) == NOT_MEASURED]


def judge(rows: list[dict[str, Any]], run_invalid: list[str]) -> tuple[str, list[str]]:
    """(verdict, invalid reasons). See the module docstring for the rule."""
    if run_invalid:
        return "invalid", list(run_invalid) + unmeasured_lines(rows)
    if any(status_of(r) == FAIL for r in rows):
        return "fail", []
    missing = unmeasured_lines(rows)
    if missing:
        return "invalid", missing
    if not any(status_of(r) == PASS for r in rows):
        return "invalid", ["every threshold is off: nothing was judged"]
    return "pass", []
