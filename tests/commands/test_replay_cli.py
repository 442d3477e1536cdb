"""`rtaa replay` through the real console script (a subprocess) against the recording server."""
from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtaa_cli.commands.replay import parse_custom, parse_dtmf, parse_headers, parse_holds
from rtaa_cli.errors import RtaaError
from rtaa_cli.protocols.exotel import Dtmf, Media, Start, Stop
from helpers.cli import assert_one_line_error, rtaa
from helpers.paths import FIXTURES
from helpers.recording_server import BOUND_S, RecordingServer

def test_json_to_stdout_is_only_json_and_carries_the_contract() -> None:
    with RecordingServer(transcript_every=25) as server:
        proc = rtaa("replay", str(FIXTURES / "call.wav"), "--url", server.url("/media", "exo:pw"),
                    "--speed", "0", "--call-sid", "CA-cli", "--stream-sid", "ST-cli", "--custom", "agent=7",
                    "--custom", "queue=sales", "--header", "X-Env: ci", "--dtmf", "9@1.0", "--hold", "0.5@2",
                    "--transcripts", f"ws://127.0.0.1:{server.port}", "--wait-final", "5", "--json")
        (conn,) = server.wait_for_connections(1)
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert report["frames_sent"] == len(conn.of(Media)) == 765
    assert report["bytes_sent"] == 765 * 576 and report["audio_ms_sent"] == pytest.approx(765 * 36)
    assert report["duration_s"] > 0
    assert set(report["pacing"]) >= {"late_p50_ms", "late_p99_ms", "late_max_ms", "drift_ms"}
    assert report["close"]["code"] == 1000 and report["clean"] is True
    assert len(report["transcripts"]) == 765 // 25 + 1
    assert all(t["latency_ms"] is not None for t in report["transcripts"])
    assert report["latency"]["final"]["count"] >= 1
    assert report["dtmf_sent"] == 1 and report["holds_done"] == 1
    assert "pw" not in report["url"]

    start = conn.of(Start)[0]
    assert (start.call_sid, start.stream_sid) == ("CA-cli", "ST-cli")
    assert start.custom_parameters == {"agent": "7", "queue": "sales"}
    assert conn.headers["x-env"] == "ci"
    assert conn.headers["authorization"] == "Basic " + base64.b64encode(b"exo:pw").decode()
    assert conn.of(Dtmf)[0].digit == "9" and isinstance(conn.events[-1], Stop)


def test_human_output_prints_transcripts_with_latency_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    with RecordingServer(transcript_every=100) as server:
        proc = rtaa("replay", str(FIXTURES / "hold.wav"), "--url", server.url(), "--speed", "0",
                    "--transcripts", server.url("/v1/transcripts"), "--json", str(out))
        server.wait_for_connections(1)
    assert proc.returncode == 0, proc.stderr
    assert "final" in proc.stdout and "partial" in proc.stdout and " ms  words up to" in proc.stdout
    assert "1000 NORMAL" in proc.stdout and "last frame padded" in proc.stdout
    report = orjson.loads(out.read_bytes())
    assert report["close"]["code"] == 1000 and report["frame_bytes"] == 576


def test_server_1011_mid_stream_exits_1_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    with RecordingServer(close_after_media=10, close_code=1011, close_reason="worker crashed") as server:
        proc = rtaa("replay", str(FIXTURES / "call.wav"), "--url", server.url(), "--quiet", "--json", str(out))
        server.wait_for_connections(1)
    assert_one_line_error(proc, 1, "1011", "worker crashed", "mid-stream")
    report = orjson.loads(out.read_bytes())
    assert report["close"] == {"code": 1011, "reason": "worker crashed", "by": "server"}
    assert report["clean"] is False and report["stop_sent"] is False


def test_connection_refused_exits_1_with_one_line_and_json_still_written() -> None:
    with RecordingServer() as server:
        url = server.url()
    # "--json" followed by another option means stdout
    proc = rtaa("replay", str(FIXTURES / "call.wav"), "--json", "--quiet", "--url", url)
    assert_one_line_error(proc, 1, "connection refused")
    report = orjson.loads(proc.stdout)
    assert report["connected"] is False and report["frames_sent"] == 0 and report["close"]["code"] is None


@pytest.mark.parametrize("args,needle", [
    (["missing.wav"], "no such file"),
    (["{fixtures}/SOURCES.md"], "not a readable audio file"),
    (["{fixtures}/call.wav", "--sample-rate", "44100"], "--sample-rate 44100"),
    (["{fixtures}/call.wav", "--dtmf", "X@1"], "not a DTMF key"),
    (["{fixtures}/call.wav", "--url", "http://example.invalid/"], "ws:// or wss://"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                         needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{fixtures}", str(FIXTURES)) for a in args]
    if "--url" not in argv:
        argv += ["--url", "ws://127.0.0.1:9/never-contacted"]
    assert_one_line_error(rtaa("replay", *argv), 2, needle)


@pytest.mark.parametrize("parse,value,needle", [
    (parse_dtmf, "5", "DIGIT@SECONDS"),
    (parse_dtmf, "55@1", "not a DTMF key"),
    (parse_dtmf, "5@-1", "seconds must be >= 0"),
    (parse_holds, "ten@1", "not a number of seconds"),
    (parse_holds, "10@nan", "seconds must be >= 0"),
    (parse_headers, "NoColon", '"Name: value"'),
    (parse_headers, "Bad Name: x", "cannot contain spaces"),
    (parse_custom, "novalue", "KEY=VALUE"),
    (parse_custom, "=v", "KEY=VALUE"),
])
def test_option_parsers_reject_bad_values(parse: Any, value: str, needle: str) -> None:
    with pytest.raises(RtaaError, match=re.escape(needle)) as info:
        parse([value])
    assert info.value.exit_code == 2


def test_option_parsers_accept_good_values() -> None:
    assert parse_dtmf(["5@3.5", "#@0"]) == [("5", 3.5), ("#", 0.0)]
    assert parse_holds(["15@4"]) == [(15.0, 4.0)]
    assert parse_headers(["X-Env:  staging "]) == [("X-Env", "staging")]
    assert parse_custom(["a=b=c"]) == {"a": "b=c"}


def test_bound_is_sane() -> None:
    assert BOUND_S <= 60
