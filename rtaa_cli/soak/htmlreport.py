"""The soak/smoke HTML report: one self-contained file (plotly.js inline, no CDN, opens offline) with
interactive plotly charts (zoom a one-hour run, hover a point).

:func:`report_figures` builds the charts from the JSON report document alone (tests compare their data
with the document's timeline); :func:`call_figure` draws one sampled call (``doc["call_samples"]``);
:func:`html_report` lays them out with the verdict and every threshold.
"""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from rtaa_cli.soak.scenario import planned_users
from rtaa_cli.soak.stats import METRICS
from rtaa_cli.verdict import FAIL, NOT_MEASURED, OFF, OPS, PASS, format_value, status_of

TEMPLATE = "plotly_white"
CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False}
_X = "seconds into the run"
# provider series drawn as events per bucket, in this order (the 1011 causes follow, one each)
PROVIDER_SERIES = (("connection", "connections opened", "#1f77b4"), ("reconnect", "reconnects", "#ff7f0e"),
                   ("unattributed", "unattributed connections", "#7f7f7f"), ("429", "429 refusals", "#9467bd"))
_REDS = ("#d62728", "#8c1c13", "#e377c2", "#f4a582", "#67000d")  # one per 1011 cause


def _count_axis(fig: go.Figure, series: list[list[Any]]) -> None:
    """Counts are whole: below 10 a tick per unit (no 0.5 events)."""
    top = max((v for ys in series for v in ys if v is not None), default=0)
    fig.update_yaxes(rangemode="tozero", **({"dtick": 1} if top <= 10 else {}))


def _layout(fig: go.Figure, title: str, y_title: str, height: int = 340, x_title: str = _X) -> go.Figure:
    # the legend goes under the plot: on a narrow window it wraps there instead of over the title
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01, "font": {"size": 15}}, height=height,
                      margin={"l": 60, "r": 20, "t": 40, "b": 40}, hovermode="x unified",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "xanchor": "left"})
    fig.update_xaxes(title_text=x_title, rangemode="tozero")
    fig.update_yaxes(title_text=y_title)
    return fig


def _stage_marks(fig: go.Figure, stages: list[dict[str, Any]]) -> None:
    for i, st in enumerate(stages, 1):
        fig.add_vline(x=st["end_s"], line={"dash": "dash", "color": "#888", "width": 1},
                      annotation={"text": f"stage {i} end: {st['users']} users", "font": {"size": 10, "color": "#555"},
                                  "textangle": -90, "xanchor": "right", "yanchor": "top"},
                      annotation_position="top left")


def report_figures(doc: dict[str, Any], hists: dict[str, dict[str, list[float]]] | None = None) -> dict[str, go.Figure]:
    """The run's charts, keyed by a stable id (the page's div ids are ``chart-<id>``)."""
    tl = doc.get("timeline") or {}
    xs = tl.get("t") or []
    bucket = tl.get("bucket_s")
    per = f"per {bucket:g} s bucket" if bucket else "per bucket"
    stages = (doc.get("run") or {}).get("stages") or []
    figs: dict[str, go.Figure] = {}
    if xs:
        fig = go.Figure()
        counts = tl.get("final_count") or [None] * len(xs)
        # max under p95 under p50: the dotted max and its x markers stay visible where p95 equals it
        fig.add_trace(go.Scatter(x=xs, y=tl.get("final_max"), name="max", mode="lines+markers",
                                 line={"color": "#d62728", "width": 1.5, "dash": "dot"},
                                 marker={"symbol": "x", "size": 7}, customdata=counts,
                                 hovertemplate="max %{y:.0f} ms (%{customdata} finals)<extra></extra>"))
        fig.add_trace(go.Scatter(x=xs, y=tl.get("final_p95"), name="p95", mode="lines+markers",
                                 line={"color": "#ff7f0e", "width": 2.5}, marker={"size": 5},
                                 hovertemplate="p95 %{y:.0f} ms<extra></extra>"))
        fig.add_trace(go.Scatter(x=xs, y=tl.get("final_p50"), name="p50", mode="lines+markers",
                                 line={"color": "#1f77b4", "width": 2.5}, marker={"size": 5},
                                 hovertemplate="p50 %{y:.0f} ms<extra></extra>"))
        if any(v is not None for v in tl.get("first_partial_p50") or []):
            fig.add_trace(go.Scatter(x=xs, y=tl["first_partial_p50"], name="first partial p50", mode="lines",
                                     line={"color": "#2ca02c", "width": 1.5, "dash": "dash"},
                                     hovertemplate="first partial p50 %{y:.0f} ms<extra></extra>"))
        _layout(fig, f"Final-result latency, {per} (finals that arrived in the bucket)", "ms")
        fig.update_yaxes(rangemode="tozero")
        _stage_marks(fig, stages)
        figs["latency"] = fig

        fig = go.Figure()
        fig.add_trace(go.Scatter(x=xs, y=tl.get("active"), name="active calls", mode="lines",
                                 line={"shape": "hv", "color": "#1f77b4", "width": 2}))
        if any(u is not None for u in tl.get("users") or []):
            fig.add_trace(go.Scatter(x=xs, y=tl["users"], name="users", mode="lines",
                                     line={"shape": "hv", "color": "#9467bd", "width": 2}))
        if stages:  # the plan: users ramp linearly within each stage
            plan = [(st["end_s"] - prev, st["users"]) for st, prev in
                    zip(stages, [0.0] + [st["end_s"] for st in stages[:-1]])]
            fig.add_trace(go.Scatter(x=xs, y=[round(planned_users(plan, x), 3) for x in xs], name="planned users",
                                     mode="lines", line={"color": "#7f7f7f", "dash": "dash", "width": 1.5}))
        _layout(fig, f"Load: users and active calls, {per}", "calls")
        fig.update_yaxes(rangemode="tozero")
        _stage_marks(fig, stages)
        figs["load"] = fig

        fig = go.Figure()
        for key, name, color in (("started", "calls started", "#1f77b4"), ("failed", "calls failed", "#d62728"),
                                 ("errors", "errors", "#ff7f0e")):
            fig.add_trace(go.Bar(x=xs, y=tl.get(key), name=name, marker_color=color))
        _layout(fig, f"Calls started / failed and errors, {per}", "count")
        fig.update_layout(barmode="group")
        _count_axis(fig, [tl.get(k) or [] for k in ("started", "failed", "errors")])
        _stage_marks(fig, stages)
        figs["calls"] = fig

        prov = tl.get("provider") or {}
        if prov:
            fig = go.Figure()
            for key, name, color in PROVIDER_SERIES:
                if key in prov:
                    fig.add_trace(go.Bar(x=xs, y=prov[key], name=name, marker_color=color))
            causes = sorted(k for k in prov if k.startswith("1011 "))
            for i, key in enumerate(causes):
                fig.add_trace(go.Bar(x=xs, y=prov[key], name=f"1011: {key[5:]}", marker_color=_REDS[i % len(_REDS)]))
            if not causes and "1011" in prov:
                fig.add_trace(go.Bar(x=xs, y=prov["1011"], name="1011 closes", marker_color=_REDS[0]))
            _layout(fig, f"Provider-side events, {per} (the emulator's connection records; bars stacked)", "events")
            fig.update_layout(barmode="stack")
            stacked = [sum(v or 0 for v in col) for col in zip(*prov.values())]
            _count_axis(fig, [stacked])
            _stage_marks(fig, stages)
            figs["provider"] = fig
    mem = doc.get("target_memory")
    if mem and mem.get("series", {}).get("t"):
        growth = mem.get("growth_mb_per_h")
        fig = go.Figure(go.Scatter(x=mem["series"]["t"], y=mem["series"]["rss_mb"], name="RSS", mode="lines+markers",
                                   line={"color": "#1f77b4", "width": 2}, marker={"size": 4},
                                   hovertemplate="%{y:.2f} MB<extra></extra>"))
        title = "Target resident memory (MB; axis fitted to the data, not from 0)"
        if growth is not None:
            title += f": steady growth {growth:g} MB/h"
        _layout(fig, title, "MB")
        fig.update_yaxes(rangemode="normal", autorange=True)  # a 67 -> 71 MB growth must not be flattened
        figs["memory"] = fig
    for name, hb in (hists or {}).items():
        if not hb.get("counts"):
            continue
        edges = hb["edges"]
        mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        fig = go.Figure(go.Bar(x=mids, y=hb["counts"], width=[b - a for a, b in zip(edges, edges[1:])], name=name,
                               customdata=list(zip(edges, edges[1:])),
                               hovertemplate="%{customdata[0]:.0f}-%{customdata[1]:.0f} ms: %{y}<extra></extra>"))
        _layout(fig, f"{name} latency histogram", "results", height=280, x_title="ms")
        fig.update_layout(hovermode="closest", showlegend=False)
        figs[f"hist-{name.replace(' ', '_')}"] = fig
    return figs


# ----------------------------------------------------------------------------------- one call

def _sending_spans(call: dict[str, Any]) -> list[tuple[float, float]]:
    """When the caller was sending audio: its life minus its holds (individual frame times are not kept)."""
    start, end = call.get("started_s"), call.get("ended_s")
    if start is None or end is None or not call.get("frames_sent"):
        return []
    spans, cur = [], start
    for a, b in sorted(g for g in call.get("media_gaps") or [] if g[0] is not None and g[1] is not None):
        if a > cur:
            spans.append((cur, a))
        cur = max(cur, b)
    if end > cur:
        spans.append((cur, end))
    return spans


def _close_text(code: Any, reason: str | None) -> str:
    code_s = "no close frame" if code is None else f"close {code}"
    return f"{code_s} {reason!r}" if reason else code_s


def call_events(call: dict[str, Any]) -> list[tuple[float | None, str, str]]:
    """The call's timeline as (seconds into the run, who, what), in time order."""
    ev: list[tuple[float | None, str, str]] = [
        (call.get("started_s"), "caller", f"call started ({call.get('kind')}); {call.get('frames_sent')} frames, "
                                          f"{format_value((call.get('audio_ms_sent') or 0) / 1000)} s of audio sent in all")]
    for a, b in call.get("media_gaps") or []:
        ev.append((a, "caller", "hold: media stops"))
        ev.append((b, "caller", f"hold ends ({format_value((b or 0) - (a or 0))} s)"))
    for c in call.get("provider_connections") or []:
        ev.append((c.get("opened_s"), "provider", f"connection #{c.get('id')} opened"
                   + (" (a duplicate: another was open)" if c.get("duplicate") else "")))
        what = f"connection #{c.get('id')} {_close_text(c.get('close_code'), c.get('close_reason'))}"
        if c.get("cause_1011"):
            what += f" [1011 cause: {c['cause_1011']}]"
        what += (f"; received {format_value(c.get('audio_seconds'))} s of audio, {c.get('keepalives', 0)} KeepAlives, "
                 f"sent {c.get('results_sent', 'n/a')} results")
        ev.append((c.get("closed_s"), "provider", what if c.get("closed_s") is not None else
                   f"connection #{c.get('id')} still open at the snapshot"))
    for t, ms in call.get("first_partial") or []:
        ev.append((t, "feed", f"first partial, latency {ms:.0f} ms"))
    for t, ms in call.get("final") or []:
        ev.append((t, "feed", f"final, latency {ms:.0f} ms"))
    closes, reasons = call.get("closes") or [], call.get("close_reasons") or []
    for i, code in enumerate(closes):
        ev.append((call.get("ended_s"), "caller", f"stream {i + 1}: server {_close_text(code, reasons[i] if i < len(reasons) else None)}"))
    for err in call.get("errors") or []:
        ev.append((call.get("ended_s"), "caller", f"error: {err}"))
    ev.append((call.get("ended_s"), "caller", f"call ended: {'FAILED: ' + call['failure'] if call.get('failure') else 'completed'}"))
    return sorted(ev, key=lambda e: (e[0] is None, e[0] or 0.0))


def call_figure(call: dict[str, Any]) -> go.Figure:
    """Lanes (caller sending / holds, each provider connection) over the results' latency."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.5, 0.5], vertical_spacing=0.08)
    lanes: list[tuple[str, float, float, str, str, str]] = []  # lane, start, end, color, label, hover
    frames = f"{call.get('frames_sent')} frames sent"
    for a, b in _sending_spans(call):
        lanes.append(("caller", a, b, "#1f77b4", "sending", f"sending audio {a:.2f}-{b:.2f} s ({frames} in all)"))
    for a, b in call.get("media_gaps") or []:
        if a is not None and b is not None:
            lanes.append(("caller", a, b, "#bbbbbb", "hold", f"hold {a:.2f}-{b:.2f} s (no media)"))
    end = call.get("ended_s") or 0.0
    for c in call.get("provider_connections") or []:
        a = c.get("opened_s")
        b = c.get("closed_s") if c.get("closed_s") is not None else end
        if a is None:
            continue
        color = "#d62728" if c.get("close_code") not in (1000, None) else "#2ca02c"
        code = c.get("close_code")
        label = ("open" if c.get("closed_s") is None else f"closed {code}") + \
            (f" ({c['cause_1011']})" if c.get("cause_1011") else "")
        lanes.append((f"provider #{c.get('id')}", a, b, color, label,
                      f"#{c.get('id')}: {a:.2f}-{b:.2f} s, {_close_text(code, c.get('close_reason'))}, "
                      f"{format_value(c.get('audio_seconds'))} s of audio received"))
    for lane, a, b, color, label, hover in lanes:
        fig.add_trace(go.Bar(y=[lane], x=[max(b - a, 0.01)], base=[a], orientation="h", marker_color=color,
                             text=[label], textposition="inside", insidetextanchor="start",
                             showlegend=False, hovertext=[hover], hoverinfo="text"), row=1, col=1)
    closes = call.get("closes") or []
    if call.get("ended_s") is not None:
        label = ", ".join("none" if c is None else str(c) for c in closes) or "no stream"
        fig.add_trace(go.Scatter(x=[call["ended_s"]], y=["caller"], mode="markers+text", text=[f"close {label}"],
                                 textposition="middle left", marker={"symbol": "line-ns", "size": 18,
                                                                     "line": {"width": 3, "color": "#000"}},
                                 showlegend=False, hoverinfo="text", hovertext=[f"server closed: {label}"]),
                      row=1, col=1)
    for key, name, color in (("final", "final latency", "#1f77b4"), ("first_partial", "first partial latency", "#2ca02c")):
        pts = call.get(key) or []
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=name,
                                     marker={"color": color, "size": 7},
                                     hovertemplate="%{x:.2f} s: %{y:.0f} ms<extra>" + name + "</extra>"), row=2, col=1)
    title = f"Call {call['call_sid']} ({call.get('kind')}): " + (f"FAILED: {call['failure']}" if call.get("failure")
                                                                else "completed")
    fig.update_layout(template=TEMPLATE, title={"text": title[:160], "x": 0.01, "font": {"size": 14}}, height=420,
                      margin={"l": 100, "r": 20, "t": 50, "b": 40}, barmode="overlay", hovermode="closest",
                      legend={"orientation": "h", "yanchor": "bottom", "y": -0.25, "x": 0})
    fig.update_yaxes(title_text="ms", row=2, col=1, rangemode="tozero")
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text=_X, row=2, col=1)
    if not (call.get("final") or call.get("first_partial")):
        fig.add_annotation(text="no results arrived on this call's feed", xref="x2 domain", yref="y2 domain",
                           x=0.5, y=0.5, showarrow=False)
    return fig


# --------------------------------------------------------------------------------------- page

class _Refs(HTMLParser):
    """Everything a page would fetch: src/href/data attributes and CSS url()/@import (not JS text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href", "data", "srcset", "poster") and value and not value.startswith("#"):
                self.refs.append(f"{tag} {key} {value}")
            elif key == "style" and value and _CSS_REF.search(value):
                self.refs.append(f"{tag} style {value}")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and _CSS_REF.search(data):
            self.refs.append(f"style {_CSS_REF.search(data).group(0)}")  # type: ignore[union-attr]


_CSS_REF = re.compile(r"url\(|@import", re.I)


def external_references(page: str) -> list[str]:
    """What the page would load from elsewhere (``[]``: it is one self-contained file)."""
    parser = _Refs()
    parser.feed(page)
    parser.close()
    return parser.refs


_CSS = """body{font-family:system-ui,sans-serif;margin:16px auto;max-width:1300px;padding:0 12px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
.invalid{color:#9a6700;font-weight:bold}.skip{color:#777}code{background:#f4f4f4;padding:1px 4px}
.chart{width:100%;min-height:280px}.note{color:#555;font-size:90%}.wrap{overflow-x:auto}
.events td:first-child,#thresholds td:nth-child(3),#thresholds td:nth-child(4){text-align:right;white-space:nowrap}select{max-width:100%;font-size:100%}
h1 .badge{padding:2px 10px;border-radius:4px;color:#fff}.badge.pass{background:#1a7f37}
.badge.fail{background:#cf222e}.badge.invalid{background:#9a6700}"""

_CALL_JS = """(function(){
var figs=JSON.parse(document.getElementById('call-figures').textContent);
var sel=document.getElementById('call-select');
function show(i){
  var f=figs[i];Plotly.react('call-chart',f.data,f.layout,%s);
  document.querySelectorAll('.call-events').forEach(function(t){t.hidden=(t.dataset.call!==String(i));});
}
sel.addEventListener('change',function(){show(sel.value);});
show(sel.value);
})();"""


def _thresholds_table(doc: dict[str, Any]) -> str:
    e = html.escape
    out = ["<div class='wrap'><table id='thresholds'><tr><th>threshold</th><th>what it measures</th><th>limit</th>"
           "<th>value</th><th>result</th></tr>"]
    for row in doc.get("thresholds", []):
        op = row.get("op") or OPS.get(row.get("kind", "max"), "")
        status = status_of(row)
        css = {PASS: "pass", FAIL: "fail", NOT_MEASURED: "invalid", OFF: "skip"}.get(status, "")
        label = status.upper() if status in (FAIL, NOT_MEASURED) else status
        why = " ".join(x for x in (row.get("reason"), row.get("detail")) if x)
        desc = (METRICS.get(row["name"]) or ("", None, ""))[2]
        out.append(f"<tr><td><code>{e(row['name'])}</code></td><td>{e(desc)}</td><td>{e(op)} {e(format_value(row.get('limit')))}"
                   f"</td><td>{e(format_value(row.get('value')))}</td><td class='{css}'>{e(label)}"
                   f"{'<br><span class=note>' + e(why) + '</span>' if why else ''}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _summary_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    calls = doc.get("calls", {})
    lat = doc.get("latency_ms", {})
    c1011 = doc.get("closes_1011", {})
    pacing = doc.get("pacing", {}).get("lateness_ms", {})
    rows = [("calls started / completed / failed",
             f"{format_value(calls.get('started'))} / {format_value(calls.get('completed'))} / {format_value(calls.get('failed'))}"),
            ("duplicate provider connections", format_value(doc.get("duplicates"))),
            ("1011 closes provider / caller (rate)",
             f"{format_value(c1011.get('provider'))} / {format_value(c1011.get('caller'))} ({format_value(c1011.get('rate'))})"),
            ("delivery rate", format_value(doc.get("delivery_rate"))),
            ("audio loss", format_value(doc.get("audio", {}).get("loss"))),
            ("pacing lateness p50 / p99 / max ms",
             f"{format_value(pacing.get('p50'))} / {format_value(pacing.get('p99'))} / {format_value(pacing.get('max'))}")]
    prov = doc.get("provider") or {}
    if "unattributed_connections" in prov:
        rows += [("provider: calls reached / calls with audio", f"{prov['calls_reached']} / {prov['calls_with_audio']}"),
                 ("provider: connections / unattributed", f"{format_value(prov.get('connections'))} / "
                                                          f"{format_value(prov['unattributed_connections'])}"),
                 ("provider: attributed by tag / by watermark / by robust mark",
                  f"{format_value(prov.get('attributed_by_tag'))} / {format_value(prov.get('attributed_by_watermark'))}"
                  f" / {format_value(prov.get('attributed_by_robust_mark'))}"),
                 ("provider: open at end / opened after end", f"{prov['open_at_end']} / {prov['opened_after_end']}"),
                 ("provider: reconnects / 429 refusals", f"{prov['reconnects']} / {format_value(prov['rejected_429'])}"),
                 ("provider: KeepAlives (per connection)", f"{prov['keepalives']} ({prov['keepalives_per_connection']})"),
                 ("provider: 1011 by cause",
                  ", ".join(f"{k} {v}" for k, v in prov["closes_1011_by_cause"].items()) or "none")]
    mem = doc.get("target_memory")
    if mem:
        rss = mem["rss_mb"]
        rows.append(("target RSS first / last / max MB; steady growth MB/h (second half)",
                     f"{format_value(rss['first'])} / {format_value(rss['last'])} / {format_value(rss['max'])}; {format_value(mem['growth_mb_per_h'])}"
                     f" ({format_value(mem.get('second_half_growth_mb_per_h'))})"))
    for kind in ("first_partial", "final"):
        s = lat.get(kind, {})
        rows.append((f"{kind.replace('_', ' ')} latency p50 / p90 / p95 / p99 / max ms (n)",
                     " / ".join(format_value(s.get(k)) for k in ("p50", "p90", "p95", "p99", "max")) + f" ({format_value(s.get('count'))})"))
    return rows


def _div(fig: go.Figure, div_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG,
                       default_width="100%", default_height=f"{fig.layout.height or 340}px")


def _json_script(value: str) -> str:
    """JSON inside <script>: no '</' may end the element early (plotly's JSON escapes '<' already)."""
    return value.replace("</", "<\\/")


def _call_section(doc: dict[str, Any]) -> list[str]:
    e = html.escape
    samples = doc.get("call_samples") or {}
    calls = samples.get("calls") or []
    parts = ["<h2 id='calls-drilldown'>Calls, one by one</h2>"]
    if not calls:
        why = "no call finished" if "call_samples" in doc else "this report has no call_samples (an older rtaa wrote it)"
        parts.append(f"<p class='note'>No call was kept for the drill-down ({why}).</p>")
        return parts
    kept_failed, seen_failed = samples.get("failed_kept", 0), samples.get("failed_seen", 0)
    no_prov = all(c.get("provider_connections") is None for c in calls)
    parts.append(f"<p class='note'>Kept for this page (bounded for a long soak): {e(samples.get('policy', ''))}. "
                 f"This run: {kept_failed} of {seen_failed} failed calls and "
                 f"{len(calls) - kept_failed} of {samples.get('completed_seen', 0)} completed calls. The caller lane "
                 f"shows when audio was sent (frames are paced evenly; single frame times are not kept) and its holds."
                 + (" No provider connection records (pass --provider-stats, the emulator's /stats) so no provider "
                    "lanes." if no_prov else "") + "</p>")
    options = []
    for i, c in enumerate(calls):
        label = f"{c['call_sid']} [{c.get('sampled_as')}] " + (c["failure"][:90] if c.get("failure") else "completed")
        options.append(f"<option value='{i}'>{e(label)}</option>")
    parts.append("<label for='call-select'>Call: </label><select id='call-select'>" + "".join(options) + "</select>")
    parts.append("<div id='call-chart' class='chart' style='height:420px'></div>")
    figs = "[" + ",".join(pio.to_json(call_figure(c), validate=False) for c in calls) + "]"
    parts.append(f"<script type='application/json' id='call-figures'>{_json_script(figs)}</script>")
    for i, c in enumerate(calls):
        rows = "".join(f"<tr><td>{'' if t is None else f'{t:.3f}'}</td><td>{e(who)}</td><td>{e(what)}</td></tr>"
                       for t, who, what in call_events(c))
        dropped = (f"<p class='note'>{c['points_dropped']} result points beyond the cap not kept.</p>"
                   if c.get("points_dropped") else "")
        parts.append(f"<div class='call-events wrap' data-call='{i}' hidden>{dropped}<table class='events'>"
                     f"<tr><th>s</th><th>side</th><th>event</th></tr>{rows}</table></div>")
    parts.append(f"<script>{_CALL_JS % json.dumps(CONFIG)}</script>")
    return parts


def html_report(doc: dict[str, Any], hists: dict[str, dict[str, list[float]]] | None = None) -> str:
    e = html.escape
    verdict = str(doc.get("verdict", "?"))
    name = str((doc.get("scenario") or {}).get("name", ""))
    run = doc.get("run") or {}
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>rtaa soak {e(name)}: {e(verdict)}</title><style>{_CSS}</style>",
             f"<script>{get_plotlyjs()}</script></head><body>",
             f"<h1>rtaa soak: {e(name)} <span class='badge {e(verdict)}' id='verdict'>{e(verdict.upper())}</span></h1>"]
    parts.append(f"<p>Target <code>{e(str(run.get('target', '')))}</code>, {e(format_value(run.get('users')))} users, "
                 f"{e(format_value(run.get('duration_s')))} s planned, {e(format_value(run.get('elapsed_s')))} s elapsed, "
                 f"started {e(str(run.get('started', '')))}.</p>")
    parts.append("<h2>Verdict</h2>")
    if doc.get("invalid_reasons"):
        parts.append("<p class='invalid'>The run is INVALID: its figures cannot be trusted, because</p><ul id='invalid'>"
                     + "".join(f"<li>{e(r)}</li>" for r in doc["invalid_reasons"]) + "</ul>")
    for note in run.get("notes") or []:
        parts.append(f"<p class='note'>{e(str(note))}</p>")
    parts.append(_thresholds_table(doc))
    parts.append("<h2>Summary</h2><div class='wrap'><table>")
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _summary_rows(doc)]
    parts.append("</table></div>")
    figs = report_figures(doc, hists)
    if figs:
        bucket = (doc.get("timeline") or {}).get("bucket_s")
        parts.append("<h2>Over time</h2><p class='note'>Drag to zoom, double-click to reset, hover for values."
                     + (f" Each point is one {bucket:g} s bucket, drawn at its start." if bucket else "") + "</p>")
        for key in figs:
            parts.append(_div(figs[key], f"chart-{key}"))
        if "provider" not in figs and (doc.get("timeline") or {}).get("t"):
            parts.append("<p class='note'>Provider-side events over time: not measured (no per-connection records; "
                         "pass --provider-stats, the emulator's /stats).</p>")
    parts += _call_section(doc)
    fails = doc.get("failures", {})
    if fails.get("samples"):
        parts.append("<h2>Failures (samples)</h2><div class='wrap'><table id='failures'><tr><th>call</th><th>kind</th>"
                     "<th>reason</th></tr>")
        for f in fails["samples"]:
            parts.append(f"<tr><td>{e(f['call_sid'])}</td><td>{e(f['kind'])}</td><td>{e(f['reason'])}</td></tr>")
        parts.append("</table></div>")
    parts.append("</body></html>\n")
    return "".join(parts)
