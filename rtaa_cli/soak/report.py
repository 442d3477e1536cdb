"""Soak/smoke reports: the soak's report document (the statistics' summary and verdict, plus the run's
scenario and facts), and its forms: JSON, JUnit XML (one testcase per threshold), a single-file HTML page
(rtaa_cli/soak/htmlreport.py: plotly charts, plotly.js inline, opens offline) and the timeline CSV.

Pure functions of the statistics and the summary dict (plus a few histograms), so tests check them
without a run.
"""
from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.csvexport import write_timeline_csv
from rtaa_cli.soak.htmlreport import html_report
from rtaa_cli.soak.scenario import Scenario, stage_boundaries
from rtaa_cli.soak.stats import Histogram, PacingLimits, SoakStats, Threshold, watermark_note
from rtaa_cli.verdict import FAIL, NOT_MEASURED, OFF, OPS, format_value, status_of

__all__ = ["RunFacts", "check_report_paths", "histogram_bins", "html_report", "junit_xml", "soak_document",
           "write_json", "write_reports"]


# ------------------------------------------------------------------------------ the document

@dataclass
class RunFacts:
    """What the report's ``run`` section says of the run besides its statistics."""

    target: str  # the ingest URL
    description: str
    processes: int
    call_prefix: str
    t0: float  # wall time the run started
    notes: list[str] = field(default_factory=list)
    stopped_early: str | None = None
    watch_after_s: float | None = None  # None: no post-run watch (no provider /stats)
    metrics_url: str | None = None  # --metrics-port's URL
    watermark: bool = True  # the callers marked their audio


def soak_document(stats: SoakStats, sc: Scenario, thresholds: dict[str, Threshold], off: Iterable[str],
                  facts: RunFacts, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The soak's report: the statistics' summary and verdict (rtaa_cli/soak/stats.py), the scenario, the
    run's facts (``clock`` ends its elapsed time) and the latency histograms the HTML report plots."""
    note = watermark_note(stats.provider, facts.watermark, bool(stats.send_windows))
    if note:
        facts.notes.append(note)
    doc = stats.summary(thresholds, PacingLimits(sc.max_lateness_p99_ms), off)
    doc["scenario"] = {"name": sc.name, "path": sc.path, "description": sc.description}
    doc["run"] = {"target": facts.target, "description": facts.description, "users": sc.users,
                  "spawn_rate": sc.spawn_rate, "duration_s": sc.duration_s, "processes": facts.processes,
                  "stages": [{"end_s": end, "users": users} for end, (_, users) in
                             zip(stage_boundaries(sc.stages), sc.stages)],
                  "call_prefix": facts.call_prefix, "started": datetime.fromtimestamp(facts.t0, timezone.utc).isoformat(),
                  "elapsed_s": round(clock() - facts.t0, 3), "notes": facts.notes, "stopped_early": facts.stopped_early,
                  "watch_after_s": facts.watch_after_s, "metrics_url": facts.metrics_url}
    doc["latency_histograms"] = {"final": histogram_bins(stats.final), "first_partial": histogram_bins(stats.first_partial)}
    return doc


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
        ET.SubElement(case, "system-out").text = (f"{row['name']} = {format_value(row.get('value'))} "
                                                  f"(limit {op} {format_value(row.get('limit'))}): {status}")
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
                  suite: str, timeline_csv: str | None = None) -> None:
    """Write whichever of the reports were asked for. One that cannot be written does not stop the
    others: its error goes into ``doc["report_errors"]`` (printed with the summary)."""
    hists = doc.get("latency_histograms") or {}
    writers = [
        (json_path, lambda path: write_json(path, doc)),
        (junit_path, lambda path: Path(path).write_text(junit_xml(doc, suite), encoding="utf-8")),
        (html_path, lambda path: Path(path).write_text(
            html_report(doc, {k.replace("_", " "): v for k, v in hists.items()}), encoding="utf-8")),
        (timeline_csv, lambda path: write_timeline_csv(path, doc["timeline"])),
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
