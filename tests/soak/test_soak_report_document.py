"""The soak's report document (rtaa_cli/soak/report.py ``soak_document``) assembled from made-up
statistics, as a run assembles it, and its files (``write_reports``, the timeline CSV with the others)."""
from __future__ import annotations

import csv
from pathlib import Path

import orjson

from rtaa_cli.soak.csvexport import TIMELINE_COLUMNS
from rtaa_cli.soak.report import RunFacts, histogram_bins, soak_document, write_reports
from rtaa_cli.soak.scenario import Scenario
from rtaa_cli.soak.stats import CallRecord, PacingLimits, ProviderCounts, SoakStats, default_thresholds
from rtaa_cli.verdict import EXIT_CODES

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
PREFIX = "rtaa0badcafe-"


def _stats(provider: ProviderCounts | None) -> SoakStats:
    stats = SoakStats(t0=T0, duration_s=40.0)
    for i in range(4):
        s = T0 + 2.0 * i
        stats.call_started()
        stats.timeline.set_users(s, 2)
        stats.add(CallRecord(f"{PREFIX}{i}", started_at=s, ended_at=s + 8.0, closes=[1000], frames_sent=400,
                             audio_bytes_sent=128_000, audio_ms_sent=8000.0, final_audio_end_ms=8000.0,
                             first_partial=[(s + 1.0, 200.0 + i)], final=[(s + 3.0, 300.0 + 10 * i)], finals=1,
                             results=2))
    stats.set_provider(provider)
    return stats


def _facts(**kw: object) -> RunFacts:
    base: dict[str, object] = {"target": "ws://127.0.0.1:1/v1/ingest", "description": "--target", "processes": 2,
                               "call_prefix": PREFIX, "t0": T0, "notes": ["a note"], "watch_after_s": 3.0,
                               "metrics_url": "http://127.0.0.1:2/metrics", "watermark": False}
    return RunFacts(**{**base, **kw})  # type: ignore[arg-type]


def test_the_document_is_the_summary_plus_scenario_run_and_histograms() -> None:
    sc = Scenario(name="ramp", path="scenarios/ramp.toml", description="up and down", spawn_rate=2.0,
                  stages=[(10.0, 2), (30.0, 2)], users=2, duration_s=40.0)
    stats = _stats(None)
    summary = _stats(None).summary(default_thresholds(), PacingLimits(sc.max_lateness_p99_ms))
    doc = soak_document(stats, sc, default_thresholds(), (), _facts(), clock=lambda: T0 + 51.25)
    assert {k: v for k, v in doc.items() if k not in ("scenario", "run", "latency_histograms")} == summary
    assert list(doc)[-3:] == ["scenario", "run", "latency_histograms"]
    assert doc["scenario"] == {"name": "ramp", "path": "scenarios/ramp.toml", "description": "up and down"}
    assert list(doc["run"].items()) == [
        ("target", "ws://127.0.0.1:1/v1/ingest"), ("description", "--target"), ("users", 2), ("spawn_rate", 2.0),
        ("duration_s", 40.0), ("processes", 2), ("stages", [{"end_s": 10.0, "users": 2}, {"end_s": 40.0, "users": 2}]),
        ("call_prefix", PREFIX), ("started", "2027-01-15T08:00:00+00:00"), ("elapsed_s", 51.25),
        ("notes", ["a note"]), ("stopped_early", None), ("watch_after_s", 3.0),
        ("metrics_url", "http://127.0.0.1:2/metrics")]
    assert doc["latency_histograms"] == {"final": histogram_bins(stats.final),
                                         "first_partial": histogram_bins(stats.first_partial)}
    assert sum(doc["latency_histograms"]["final"]["counts"]) == 4
    # no provider evidence: duplicates are not measured, so the run cannot pass
    assert doc["verdict"] == "invalid" and EXIT_CODES[doc["verdict"]] != 0


def test_marked_audio_that_no_provider_connection_carried_is_noted_only_when_marks_were_sent() -> None:
    provider = ProviderCounts(source="emulator", records=True, connections=4, audio_bytes=512_000,
                              per_call={f"{PREFIX}{i}": [1, 128_000] for i in range(4)})
    sc = Scenario(name="steady", users=2, duration_s=40.0)
    marked = soak_document(_stats(provider), sc, default_thresholds(), (), _facts(watermark=True), clock=lambda: T0)
    assert marked["run"]["notes"][0] == "a note"
    assert marked["run"]["notes"][1].startswith("watermark not found: the target changes the audio")
    unmarked = soak_document(_stats(provider), sc, default_thresholds(), (), _facts(watermark=False), clock=lambda: T0)
    assert unmarked["run"]["notes"] == ["a note"]
    assert unmarked["verdict"] == "pass"


def test_every_report_file_and_the_timeline_csv_written_and_one_that_fails_does_not_stop_the_others(
        tmp_path: Path) -> None:
    sc = Scenario(name="steady", users=2, duration_s=40.0)
    doc = soak_document(_stats(None), sc, default_thresholds(), (), _facts(), clock=lambda: T0 + 45.0)
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "xml", "html", "csv")}
    write_reports(doc, str(paths["json"]), str(paths["xml"]), str(paths["html"]), "soak",
                  timeline_csv=str(paths["csv"]))
    assert "report_errors" not in doc
    assert orjson.loads(paths["json"].read_bytes())["run"]["elapsed_s"] == 45.0
    assert "<testsuite name=\"rtaa soak steady\"" in paths["xml"].read_text()
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    rows = list(csv.reader(paths["csv"].open()))
    assert tuple(rows[0]) == TIMELINE_COLUMNS and len(rows) - 1 == len(doc["timeline"]["t"])
    assert sum(int(r[1]) for r in rows[1:]) == 4  # calls started, over the buckets

    missing = tmp_path / "absent" / "t.csv"
    again = soak_document(_stats(None), sc, default_thresholds(), (), _facts(), clock=lambda: T0)
    write_reports(again, str(tmp_path / "again.json"), None, None, "soak", timeline_csv=str(missing))
    assert again["report_errors"] == [f"could not write {missing}: No such file or directory"]
    assert (tmp_path / "again.json").exists()
