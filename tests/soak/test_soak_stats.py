"""Unit tests of the sans-I/O soak core: histograms, per-call tracking, thresholds, verdict.

Expected values are computed by hand or by a straightforward independent formula in the test.
"""
from __future__ import annotations

import math
import random

import pytest

from rtaa_cli.pacing import LatenessHistogram
from rtaa_cli.soak.memory import TargetMemory, rss_from_metrics
from rtaa_cli.soak.report import html_report
from rtaa_cli.emulator.messages import INTERNAL_FAULT
from rtaa_cli.protocols.deepgram import NET0001
from rtaa_cli.soak.stats import (
    PROVIDER_RECORD_METRICS, CallRecord, Histogram, PacingLimits, ProviderCounts, SoakStats, Threshold,
    SendWindow, apply_overrides, classify_1011, default_thresholds, parse_threshold_override, provider_counts_from_emulator,
    provider_counts_from_metrics,
)


def nearest_rank(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


# ----------------------------------------------------------------------------------- histogram

def test_percentiles_of_1_to_100_are_nearest_rank() -> None:
    h = Histogram()
    h.extend(range(100, 0, -1))  # order must not matter
    assert [h.percentile(p) for p in (50, 90, 95, 99)] == [50, 90, 95, 99]
    assert h.max == 100 and h.min == 1 and h.n == 100
    assert h.summary() == {"count": 100, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}


def test_percentiles_match_independent_nearest_rank_at_ms_precision() -> None:
    rng = random.Random(7)
    values = [rng.uniform(0, 3000) for _ in range(5000)]
    h = Histogram()
    h.extend(values)
    rounded = [math.floor(v + 0.5) for v in values]  # ms precision, half up
    for p in (50, 90, 95, 99):
        assert h.percentile(p) == nearest_rank(rounded, p)
    assert h.max == max(values)  # exact, not rounded


def test_small_and_empty_histograms() -> None:
    assert Histogram().percentile(50) is None
    h = Histogram()
    h.add(403.755)
    assert h.percentile(99) == pytest.approx(403.755)  # clamped to the exact max, never above it
    h2 = Histogram()
    h2.extend([10, 20])
    assert h2.percentile(50) == 10 and h2.percentile(51) == 20


def test_merge_equals_one_histogram_of_everything_and_roundtrips_json() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    a.extend([5, 7, 1000])
    b.extend([1, 2, 3, 4000])
    both.extend([5, 7, 1000, 1, 2, 3, 4000])
    a.merge(b)
    assert a.counts == both.counts and a.n == both.n and a.max == both.max and a.min == both.min
    back = Histogram.from_dict(a.to_dict())
    assert back.summary() == both.summary()


def test_values_above_the_cap_are_bounded_but_counted() -> None:
    h = Histogram(cap_ms=1000)
    h.extend([10, 5000, 7000])
    assert h.n == 3 and h.clipped == 2 and len(h.counts) == 2 and h.max == 7000
    assert h.percentile(99) == 1000


# --------------------------------------------------------------------------------- thresholds

def test_threshold_checks_and_overrides() -> None:
    assert Threshold("duplicates", 0, "max").check(0) is True
    assert Threshold("duplicates", 0, "max").check(1) is False
    assert Threshold("delivery_rate", 0.8, "min").check(0.79) is False
    assert Threshold("delivery_rate", 0.8, "min").check(None) is None
    assert parse_threshold_override("delivery_rate=80%") == ("delivery_rate", 0.8)
    assert parse_threshold_override("latency_final_p95_ms=1500") == ("latency_final_p95_ms", 1500.0)
    assert parse_threshold_override("duplicates=off") == ("duplicates", None)
    with pytest.raises(ValueError, match="bad threshold"):
        parse_threshold_override("nonsense=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_threshold_override("duplicates=many")
    # expressions, as k6 writes them: any percentile of either latency, dotted names, strict operators
    assert parse_threshold_override("latency.final.p99<1500") == (
        "latency_final_p99_ms", Threshold("latency_final_p99_ms", 1500.0, "max", strict=True))
    assert parse_threshold_override("closes_1011.rate<=1%") == (
        "closes_1011_rate", Threshold("closes_1011_rate", 0.01, "max"))
    assert parse_threshold_override("latency.first_partial.max >= 5")[1] == Threshold(
        "latency_first_partial_max_ms", 5.0, "min")
    assert Threshold("x", 1500.0, "max", strict=True).check(1500.0) is False
    assert Threshold("x", 1500.0, "max").check(1500.0) is True
    for bad, token in (("latency.final.p98<1500", "'latency.final.p98'"), ("latency.final.p99", "NAME<VALUE"),
                       ("latency.final.p99<fast", "'fast' is not a number")):
        with pytest.raises(ValueError, match=token):
            parse_threshold_override(bad)
    th = apply_overrides(default_thresholds(), {"closes_1011_rate": None, "caller_1011_rate": 0.0})
    assert "closes_1011_rate" not in th and th["caller_1011_rate"] == Threshold("caller_1011_rate", 0.0, "max")
    # the defaults are the rollback triggers of docs/incidents.md
    d = default_thresholds()
    assert (d["duplicates"].limit, d["closes_1011_rate"].limit, d["latency_final_p95_ms"].limit,
            d["delivery_rate"].limit) == (0, 0.05, 2000, 0.8)


# ------------------------------------------------------------------------------- aggregation

def _lateness(values: list[float]) -> LatenessHistogram:
    h = LatenessHistogram()
    for v in values:
        h.add(v)
    return h


def _records() -> list[CallRecord]:
    ok = CallRecord("rtaaX-1", "normal", 0.0, 10.0, closes=[1000], frames_sent=100, audio_bytes_sent=57600,
                    audio_ms_sent=3600.0, final_audio_end_ms=3600.0, first_partial=[(1.0, 50.0)],
                    final=[(2.0, 100.0), (3.0, 200.0)], lateness=_lateness([1.0] * 100))
    cut = CallRecord("rtaaX-2", "normal", 1.0, 11.0, closes=[1011], frames_sent=50, audio_bytes_sent=28800,
                     audio_ms_sent=6000.0, final_audio_end_ms=2000.0, final=[(4.0, 300.0)],
                     failure="closed by server mid-call: 1011 boom", lateness=_lateness([2.0] * 50))
    bad_ok = CallRecord("rtaaX-3", "bad:malformed_json", 2.0, 3.0, closes=[1007], expected_closes=[1007])
    bad_wrong = CallRecord("rtaaX-4", "bad:oversize", 2.0, 3.0, closes=[1011], expected_closes=[1009])
    return [ok, cut, bad_ok, bad_wrong]


def _stats(records: list[CallRecord], provider: ProviderCounts | None) -> SoakStats:
    s = SoakStats(t0=0.0, duration_s=60.0)
    for r in records:
        s.call_started()
        s.add(CallRecord.from_dict(r.to_dict()))  # through the worker->master wire format
    s.set_provider(provider)
    return s


def test_summary_values_and_failing_thresholds() -> None:
    s = _stats(_records(), ProviderCounts(connections=3, duplicates=2, closes_1011=1, audio_bytes=80640, records=True,
                                          per_call={"rtaaX-1": [1, 57600], "rtaaX-2": [1, 23040]}))
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    assert doc["calls"]["started"] == 4 and doc["calls"]["failed"] == 2 and doc["calls"]["completed"] == 2
    assert doc["duplicates"] == 2
    assert doc["closes_1011"] == {"provider": 1, "caller": 1, "rate": 0.5}  # (1 + 1) / 4 calls
    assert doc["delivery_rate"] == 0.5  # 1 of the 2 normal calls covered its audio
    assert doc["audio"]["loss"] == pytest.approx(1 - 80640 / 86400)
    assert doc["latency_ms"]["final"]["p50"] == 200 and doc["latency_ms"]["final"]["max"] == 300
    assert doc["latency_ms"]["first_partial"]["count"] == 1
    assert doc["calls"]["bad_input_unexpected"] == 1  # oversize answered 1011 instead of 1009
    failed = {r["name"] for r in doc["thresholds"] if r["passed"] is False}
    assert failed == {"duplicates", "closes_1011_rate", "delivery_rate", "audio_loss", "bad_input_unexpected",
                      "failed_rate"}  # 2 of 4 calls failed > 10 %
    assert doc["verdict"] == "fail"
    assert doc["pacing"]["lateness_ms"]["count"] == 150


def test_unmeasured_default_thresholds_make_the_run_invalid_never_pass() -> None:
    s = _stats(_records()[:1], None)  # no provider stats: duplicates / audio loss not measurable
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["duplicates"]["status"] == "not measured" and rows["audio_loss"]["passed"] is None
    assert rows["delivery_rate"]["passed"] is True and rows["latency_final_p95_ms"]["value"] == 200
    assert doc["verdict"] == "invalid"
    assert any(r.startswith("duplicates: not measured: no provider evidence") and "-t duplicates=off" in r
               for r in doc["invalid_reasons"])
    # turned off by the user: shown as "off", the rest measured -> pass
    th = apply_overrides(default_thresholds(), {n: None for n in ("duplicates", *PROVIDER_RECORD_METRICS)})
    doc = s.summary(th, PacingLimits(25.0), off=("duplicates", *PROVIDER_RECORD_METRICS))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["duplicates"]["status"] == "off" and doc["verdict"] == "pass"
    # with the provider's per-connection records every default is measured
    full = _stats(_records()[:1], ProviderCounts(connections=1, duplicates=0, audio_bytes=57600, records=True,
                                                 per_call={"rtaaX-1": [1, 57600]}))
    doc = full.summary(default_thresholds(), PacingLimits(25.0))
    marks = {"results_repeated", "cross_talk_results"}  # this provider does not mark its text: no evidence can exist
    assert doc["verdict"] == "pass" and all(r["status"] == "pass" for r in doc["thresholds"] if r["name"] not in marks)
    assert {r["name"]: r["status"] for r in doc["thresholds"] if r["name"] in marks} == dict.fromkeys(marks, "off")


def test_every_latency_percentile_is_a_metric_and_rows_show_their_operator() -> None:
    s = _stats(_records()[:1], None)
    values = s.metrics()
    assert (values["latency_final_p50_ms"], values["latency_final_max_ms"], values["latency_first_partial_p90_ms"]) == (
        100, 200, 50)
    name, th = parse_threshold_override("latency.final.max<200")
    doc = s.summary(apply_overrides(default_thresholds(), {name: th}), PacingLimits(25.0))
    row = next(r for r in doc["thresholds"] if r["name"] == "latency_final_max_ms")
    assert (row["op"], row["value"], row["passed"]) == ("<", 200, False)  # 200 is not < 200


def test_text_mark_thresholds_judge_repeats_and_cross_talk_from_the_marks() -> None:
    def rec(call: str, conns: dict[str, int], repeated: int = 0) -> CallRecord:
        return CallRecord(call, "normal", 0.0, 10.0, closes=[1000], frames_sent=100, audio_bytes_sent=57600,
                          audio_ms_sent=3600.0, final_audio_end_ms=3600.0, final=[(2.0, 100.0)],
                          lateness=_lateness([1.0] * 100), marked_results=sum(conns.values()),
                          repeated_finals=repeated, mark_connections=conns)

    def provider(**kw) -> ProviderCounts:
        return ProviderCounts(connections=2, duplicates=0, audio_bytes=115200, records=True, text_mark=True,
                              per_call={"rtaaX-1": [1, 57600], "rtaaX-2": [1, 57600]}, **kw)

    owners = {7: "rtaaX-1", 8: "rtaaX-2"}
    clean = _stats([rec("rtaaX-1", {"7": 4}), rec("rtaaX-2", {"8": 3})], provider(connection_calls=owners))
    doc = clean.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert (rows["results_repeated"]["value"], rows["cross_talk_results"]["value"]) == (0, 0)
    assert doc["verdict"] == "pass" and doc["text_mark"]["marked_results"] == 7
    # call 2's feed carries 2 results of call 1's connection, and one final of its own twice
    bad = _stats([rec("rtaaX-1", {"7": 4}), rec("rtaaX-2", {"8": 3, "7": 2}, repeated=1)], provider(connection_calls=owners))
    doc = bad.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert (rows["results_repeated"]["value"], rows["cross_talk_results"]["value"]) == (1, 2)
    assert doc["verdict"] == "fail"
    # marks from connections nobody can attribute (an untagged target): cross-talk is unknown, never 0
    untagged = _stats([rec("rtaaX-1", {"7": 4})], provider(connection_calls={}))
    doc = untagged.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["cross_talk_results"]["passed"] is None and "cannot attribute" in rows["cross_talk_results"]["reason"]
    # the provider marks, but no marked text reached any feed: the target rewrites the text
    rewritten = _stats([rec("rtaaX-1", {})], provider(connection_calls=owners))
    doc = rewritten.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["results_repeated"]["passed"] is None and "no marked text reached" in rows["results_repeated"]["reason"]
    assert doc["verdict"] == "invalid"


def test_zero_completed_calls_fail_and_handshake_failures_stop_early() -> None:
    recs = [CallRecord(f"rtaaX-{i}", connected=False, failure="connect: HTTP 404") for i in range(3)]
    s = _stats(recs[:2], None)
    assert s.early_stop_reason(3) is None  # two calls are not yet a pattern
    s.add(recs[2])
    line = s.early_stop_reason(3)
    assert line and "HTTP 404" in line and "3 calls" in line and "rtaaX-0" in line
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert doc["verdict"] == "fail" and rows["completed_calls"]["status"] == "fail"
    assert rows["failed_rate"]["value"] == 1.0 and doc["failures"]["examples"]["connect: HTTP 404"] == "rtaaX-0"


def test_a_feed_in_a_foreign_schema_is_missing_evidence_not_zero_delivery() -> None:
    rec = _records()[0]
    rec.final, rec.first_partial, rec.final_audio_end_ms = [], [], None
    rec.feed_messages, rec.feed_unrecognised = 12, 12
    s = _stats([rec], ProviderCounts(connections=1, duplicates=0, audio_bytes=57600, records=True,
                                     per_call={"rtaaX-1": [1, 57600]}))
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["delivery_rate"]["status"] == "not measured" and rows["delivery_rate"]["value"] is None
    assert "12 messages arrived" in rows["delivery_rate"]["reason"] and "--feed-map" in rows["delivery_rate"]["reason"]
    assert doc["verdict"] == "invalid"


def test_untagged_provider_connections_are_unattributed_and_duplicates_unmeasured() -> None:
    t0 = 1000.0
    conns = [{"interaction": None, "opened_at": t0 + i, "closed_at": t0 + i + 2, "close_code": 1011,
              "close_reason": NET0001, "audio_bytes": 320, "audio_seconds": 0.02, "keepalives": 0} for i in range(5)]
    conns.append({"interaction": "x-old", "opened_at": t0 - 50, "closed_at": t0 - 40, "close_code": 1000})  # before
    conns.append({"interaction": None, "opened_at": t0 + 30, "closed_at": None, "audio_bytes": 0})  # after the end
    prov = provider_counts_from_emulator({"connections": conns, "interactions": {}}, "rtaaX-", since=t0,
                                         after=t0 + 20)
    assert (prov.unattributed, prov.open_now, prov.opened_after, prov.connections) == (6, 1, 1, 0)
    assert prov.causes_1011 == {"starvation": 5}  # 20 ms of audio in a 2 s life
    s = _stats(_records()[:1], prov)
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert rows["duplicates"]["status"] == "not measured"
    assert "attributable to 0 of this run's 1 calls (6 unattributed" in rows["duplicates"]["reason"]
    assert rows["unattributed_connections"]["status"] == "fail" and rows["provider_open_at_end"]["value"] == 1
    assert rows["provider_opened_after_end"]["value"] == 1 and doc["verdict"] == "fail"
    assert doc["provider"]["calls_reached"] == 0 and doc["provider"]["calls_with_audio"] == 1


def test_1011_causes_idle_hold_without_keepalive_and_injected_faults() -> None:
    base = {"interaction": "rtaaX-1", "opened_at": 0.0, "closed_at": 20.0, "close_code": 1011}
    hold = dict(base, close_reason=NET0001, audio_seconds=10.0, keepalives=0)
    assert classify_1011(hold, 10_000.0) == "idle, no KeepAlive"
    assert classify_1011(dict(hold, keepalives=3), 10_000.0) == "idle"
    assert classify_1011(dict(hold, audio_seconds=1.0), 27_500.0) == "starvation"
    assert classify_1011(dict(base, close_reason=INTERNAL_FAULT), None) == "injected fault"
    assert classify_1011(dict(base, close_reason="boom"), None) == "other"


def test_the_audio_a_caller_sent_during_a_connection_excludes_its_holds() -> None:
    """A connection that timed out during a hold got all the audio sent in its life: not starvation."""
    window = SendWindow(100.0, 110.0, ((101.0, 104.0),))
    assert window.audio_ms_between(100.0, 102.5) == pytest.approx(1000.0)  # 1 s sent, then the hold
    assert window.audio_ms_between(99.0, 120.0) == pytest.approx(7000.0)
    assert window.audio_ms_between(104.0, 106.0) == pytest.approx(2000.0)
    stats = {"connections": [{"interaction": "rtaaX-1", "opened_at": 100.0, "closed_at": 102.5, "close_code": 1011,
                              "close_reason": NET0001, "audio_seconds": 1.0, "keepalives": 0, "audio_bytes": 16000}]}
    held = provider_counts_from_emulator(stats, "rtaaX-", send_windows={"rtaaX-1": window})
    assert held.causes_1011 == {"idle, no KeepAlive": 1}
    starved = provider_counts_from_emulator(stats, "rtaaX-", send_windows={"rtaaX-1": SendWindow(100.0, 110.0)})
    assert starved.causes_1011 == {"starvation": 1}  # 1 s of 2.5 s sent reached the provider


def test_reconnecting_calls_are_reported_apart_from_audio_loss() -> None:
    recs = _records()[:1]
    prov = ProviderCounts(connections=2, duplicates=0, audio_bytes=60000, records=True,
                          per_call={"rtaaX-1": [2, 60000]})  # a replay after a reconnect: more than sent
    doc = _stats(recs, prov).summary(default_thresholds(), PacingLimits(25.0))
    assert doc["audio"]["reconnecting_calls"] == 1 and doc["audio"]["loss"] is None
    rows = {r["name"]: r for r in doc["thresholds"]}
    assert "reconnected" in rows["audio_loss"]["reason"] and doc["verdict"] == "invalid"


def test_generator_lateness_makes_the_run_invalid_not_passed_or_failed() -> None:
    slow = _records()[0]
    slow.lateness = _lateness([30.0] * 100)  # the generator was 30 ms late on every frame
    s = _stats([slow], ProviderCounts(duplicates=5))  # a breach too: invalid still wins
    doc = s.summary(default_thresholds(), PacingLimits(25.0))
    assert doc["verdict"] == "invalid" and "lateness p99" in doc["invalid_reasons"][0]
    s2 = _stats([_records()[0]], None)
    s2.generator_cpu_warning = True
    assert s2.summary(default_thresholds(), PacingLimits(25.0))["verdict"] == "invalid"
    assert SoakStats().summary(default_thresholds(), PacingLimits())["verdict"] == "invalid"  # nothing measured


def test_provider_counts_only_this_runs_interactions() -> None:
    doc = {"interactions": {"rtaaA-1": {"connections": 2, "duplicates": 1}, "other-1": {"connections": 5, "duplicates": 4}},
           "connections": [{"interaction": "rtaaA-1", "close_code": 1011, "audio_bytes": 100},
                           {"interaction": "rtaaA-1", "close_code": 1000, "audio_bytes": 50},
                           {"interaction": "other-1", "close_code": 1011, "audio_bytes": 999}]}
    c = provider_counts_from_emulator(doc, "rtaaA-")
    assert (c.connections, c.duplicates, c.closes_1011, c.audio_bytes) == (2, 1, 1, 150)


def test_timeline_active_calls_and_latency_buckets() -> None:
    s = SoakStats(t0=100.0, duration_s=10.0)  # 1 s buckets
    s.add(CallRecord("a", started_at=100.2, ended_at=103.5, final=[(101.5, 120.0)]))
    s.add(CallRecord("b", started_at=101.1, ended_at=102.2, failure="x", final=[(101.7, 80.0)]))
    tl = s.timeline.series()
    assert tl["bucket_s"] == 1 and tl["started"] == [1, 1, 0, 0] and tl["ended"] == [0, 0, 1, 1]
    assert tl["active"] == [1, 2, 2, 1] and tl["failed"] == [0, 0, 1, 0]
    assert tl["final_p50"][1] == 80 and tl["final_max"][1] == 120 and tl["final_p50"][0] is None


def test_provider_counts_from_target_metrics_use_the_increase_over_the_run() -> None:
    before = ('# TYPE rtaa_provider_closes counter\nrtaa_provider_closes_total{code="1011"} 2.0\n'
              'rtaa_provider_closes_total{code="1000"} 7.0\n'
              '# TYPE rtaa_provider_connections_opened counter\nrtaa_provider_connections_opened_total 10.0\n')
    after = before.replace(" 2.0", " 5.0").replace("total 10.0", "total 14.0")
    c = provider_counts_from_metrics(before, after)
    assert (c.closes_1011, c.connections, c.duplicates, c.audio_bytes) == (3, 4, None, None)  # no duplicates metric
    with_dup = after + "# TYPE rtaa_provider_duplicate_connections counter\nrtaa_provider_duplicate_connections_total 1.0\n"
    assert provider_counts_from_metrics(before, with_dup).duplicates == 1
    s = _stats(_records()[:1], c)
    rows = {r["name"]: r for r in s.summary(default_thresholds(), PacingLimits())["thresholds"]}
    assert rows["duplicates"]["passed"] is None and rows["closes_1011_rate"]["value"] == 3.0


# ----------------------------------------------------------------------------------- target memory

def test_rss_is_read_from_prometheus_text_only_under_its_exact_name() -> None:
    text = ("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\n"
            "process_resident_memory_bytes_extra 1.0\n"
            "process_resident_memory_bytes 1.234e+08\n")
    assert rss_from_metrics(text) == 1.234e8
    assert rss_from_metrics("rtaa_calls_total 3.0\n") is None
    assert rss_from_metrics(None) is None and rss_from_metrics("process_resident_memory_bytes oops\n") is None


def test_memory_growth_is_the_least_squares_slope_over_the_steady_window_only() -> None:
    mem = TargetMemory("http://127.0.0.1:1/metrics")
    rng = random.Random(7)
    for i in range(400):  # 800 s: a 60 s ramp to 100 MB, then +36 MB/h (0.01 MB/s) with +-0.5 MB noise
        t = 2.0 * i
        base = 100.0 * min(t, 60.0) / 60.0 + 0.01 * max(0.0, t - 60.0)
        mem.add(t, (base + rng.uniform(-0.5, 0.5)) * 1e6)
    assert mem.growth_mb_per_h(60.0, 800.0) == pytest.approx(36.0, abs=2.0)
    assert mem.growth_mb_per_h(0.0, 800.0) > 100.0  # the ramp is why the window starts after it
    assert mem.growth_mb_per_h(60.0, 100.0) is None  # under a minute: no verdict
    doc = mem.summary(60.0, 800.0)
    assert doc["samples"] == 400 and doc["rss_mb"]["max"] >= doc["rss_mb"]["last"] > 100.0
    assert doc["second_half_growth_mb_per_h"] == pytest.approx(36.0, abs=4.0)  # a leak: same slope late
    assert len(doc["series"]["t"]) <= 600 and doc["series"]["t"][0] == 0.0


def test_memory_growth_threshold_fails_a_leaking_run_and_is_off_by_default() -> None:
    assert "memory_growth_mb_per_h" not in default_thresholds()
    s = _stats(_records()[:1], None)
    s.memory = TargetMemory("m")
    for i in range(100):
        s.memory.add(float(i), 50e6 + i * 1e5)  # +0.1 MB/s = 360 MB/h
    s.memory_window_s = (0.0, 100.0)
    th = apply_overrides(default_thresholds(), {"memory_growth_mb_per_h": 50.0})
    doc = s.summary(th, PacingLimits(25.0))
    row = next(r for r in doc["thresholds"] if r["name"] == "memory_growth_mb_per_h")
    assert row["passed"] is False and row["value"] == pytest.approx(360.0)
    assert doc["verdict"] == "fail" and doc["target_memory"]["growth_mb_per_h"] == pytest.approx(360.0)


def test_second_half_growth_tells_levelling_off_from_a_leak() -> None:
    mem = TargetMemory("m")
    for i in range(0, 3600, 2):  # 1 - exp(-t / 600): fast early growth that levels off
        mem.add(float(i), (60.0 + 20.0 * (1.0 - math.exp(-i / 600.0))) * 1e6)
    doc = mem.summary(0.0, 3600.0)
    assert doc["growth_mb_per_h"] > 3 * doc["second_half_growth_mb_per_h"] > 0


def test_provider_reconnects_429s_and_1011s_are_plotted_over_time() -> None:
    t0 = 1000.0
    conns = [{"interaction": "rtaaX-1", "opened_at": t0 + 1, "closed_at": t0 + 4, "close_code": 1011,
              "close_reason": NET0001, "audio_seconds": 3.0, "keepalives": 1, "audio_bytes": 48000},
             {"interaction": "rtaaX-1", "opened_at": t0 + 4.5, "closed_at": t0 + 9, "close_code": 1000,
              "audio_seconds": 4.0, "keepalives": 0, "audio_bytes": 64000},
             {"interaction": "rtaaX-2", "opened_at": t0 + 2, "closed_at": t0 + 9, "close_code": 1000,
              "audio_seconds": 7.0, "keepalives": 0, "audio_bytes": 112000}]
    doc = {"connections": conns, "rejections": [{"at": t0 - 5, "status": 429}, {"at": t0 + 6.2, "status": 429},
                                                {"at": t0 + 6.5, "status": 401}]}
    counts = provider_counts_from_emulator(doc, "rtaaX-", since=t0)
    assert counts.reconnects == 1
    assert counts.event_times == {"connection": [t0 + 1, t0 + 4.5, t0 + 2], "unattributed": [], "reconnect": [t0 + 4.5],
                                  "429": [t0 + 6.2], "1011": [t0 + 4], "1011 idle": [t0 + 4]}
    stats = SoakStats(t0=t0, duration_s=10.0)
    stats.add(CallRecord("rtaaX-1", started_at=t0 + 1, ended_at=t0 + 9, audio_bytes_sent=112000, audio_ms_sent=7000.0))
    stats.set_provider(counts)
    stats.set_provider(counts)  # a second snapshot replaces the first: nothing counted twice
    tl = stats.summary(default_thresholds(), PacingLimits(25.0))["timeline"]
    assert tl["bucket_s"] == 1.0
    assert tl["provider"]["reconnect"][4] == 1 and sum(tl["provider"]["reconnect"]) == 1
    assert tl["provider"]["429"][6] == 1 and sum(tl["provider"]["429"]) == 1
    assert tl["provider"]["1011"][4] == 1
    page = html_report(stats.summary(default_thresholds(), PacingLimits(25.0)))
    assert "Provider-side events, per 1 s bucket" in page and '"name":"1011: idle"' in page


def test_untagged_connections_are_attributed_by_their_watermark() -> None:
    """A connection with no id of the run whose audio carried a call's mark is that call's: counted in
    its per-call audio and its duplicates (opened while another of the call was open); connections with
    neither tag nor a mark of the run, or another run's mark, stay unattributed."""
    from rtaa_cli.soak.stats import watermark_note
    from rtaa_cli.watermark import call_hex

    t0 = 1000.0

    def wm(call):
        return {"call": call_hex(call), "packets": 10, "first": 0, "last": 9, "missing": 0, "repeated": 0}

    conns = [
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 100, "watermark": wm("rtaaX-1")},
        {"interaction": None, "opened_at": t0 + 2, "closed_at": t0 + 6, "audio_bytes": 50, "watermark": wm("rtaaX-1")},
        {"interaction": None, "opened_at": t0 + 7, "closed_at": t0 + 8, "audio_bytes": 30, "watermark": wm("rtaaX-1")},
        {"interaction": "rtaaX-2", "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 70, "watermark": wm("rtaaX-2")},
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 20, "watermark": None},
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 20, "watermark": wm("other")},
    ]
    prov = provider_counts_from_emulator({"connections": conns, "interactions": {"rtaaX-2": {"duplicates": 0}}},
                                         "rtaaX-", since=t0, call_sids=["rtaaX-1", "rtaaX-2"])
    assert (prov.connections, prov.attributed_by_tag, prov.attributed_by_watermark) == (4, 1, 3)
    assert (prov.unattributed, prov.unattributed_audio_bytes, prov.marked_connections) == (2, 40, 4)
    assert prov.per_call == {"rtaaX-1": [3, 180], "rtaaX-2": [1, 70]}
    assert prov.duplicates == 1  # the second rtaaX-1 connection opened while the first was open
    # without the run's call ids (--no-watermark) the same document attributes by tag only
    plain = provider_counts_from_emulator({"connections": conns, "interactions": {}}, "rtaaX-", since=t0)
    assert (plain.connections, plain.unattributed, plain.attributed_by_watermark) == (1, 5, 0)
    assert watermark_note(prov, True, True) is None
    assert watermark_note(plain, False, True) is None
    assert "watermark not found: the target changes the audio" in watermark_note(plain, True, True)


def test_connections_whose_lsb_code_did_not_survive_are_attributed_by_the_robust_mark() -> None:
    """A connection whose audio lost the LSB code (resampled to 16 kHz) but carried a call's robust mark
    (``robust_mark``) is that call's, counted apart (``attributed_by_robust_mark``); its audio is compared
    by duration (its bytes are at 16 kHz); the LSB code wins where both were found; the note says which."""
    from rtaa_cli.soak.stats import SoakStats, watermark_note
    from rtaa_cli.watermark import call_hex

    t0 = 1000.0
    lsb = {"call": call_hex("rtaaY-2"), "packets": 10, "first": 0, "last": 9, "missing": 0, "repeated": 0,
           "runs": [[0, 10]], "overflow": False}
    conns = [
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 64000, "audio_seconds": 2.0,
         "watermark": None, "robust_mark": {"call": call_hex("rtaaY-1"), "z": 12.0, "found_after_s": 1.0}},
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 1920, "audio_seconds": 0.12,
         "watermark": lsb, "robust_mark": {"call": call_hex("rtaaY-2"), "z": 9.0, "found_after_s": 0.1}},
        {"interaction": None, "opened_at": t0 + 1, "closed_at": t0 + 5, "audio_bytes": 500, "audio_seconds": 0.1,
         "watermark": None, "robust_mark": {"call": call_hex("someone else"), "z": 9.0, "found_after_s": 0.1}},
    ]
    prov = provider_counts_from_emulator({"connections": conns, "interactions": {}}, "rtaaY-", since=t0,
                                         call_sids=["rtaaY-1", "rtaaY-2"])
    assert (prov.connections, prov.attributed_by_robust_mark, prov.attributed_by_watermark, prov.unattributed) == (2, 1, 1, 1)
    assert prov.per_call == {"rtaaY-1": [1, 0], "rtaaY-2": [1, 1920]} and prov.robust_audio_s == {"rtaaY-1": 2.0}
    assert [r.get("by_robust_mark", False) for r in prov.conn_records["rtaaY-1"]] == [True]
    note = watermark_note(prov, True, True)
    assert note is not None and "LSB code not found on 1 connection" in note and "robust mark" in note
    stats = SoakStats()
    stats.audio_sent_by_call = {"rtaaY-1": (32000, 2000.0), "rtaaY-2": (1920, 120.0)}  # 8 kHz: 2 s and 0.12 s
    stats.set_provider(prov)
    audio = stats.audio_accounting()
    assert audio["lost_bytes"] == 0 and audio["measured_calls"] == 2, audio
