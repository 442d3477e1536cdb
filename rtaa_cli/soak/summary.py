"""The end-of-run summary table (rich), shared by ``rtaa soak`` and ``rtaa smoke``."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rtaa_cli.verdict import FAIL, NOT_MEASURED, OFF, OPS, PASS, status_of

_STYLE = {"pass": "bold green", "fail": "bold red", "invalid": "bold yellow"}


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_summary(doc: dict[str, Any], what: str, console: Console | None = None) -> None:
    console = console or Console()
    verdict = str(doc.get("verdict"))
    name = (doc.get("scenario") or {}).get("name", "")
    t = Table(title=f"rtaa {what} {name}".strip() + f": [{_STYLE.get(verdict, '')}]{verdict.upper()}[/]",
              show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    calls = doc.get("calls") or {}
    if calls:
        t.add_row("calls started / completed / failed",
                  f"{_f(calls.get('started'))} / {_f(calls.get('completed'))} / {_f(calls.get('failed'))}")
    t.add_row("duplicate provider connections", _f(doc.get("duplicates")))
    c = doc.get("closes_1011") or {}
    t.add_row("1011 closes provider / caller (rate/call)",
              f"{_f(c.get('provider'))} / {_f(c.get('caller'))} ({_f(c.get('rate'), 3)})")
    for kind in ("first_partial", "final"):
        s = (doc.get("latency_ms") or {}).get(kind) or {}
        t.add_row(f"{kind.replace('_', ' ')} latency p50/p95/p99/max ms",
                  " / ".join(_f(s.get(k), 0) for k in ("p50", "p95", "p99", "max")))
    t.add_row("delivery rate", _f(doc.get("delivery_rate"), 3))
    audio = doc.get("audio") or {}
    if audio:
        t.add_row("audio loss (provider bytes vs sent)", _f(audio.get("loss"), 4))
        if audio.get("watermark_measured_calls") or audio.get("replayed_bytes"):
            t.add_row("reconnected calls by watermark; audio replayed bytes",
                      f"{audio['watermark_measured_calls']}; {audio['replayed_bytes']}")
    prov = doc.get("provider") or {}
    if "unattributed_connections" in prov:
        t.add_row("provider: calls reached / with audio; unattributed conns",
                  f"{prov['calls_reached']} / {prov['calls_with_audio']}; {prov['unattributed_connections']}")
        t.add_row("provider: connections attributed by tag / by watermark / by robust mark",
                  f"{prov.get('attributed_by_tag', 0)} / {prov.get('attributed_by_watermark', 0)}"
                  f" / {prov.get('attributed_by_robust_mark', 0)}")
        t.add_row("provider: open at end / opened after end; reconnects; 429s",
                  f"{prov['open_at_end']} / {prov['opened_after_end']}; {prov['reconnects']}; {_f(prov['rejected_429'])}")
        causes = ", ".join(f"{k} {v}" for k, v in prov["closes_1011_by_cause"].items()) or "none"
        t.add_row("provider: KeepAlives (per conn); 1011 by cause",
                  f"{prov['keepalives']} ({prov['keepalives_per_connection']}); {causes}")
    mem = doc.get("target_memory")
    if mem:
        t.add_row("target RSS last / max MB (growth, 2nd half MB/h)",
                  f"{_f(mem['rss_mb']['last'])} / {_f(mem['rss_mb']['max'])} "
                  f"({_f(mem['growth_mb_per_h'], 1)}, {_f(mem.get('second_half_growth_mb_per_h'), 1)})")
    late = ((doc.get("pacing") or {}).get("lateness_ms")) or {}
    if late:
        t.add_row("pacing lateness p50/p99/max ms", " / ".join(_f(late.get(k), 2) for k in ("p50", "p99", "max")))
    console.print(t)
    th = Table(title="thresholds")
    for col in ("name", "limit", "value", "result"):
        th.add_column(col)
    for row in doc.get("thresholds", []):
        op = row.get("op") or OPS.get(row.get("kind", "max"), "")
        res = {PASS: "[green]pass[/]", FAIL: "[red]FAIL[/]", NOT_MEASURED: "[yellow]NOT MEASURED[/]",
               OFF: "[dim]off[/]"}[status_of(row)]
        lim = row["limit"]
        lim = f"{lim:g}" if isinstance(lim, (int, float)) else ("" if lim is None else str(lim))
        val = row["value"]
        val = f"{val:.4g}" if isinstance(val, float) else _f(val)
        if status_of(row) == FAIL and row.get("detail"):  # why, in the table (smoke: "HTTP 404 at handshake")
            res += f": {escape(str(row['detail'])[:100])}"
        th.add_row(row["name"], f"{op} {lim}", val, res)
    console.print(th)
    for row in doc.get("thresholds", []):  # unwrapped, whatever the terminal width (CI logs)
        if status_of(row) == FAIL and row.get("detail"):
            console.print(f"[red]{escape(row['name'])} FAIL:[/] {escape(str(row['detail']))}", soft_wrap=True)
    for reason in doc.get("invalid_reasons") or []:
        console.print(f"[yellow]invalid run:[/] {escape(reason)}", soft_wrap=True)
    early = (doc.get("run") or {}).get("stopped_early")
    if early:
        console.print(f"[red]{escape(early)}[/]", soft_wrap=True)
    failures = doc.get("failures") or {}
    for kind, n in sorted((failures.get("by_reason") or {}).items(), key=lambda kv: -kv[1])[:8]:
        example = (failures.get("examples") or {}).get(kind, "")
        console.print(f"[red]failed calls:[/] {n} x {escape(kind)} (e.g. {escape(example)})", soft_wrap=True)
    for err in doc.get("report_errors") or []:
        console.print(f"[red]report not written:[/] {escape(err)}", soft_wrap=True)
    for note in (doc.get("run") or {}).get("notes") or []:
        console.print(f"[dim]note: {note}[/]")
