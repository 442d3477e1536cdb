"""Scenario files (the TOML loader and the shipped scenarios) and the report writers."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.htmlreport import external_references
from rtaa_cli.soak.report import histogram_bins, html_report, junit_xml, write_json
from rtaa_cli.soak.scenario import (
    BAD_INPUTS, Scenario, SmoothWeighted, load_scenario, parse_duration, parse_scenario,
)
from rtaa_cli.soak.stats import Histogram
from helpers.paths import ROOT

REQUIRED = {"steady", "ramp", "burst", "disconnect", "silence", "second-stream", "provider-faults", "bad-input"}


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("2m", 120), ("1h", 3600), ("250ms", 0.25), (45, 45),
                                          ("1.5m", 90), (" 10 s ", 10), ("1h30m", 5400),
                                          ("2m30s", 150), ("1h2m3s", 3723), ("1m500ms", 60.5)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "-5s", "", "soon", True, -1, "1m1h", "30s2m", "ms", "1hh"])
def test_bad_durations_are_one_line_errors(bad) -> None:
    with pytest.raises(RtaaError):
        parse_duration(bad, "load.duration")


def test_every_required_scenario_ships_and_loads() -> None:
    names = {}
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        sc = load_scenario(path)
        names[sc.name] = sc
        assert path.stem == sc.name
        for audio in sc.audio:
            assert audio == "synthetic" or Path(audio).exists(), audio
    assert REQUIRED <= set(names)
    assert names["burst"].burst and names["burst"].spawn_rate >= names["burst"].users
    assert names["silence"].mix == {"hold": 1.0} and names["silence"].hold_s >= 12
    assert names["disconnect"].mix.get("disconnect", 0) > 0
    assert names["second-stream"].mix.get("second_stream", 0) > 0
    assert set(names["bad-input"].bad_inputs) == set(BAD_INPUTS) and names["bad-input"].mix.get("bad_input")
    pf = names["provider-faults"].faults
    assert pf.close_1011_after_s and pf.refuse_429_fraction > 0 and pf.result_latency_ms > 0
    # a threshold of 0 is a limit, not "off" (0 == False in Python)
    assert names["silence"].thresholds["closes_1011_rate"] == 0.0
    assert names["provider-faults"].thresholds["closes_1011_rate"] is None


def test_defaults_overrides_and_wire_roundtrip() -> None:
    sc = parse_scenario({})
    assert (sc.users, sc.frame_ms, sc.sample_rate, sc.faults.handshake_delay_ms) == (5, 36, 8000, (150.0, 300.0))
    over = sc.with_overrides(users=50, spawn_rate=10, duration="1h", processes=2)
    assert (over.users, over.spawn_rate, over.duration_s, over.processes) == (50, 10, 3600, 2)
    assert sc.users == 5  # the original is untouched
    back = Scenario.from_dict(orjson.loads(orjson.dumps(over.to_dict())))
    assert back == over


@pytest.mark.parametrize("doc,msg", [
    ({"load": {"userz": 3}}, "unknown key"),
    ({"load": {"users": 0}}, "must be >= 1"),
    ({"call": {"sample_rate": 11025}}, "8000, 16000 or 24000"),
    ({"mix": {"normal": 0}}, "at least one weight"),
    ({"bad_input": {"kinds": ["nope"]}}, "unknown"),
    ({"thresholds": {"latency": 3}}, "unknown key"),
    ({"faults": {"refuse_429_fraction": 2}}, "between 0 and 1"),
    ({"extra": 1}, "unknown key"),
])
def test_bad_scenarios_name_the_problem(doc, msg) -> None:
    with pytest.raises(RtaaError, match=msg):
        parse_scenario(doc)


def test_mix_is_followed_exactly_and_spread_out() -> None:
    p = SmoothWeighted({"normal": 3.0, "bad_input": 2.0, "hold": 0.0})
    picks = [p.next() for _ in range(10)]
    assert picks.count("normal") == 6 and picks.count("bad_input") == 4 and "hold" not in picks
    assert picks[:5] == ["normal", "bad_input", "normal", "bad_input", "normal"]  # interleaved, not clumped
    one_each = SmoothWeighted({"normal": 1, "disconnect": 1, "second_stream": 1, "bad_input": 1})
    assert {one_each.next() for _ in range(4)} == {"normal", "disconnect", "second_stream", "bad_input"}


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(RtaaError, match="not found"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RtaaError, match="invalid TOML"):
        load_scenario(bad)


# ------------------------------------------------------------------------------------ reports

def _doc(verdict="fail", invalid=()) -> dict:
    return {
        "verdict": verdict, "invalid_reasons": list(invalid), "scenario": {"name": "steady"},
        "run": {"elapsed_s": 12.5, "started": "2026-12-07T06:00:00+00:00"},
        "calls": {"started": 3, "completed": 2, "failed": 1}, "duplicates": 1,
        "closes_1011": {"provider": 0, "caller": 1, "rate": 1 / 3}, "delivery_rate": 1.0,
        "latency_ms": {"final": {"p50": 100, "p95": 200, "p99": 210, "max": 215.5, "count": 9}},
        "thresholds": [
            {"name": "duplicates", "limit": 0, "kind": "max", "value": 1, "passed": False},
            {"name": "delivery_rate", "limit": 0.8, "kind": "min", "value": 1.0, "passed": True},
            {"name": "audio_loss", "limit": 0.01, "kind": "max", "value": None, "passed": None},
        ],
        "timeline": {"t": [0, 1, 2], "final_p50": [None, 100, 120], "final_p95": [None, 150, 200],
                     "final_max": [None, 180, 215], "active": [1, 3, 2], "started": [1, 2, 0],
                     "failed": [0, 0, 1], "errors": [0, 1, 0]},
        "failures": {"samples": [{"call_sid": "c<1>", "kind": "normal", "reason": "closed 1011 <boom>"}]},
    }


def test_junit_one_testcase_per_threshold_plus_validity() -> None:
    root = ET.fromstring(junit_xml(_doc(), "soak"))
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"duplicates", "delivery_rate", "audio_loss", "run validity"}
    assert cases["duplicates"].find("failure") is not None and "limit <= 0" in cases["duplicates"].find("failure").get("message")
    assert cases["delivery_rate"].find("failure") is None and cases["delivery_rate"].find("skipped") is None
    # not measured is an error, never a skip (a skip reads as "fine" in CI dashboards)
    assert cases["audio_loss"].find("skipped") is None and cases["audio_loss"].find("error") is not None
    assert cases["run validity"].find("error") is None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("4", "1", "0", "1")
    # named after the scenario, timed, and every case (passing ones too) carries its value and limit
    assert suite.get("name") == "rtaa soak steady" and suite.get("time") == "12.5"
    assert suite.get("timestamp") == "2026-12-07T06:00:00+00:00"
    props = {n: {p.get("name"): p.get("value") for p in c.find("properties")} for n, c in cases.items() if n != "run validity"}
    assert props["delivery_rate"] == {"value": "1.0", "limit": "0.8"} and props["audio_loss"] == {"value": "", "limit": "0.01"}
    assert cases["delivery_rate"].find("system-out").text == "delivery_rate = 1 (limit >= 0.8): pass"
    assert all(c.get("time") == "0" for c in cases.values())
    doc = _doc()
    doc["thresholds"].append({"name": "failed_rate", "limit": None, "kind": "max", "value": 0.3, "passed": None,
                              "status": "off"})
    doc["thresholds"].append({"name": "results_repeated", "limit": None, "kind": "max", "value": None, "passed": None,
                              "status": "off", "reason": "the provider does not mark its results' text"})
    off = ET.fromstring(junit_xml(doc, "soak")).find("testsuite").find("testcase[@name='failed_rate']")
    assert off.find("skipped") is not None and "off" in off.find("skipped").get("message")
    auto = ET.fromstring(junit_xml(doc, "soak")).find("testsuite").find("testcase[@name='results_repeated']")
    assert "does not mark" in auto.find("skipped").get("message")  # why it is off, not "turned off by the user"
    invalid = ET.fromstring(junit_xml(_doc("invalid", ["load generator lateness p99 40.0 ms > 25 ms"]), "soak"))
    err = invalid.find("testsuite").find("testcase[@name='run validity']/error")
    assert err is not None and "lateness" in err.get("message")


def test_html_is_self_contained_with_plotly_charts_and_escaped_text() -> None:
    h = Histogram()
    h.extend([100, 120, 150, 400])
    page = html_report(_doc(), {"final": histogram_bins(h, 10)})
    assert page.startswith("<!DOCTYPE html>")
    ids = re.findall(r'<div id="(chart-[^"]+)" class="plotly-graph-div"', page)
    assert ids == ["chart-latency", "chart-load", "chart-calls", "chart-hist-final"]
    assert external_references(page) == [] and "cdn.plot.ly/plotly" not in page.split("<script>")[-1]
    assert "c&lt;1&gt;" in page and "<boom>" not in page  # user-controlled text is escaped
    assert "FAIL" in page and "Plotly.newPlot" in page


def test_histogram_bins_preserve_counts() -> None:
    h = Histogram()
    h.extend([1, 2, 3, 50, 51, 99, 100, 5000])
    b = histogram_bins(h, 5)
    assert sum(b["counts"]) == 8 and len(b["edges"]) == 6 and b["edges"][0] == 1


def test_json_report_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, _doc())
    assert orjson.loads(path.read_bytes())["thresholds"][0]["name"] == "duplicates"
