"""Soak/smoke reports: JSON (the summary document), JUnit XML (one testcase per threshold) and a
self-contained HTML page whose plots are inline SVG generated here (no scripts, no CDN).

Pure functions of the summary dict (plus a few histograms), so tests check them without a run.
"""
from __future__ import annotations

import html
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import orjson

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.scenario import planned_users
from rtaa_cli.soak.stats import Histogram
from rtaa_cli.verdict import FAIL, NOT_MEASURED, OFF, OPS, PASS, status_of

# ------------------------------------------------------------------------------------- helpers


def histogram_bins(h: Histogram, bins: int = 40) -> dict[str, list[float]]:
    """Equal-width bins over [min, p99.9-ish max] for plotting (the long tail folds into the last)."""
    if h.n == 0:
        return {"edges": [], "counts": []}
    lo = h.min or 0.0
    hi = h.percentile(99.9) or h.max or lo
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for bucket, n in h.counts.items():
        v = bucket * h.resolution_ms
        i = min(bins - 1, max(0, int((v - lo) / width)))
        counts[i] += n
    edges = [round(lo + i * width, 3) for i in range(bins + 1)]
    return {"edges": edges, "counts": counts}


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


# --------------------------------------------------------------------------------------- JUnit


def junit_xml(doc: dict[str, Any], suite_name: str) -> str:
    """One ``testcase`` per threshold (failure when breached; error when in effect but not measured;
    skipped when turned off), plus a ``run validity`` testcase that errors when the run was invalid."""
    rows = doc.get("thresholds", [])
    invalid = doc.get("invalid_reasons") or []
    cases = []
    failures = errors = skipped = 0
    for row in rows:
        case = ET.Element("testcase", classname=f"rtaa.{suite_name}", name=row["name"], time="0")
        op = row.get("op") or OPS.get(row.get("kind", "max"), "")
        status = status_of(row)
        props = ET.SubElement(case, "properties")  # value and limit on every case, passing ones too
        for key in ("value", "limit"):
            ET.SubElement(props, "property", name=key, value="" if row.get(key) is None else str(row[key]))
        ET.SubElement(case, "system-out").text = (f"{row['name']} = {_fmt(row.get('value'))} "
                                                  f"(limit {op} {_fmt(row.get('limit'))}): {status}")
        if status == FAIL:
            failures += 1
            f = ET.SubElement(case, "failure", message=f"{row['name']} = {row['value']} (limit {op} {row['limit']})")
            f.text = f"threshold breached: {row['name']} value {row['value']} limit {op} {row['limit']}"
            if row.get("detail"):
                f.text += f"\n{row['detail']}"
        elif status == NOT_MEASURED:
            errors += 1
            e = ET.SubElement(case, "error", message=f"{row['name']}: not measured")
            e.text = f"{row['name']}: not measured: {row.get('reason') or 'no value in this run'}"
        elif status == OFF:
            skipped += 1
            ET.SubElement(case, "skipped", message=f"{row['name']}: off ({row.get('reason') or 'turned off by the user'})")
        cases.append(case)
    validity = ET.Element("testcase", classname=f"rtaa.{suite_name}", name="run validity", time="0")
    if invalid:
        errors += 1
        e = ET.SubElement(validity, "error", message="invalid run: " + "; ".join(invalid))
        e.text = "\n".join(invalid)
    cases.append(validity)
    run = doc.get("run") or {}
    scenario = (doc.get("scenario") or {}).get("name")
    suite = ET.Element("testsuite", name=f"rtaa {suite_name}" + (f" {scenario}" if scenario else ""),
                       tests=str(len(cases)), failures=str(failures), errors=str(errors), skipped=str(skipped),
                       time=str(run.get("elapsed_s", 0)))
    if run.get("started"):
        suite.set("timestamp", str(run["started"]))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="verdict", value=str(doc.get("verdict")))
    suite.extend(cases)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------------------- SVG

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def svg_lines(title: str, xs: Sequence[float], series: Sequence[tuple[str, Sequence[float | None]]],
              x_label: str = "s", y_label: str = "", width: int = 720, height: int = 240,
              markers: Sequence[tuple[float, str]] = ()) -> str:
    """A line chart; ``None`` values break the line (no data in that bucket). ``markers``: (x, label)
    dashed vertical lines (the load stages' boundaries)."""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 28, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    values = [v for _, ys in series for v in ys if v is not None]
    x_max = max(xs) if xs else 1.0
    x_max = x_max if x_max > 0 else 1.0
    y_max = _nice_max(max(values) if values else 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for i in range(5):
        yv = y_max * i / 4
        y = pad_t + h - h * i / 4
        out.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{yv:g}</text>')
    for i in range(5):
        xv = x_max * i / 4
        x = pad_l + w * i / 4
        out.append(f'<text x="{x:.1f}" y="{pad_t + h + 14}" font-size="10" text-anchor="middle">{xv:.0f}</text>')
    out.append(f'<text x="{pad_l + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text x="12" y="{pad_t + h / 2}" font-size="10" transform="rotate(-90 12 {pad_t + h / 2})" '
               f'text-anchor="middle">{html.escape(y_label)}</text>')
    for mx, mlabel in markers:
        if 0 <= mx <= x_max:
            x = pad_l + w * mx / x_max
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t}" y2="{pad_t + h}" stroke="#888" '
                       f'stroke-dasharray="4 3"><title>{html.escape(mlabel)}</title></line>')
            out.append(f'<text x="{x + 2:.1f}" y="{pad_t + h - 4}" font-size="9" fill="#666">{html.escape(mlabel)}</text>')
    for si, (label, ys) in enumerate(series):
        color = _COLORS[si % len(_COLORS)]
        segs, cur = [], []
        for x, y in zip(xs, ys):
            if y is None:
                if cur:
                    segs.append(cur)
                cur = []
                continue
            cur.append(f"{pad_l + w * x / x_max:.1f},{pad_t + h - h * min(y, y_max) / y_max:.1f}")
        if cur:
            segs.append(cur)
        for seg in segs:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            else:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(seg)}"/>')
        out.append(f'<text x="{pad_l + w - 4}" y="{pad_t + 14 + 13 * si}" font-size="11" text-anchor="end" '
                   f'fill="{color}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bars(title: str, edges: Sequence[float], counts: Sequence[int], x_label: str = "ms",
             width: int = 720, height: int = 220) -> str:
    pad_l, pad_r, pad_t, pad_b = 56, 12, 28, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    if not counts:
        out.append(f'<text x="{pad_l + w / 2}" y="{pad_t + h / 2}" text-anchor="middle" font-size="12">no samples</text>')
    else:
        c_max = _nice_max(max(counts))
        bw = w / len(counts)
        for i, c in enumerate(counts):
            bh = h * c / c_max
            out.append(f'<rect x="{pad_l + i * bw:.1f}" y="{pad_t + h - bh:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                       f'height="{bh:.1f}" fill="{_COLORS[0]}"><title>{edges[i]:g}-{edges[i + 1]:g} {x_label}: {c}</title></rect>')
        for i in range(5):
            j = round(i * len(counts) / 4)
            out.append(f'<text x="{pad_l + j * bw:.1f}" y="{pad_t + h + 14}" font-size="10" '
                       f'text-anchor="middle">{edges[j]:.0f}</text>')
        out.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" text-anchor="end">{c_max:g}</text>')
    out.append(f'<text x="{pad_l + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:900px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}.invalid{color:#9a6700;font-weight:bold}
.skip{color:#777}code{background:#f4f4f4;padding:1px 4px}"""


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def html_report(doc: dict[str, Any], hists: dict[str, dict[str, list[float]]] | None = None) -> str:
    verdict = str(doc.get("verdict", "?"))
    tl = doc.get("timeline") or {}
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>rtaa soak {e(str(doc.get('scenario', {}).get('name', '')))}: {e(verdict)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>rtaa soak: {e(str(doc.get('scenario', {}).get('name', '')))} "
             f"<span class='{e(verdict)}'>{e(verdict.upper())}</span></h1>"]
    if doc.get("invalid_reasons"):
        parts.append("<p class='invalid'>Invalid run: " + e("; ".join(doc["invalid_reasons"])) + "</p>")
    run = doc.get("run", {})
    parts.append(f"<p>Target <code>{e(str(run.get('target', '')))}</code>, {e(_fmt(run.get('users')))} users, "
                 f"{e(_fmt(run.get('duration_s')))} s, started {e(str(run.get('started', '')))}.</p>")
    parts.append("<h2>Thresholds</h2><table><tr><th>name</th><th>limit</th><th>value</th><th>result</th></tr>")
    for row in doc.get("thresholds", []):
        op = html.escape(row.get("op") or OPS.get(row.get("kind", "max"), ""))
        status = status_of(row)
        css = {PASS: "pass", FAIL: "fail", NOT_MEASURED: "invalid", OFF: "skip"}[status]
        label = status.upper() if status in (FAIL, NOT_MEASURED) else status
        why = f" ({row['reason']})" if row.get("reason") else ""
        parts.append(f"<tr><td>{e(row['name'])}</td><td>{op} {_fmt(row['limit'])}</td><td>{_fmt(row['value'])}</td>"
                     f"<td class='{css}'>{e(label)}{e(why)}</td></tr>")
    parts.append("</table>")
    calls = doc.get("calls", {})
    lat = doc.get("latency_ms", {})
    c1011 = doc.get("closes_1011", {})
    pacing = doc.get("pacing", {}).get("lateness_ms", {})
    parts.append("<h2>Summary</h2><table>")
    rows = [("calls started / completed / failed", f"{_fmt(calls.get('started'))} / {_fmt(calls.get('completed'))} / {_fmt(calls.get('failed'))}"),
            ("duplicate provider connections", _fmt(doc.get("duplicates"))),
            ("1011 closes provider / caller (rate)", f"{_fmt(c1011.get('provider'))} / {_fmt(c1011.get('caller'))} ({_fmt(c1011.get('rate'))})"),
            ("delivery rate", _fmt(doc.get("delivery_rate"))),
            ("audio loss", _fmt(doc.get("audio", {}).get("loss"))),
            ("pacing lateness p50 / p99 / max ms", f"{_fmt(pacing.get('p50'))} / {_fmt(pacing.get('p99'))} / {_fmt(pacing.get('max'))}")]
    prov = doc.get("provider") or {}
    if "unattributed_connections" in prov:
        rows += [("provider: calls reached / calls with audio", f"{prov['calls_reached']} / {prov['calls_with_audio']}"),
                 ("provider: unattributed connections", _fmt(prov["unattributed_connections"])),
                 ("provider: attributed by tag / by watermark",
                  f"{_fmt(prov.get('attributed_by_tag'))} / {_fmt(prov.get('attributed_by_watermark'))}"),
                 ("provider: open at end / opened after end", f"{prov['open_at_end']} / {prov['opened_after_end']}"),
                 ("provider: reconnects / 429 refusals", f"{prov['reconnects']} / {_fmt(prov['rejected_429'])}"),
                 ("provider: KeepAlives (per connection)", f"{prov['keepalives']} ({prov['keepalives_per_connection']})"),
                 ("provider: 1011 by cause", ", ".join(f"{k} {v}" for k, v in prov["closes_1011_by_cause"].items()) or "none")]
    mem = doc.get("target_memory")
    if mem:
        rss = mem["rss_mb"]
        rows.append(("target RSS first / last / max MB; steady growth MB/h (second half)",
                     f"{_fmt(rss['first'])} / {_fmt(rss['last'])} / {_fmt(rss['max'])}; {_fmt(mem['growth_mb_per_h'])}"
                     f" ({_fmt(mem.get('second_half_growth_mb_per_h'))})"))
    for kind in ("first_partial", "final"):
        s = lat.get(kind, {})
        rows.append((f"{kind.replace('_', ' ')} latency p50 / p90 / p95 / p99 / max ms (n)",
                     " / ".join(_fmt(s.get(k)) for k in ("p50", "p90", "p95", "p99", "max")) + f" ({_fmt(s.get('count'))})"))
    for k, v in rows:
        parts.append(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>")
    parts.append("</table>")
    xs = tl.get("t", [])
    stages = (doc.get("run") or {}).get("stages") or []
    marks = [(st["end_s"], f"stage {i} end: {st['users']} users") for i, st in enumerate(stages, 1)]
    if xs:
        parts.append("<h2>Over time</h2>")
        parts.append(svg_lines("Final-result latency (ms)", xs, [("p50", tl["final_p50"]), ("p95", tl["final_p95"]),
                                                                   ("max", tl["final_max"])], "seconds into the run", "ms",
                               markers=marks))
        active = [("active calls", tl["active"]), ("users", tl.get("users", []))]
        if stages:  # the plan: users ramp linearly within each stage
            plan = [(st["end_s"] - prev_end, st["users"]) for st, prev_end in
                    zip(stages, [0.0] + [st["end_s"] for st in stages[:-1]])]
            active.append(("planned users", [planned_users(plan, x) for x in xs]))
        parts.append(svg_lines("Active calls", xs, active, "seconds into the run", "calls", markers=marks))
        prov_tl = tl.get("provider") or {}
        if prov_tl:  # the emulator's records: when the target reconnected, was refused, was closed 1011
            parts.append(svg_lines("Provider: reconnects, 429 refusals, 1011 closes (per bucket)", xs,
                                   [("reconnects", prov_tl.get("reconnect", [])), ("429", prov_tl.get("429", [])),
                                    ("1011", prov_tl.get("1011", []))], "seconds into the run", "events"))
        parts.append(svg_lines("Calls started / failed, errors (per bucket)", xs,
                               [("started", tl["started"]), ("failed", tl["failed"]), ("errors", tl["errors"])],
                               "seconds into the run", "count"))
    if mem and mem["series"]["t"]:
        parts.append(svg_lines("Target resident memory (MB)", mem["series"]["t"], [("RSS", mem["series"]["rss_mb"])],
                               "seconds into the run", "MB"))
    for name, hb in (hists or {}).items():
        parts.append(svg_bars(f"{name} latency histogram", hb["edges"], hb["counts"]))
    fails = doc.get("failures", {})
    if fails.get("samples"):
        parts.append("<h2>Failures (samples)</h2><table><tr><th>call</th><th>kind</th><th>reason</th></tr>")
        for f in fails["samples"]:
            parts.append(f"<tr><td>{e(f['call_sid'])}</td><td>{e(f['kind'])}</td><td>{e(f['reason'])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def check_report_paths(*paths: str | None) -> None:
    """Refuse unwritable report paths before any call is made (a usage error, exit 2): a soak that
    ran an hour must not end unable to write its report."""
    for path in paths:
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path)) or "."
        if os.path.isdir(path):
            raise RtaaError(f"report path {path} is a directory")
        if not os.path.isdir(parent):
            raise RtaaError(f"report path {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise RtaaError(f"report path {path} is not writable")


def write_reports(doc: dict[str, Any], json_path: str | None, junit_path: str | None, html_path: str | None,
                  suite: str) -> None:
    """Write whichever of the three reports were asked for. One that cannot be written does not stop
    the others: its error goes into ``doc["report_errors"]`` (printed with the summary)."""
    hists = doc.get("latency_histograms") or {}
    writers = [
        (json_path, lambda path: write_json(path, doc)),
        (junit_path, lambda path: Path(path).write_text(junit_xml(doc, suite), encoding="utf-8")),
        (html_path, lambda path: Path(path).write_text(
            html_report(doc, {k.replace("_", " "): v for k, v in hists.items()}), encoding="utf-8")),
    ]
    errors = []
    for path, write in writers:
        if path:
            try:
                write(path)
            except OSError as exc:
                errors.append(f"could not write {path}: {exc.strerror or exc}")
    if errors:
        doc["report_errors"] = errors
