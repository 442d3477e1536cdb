"""Server-sent-event transcript feeds (rtaa_cli/feeds/sse_feed.py): ``--transcripts http://...`` against
the third-party pipeline of tests/thirdparty/target.py in its ``--sse`` mode (untagged Deepgram
connections to the real emulator; transcripts as ``event: partial|final`` + a JSON ``data`` in its own
schema, one stream per call). Replay (asyncio reader) and soak (gevent reader) count exactly the events
the target says it published (its ``/published`` ground truth)."""
from __future__ import annotations

import subprocess

import orjson
import pytest

from rtaa_cli.feeds.sse_feed import event_message
from helpers.thirdparty import SSE_FEED_MAP as FEED_MAP
from helpers.thirdparty import RTAA, replay_counted, soak, start, stop
from helpers.paths import CALL_WAV

CALL = CALL_WAV


@pytest.fixture(scope="module")
def targets():
    """The pipeline on an emulator that marks its results' text (the default), on one that does not, and
    two broken variants: every result published twice; results published on another call's stream."""
    procs: list[subprocess.Popen] = []
    try:
        yield {"marked": start(procs), "plain": start(procs, text_mark=False),
               "dup": start(procs, "--publish-times", "2"),
               "crosstalk": start(procs, "--cross-talk", "--tag")}
    finally:
        stop(procs)


@pytest.fixture(scope="module")
def target(targets):
    return targets["marked"]


def test_event_names_become_a_field_a_mapping_can_use() -> None:
    assert event_message("final", '{"text": "hi"}') == {"text": "hi", "event": "final"}
    assert event_message("message", '{"text": "hi"}') == '{"text": "hi"}'  # the default name adds nothing
    assert event_message("final", '{"event": "own"}') == '{"event": "own"}'  # never overwrites a field
    assert event_message("final", "not json") == "not json"


POLL_MAP = "text=text,is_final=type==final,seq=seq"  # the polled answer keeps the type in a field


def _poll_url(target) -> str:
    return target["sse"].replace("/events/", "/results/")


def test_a_polled_json_feed_yields_each_message_once() -> None:
    from rtaa_cli.feeds.poll import JsonPoll

    p = JsonPoll()
    assert p.update(b"[]") == []
    assert p.update(b'[{"t": 1}]') == [{"t": 1}]
    assert p.update(b'{"results": [{"t": 1}, {"t": 2}], "n": 2}') == [{"t": 2}]  # an object with one list
    assert p.update(b'[{"t": 1}, {"t": 2}]') == []
    assert p.update(b'[{"t": 9}]') == [{"t": 9}] and p.resets == 1  # shorter: the server restarted its list
    assert p.update(b"not json") == [] and p.update(b'{"a": [], "b": []}') == [] and p.bad == 2


def test_replay_reads_a_foreign_json_polling_feed(target, tmp_path) -> None:
    doc, _finals = replay_counted(target, _poll_url(target), POLL_MAP, "CA-poll-replay", tmp_path)
    assert doc["repeated_finals"] == 0  # each polled message once


def test_soak_reads_a_foreign_json_polling_feed(target, tmp_path) -> None:
    r, doc, mine = soak(target, _poll_url(target), POLL_MAP, tmp_path)
    assert doc["calls"]["failed"] == 0, (doc["calls"], r.stderr[-2000:])
    assert doc["feed"]["messages"] == sum(c["events"] for c in mine.values()) > 0 and doc["feed"]["unrecognised"] == 0
    assert doc["text_mark"]["repeated_finals"] == 0 and doc["delivery_rate"] == 1.0
    assert doc["latency_ms"]["final"]["count"] == sum(c["finals"] for c in mine.values())


@pytest.mark.skipif(not CALL.exists(), reason="fixtures/audio/call.wav missing")
def test_replay_reads_a_foreign_sse_feed(target, tmp_path) -> None:
    doc, finals = replay_counted(target, target["sse"], FEED_MAP, "CA-sse-replay", tmp_path)
    # the emulator's text mark in every event: each final timed although the feed carries no offsets
    assert doc["marked_results"] == doc["feed_messages"] and doc["repeated_finals"] == 0
    assert all(t["audio_end_ms"] is not None for t in finals), finals[:3]


def test_a_wrong_http_feed_url_is_a_clear_error(target, tmp_path) -> None:
    base = target["sse"].split("/events/")[0]
    for url, why in ((base + "/nosuch/{call_sid}", "HTTP 404"), (base + "/published", "the JSON answer is not a list of messages")):
        r = subprocess.run([*RTAA, "replay", str(CALL), "--url", target["target"], "--transcripts", url,
                            "--speed", "0", "--quiet", "--json"], capture_output=True, text=True, timeout=120)
        assert why in r.stdout + r.stderr and "Traceback" not in r.stderr, (r.stdout[-1500:], r.stderr[-1500:])


def _soak(target, tmp_path) -> tuple[subprocess.CompletedProcess, dict, dict[str, dict[str, int]]]:
    r, doc, mine = soak(target, target["sse"], FEED_MAP, tmp_path)
    calls = doc["calls"]
    assert calls["completed"] == calls["started"] and calls["failed"] == 0, (calls, r.stderr[-2000:])
    assert doc["feed"]["messages"] == sum(c["events"] for c in mine.values()) > 0, (doc["feed"], mine)
    assert doc["feed"]["unrecognised"] == 0
    return r, doc, mine


def test_soak_times_a_foreign_feed_by_the_text_mark(target, tmp_path) -> None:
    """The feed has no audio offsets, but each result's text carries the emulator's mark: latency and
    delivery are measured, every final is matched once, and no result is another call's."""
    _r, doc, mine = _soak(target, tmp_path)
    assert doc["text_mark"]["marked_results"] == sum(c["events"] for c in mine.values())  # every event matched
    assert doc["text_mark"]["repeated_finals"] == 0
    assert doc["delivery_rate"] == 1.0 and doc["finals_without_offsets_calls"] == 0
    final = doc["latency_ms"]["final"]
    assert final["count"] == sum(c["finals"] for c in mine.values()) and 0 <= final["p50"] < 1000, final
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["results_repeated"]["value"] == 0 and rows["delivery_rate"]["passed"] is True
    # untagged connections, attributed by the audio watermark: each result is its own call's
    assert rows["cross_talk_results"]["value"] == 0 and rows["cross_talk_results"]["passed"] is True
    assert doc["provider"]["attributed_by_watermark"] == doc["calls"]["started"]


def test_soak_without_a_text_mark_says_the_feed_has_no_offsets(targets, tmp_path) -> None:
    r, doc, _mine = _soak(targets["plain"], tmp_path)
    calls = doc["calls"]
    # Its finals carry no audio offsets: delivery and latency are unknown (INVALID, with the reason),
    # never "delivery 0" (FAIL) nor a pass.
    assert doc["delivery_rate"] is None and doc["finals_without_offsets_calls"] == calls["started"], doc["delivery_rate"]
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert "carry no audio offsets" in rows["delivery_rate"]["reason"]
    assert "carry no audio offsets" in rows["latency_final_p95_ms"]["reason"]
    assert rows["delivery_rate"]["passed"] is None and rows["latency_final_p95_ms"]["passed"] is None
    assert rows["results_repeated"]["status"] == "off"  # this emulator does not mark: no evidence can exist
    # (the target's Deepgram connections are untagged: the provider-side rows are issue 11's watermark's)
    assert {n for n, row in rows.items() if row["passed"] is False} <= {"unattributed_connections", "calls_unreached_rate"}
    assert doc["verdict"] != "pass" and r.returncode != 0


def test_soak_counts_results_published_twice(targets, tmp_path) -> None:
    _r, doc, mine = _soak(targets["dup"], tmp_path)
    published_finals = sum(c["finals"] for c in mine.values())
    rows = {row["name"]: row for row in doc["thresholds"]}
    # every final arrived twice: one of each pair is a repeat (exactly the target's ground truth)
    assert rows["results_repeated"]["value"] == published_finals // 2 > 0 and rows["results_repeated"]["passed"] is False
    assert doc["verdict"] == "fail"


def test_soak_catches_results_on_another_calls_feed(targets, tmp_path) -> None:
    _r, doc, mine = _soak(targets["crosstalk"], tmp_path)
    foreign = sum(c["foreign"] for c in mine.values())
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert foreign > 0, mine  # the calls overlapped, so the target did misroute results
    assert rows["cross_talk_results"]["value"] == foreign and rows["cross_talk_results"]["passed"] is False, rows
    assert doc["verdict"] == "fail"


def _smoke(target, tmp_path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    out = tmp_path / "smoke.json"
    r = subprocess.run([*RTAA, "smoke", "--url", target["target"], "--health", "", "--transcripts", target["sse"],
                        "--feed-map", FEED_MAP, "--length", "4", "--wait-final", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    doc = orjson.loads(out.read_bytes())
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["transcript_received"]["passed"] is True, (rows, r.stderr[-2000:])
    return r, doc, rows


def test_smoke_times_a_foreign_feed_by_the_text_mark(target, tmp_path) -> None:
    _r, doc, rows = _smoke(target, tmp_path)
    assert rows["latency_final_p95_ms"]["passed"] is True and 0 <= rows["latency_final_p95_ms"]["value"] < 1000


def test_smoke_without_a_text_mark_says_why_latency_is_unknown(targets, tmp_path) -> None:
    r, doc, rows = _smoke(targets["plain"], tmp_path)
    assert rows["latency_final_p95_ms"]["passed"] is None
    assert "finals arrived but carry no audio offsets" in rows["latency_final_p95_ms"]["reason"]
    assert doc["verdict"] == "invalid" and r.returncode == 2
