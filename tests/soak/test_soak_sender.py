"""The soak caller's frame scheduler (rtaa_cli.call.frame_scheduler) end to end, in a gevent-patched
subprocess (tests/helpers/soak_sender_child.py; Locust's patching must stay out of pytest) against a real
websockets server on 127.0.0.1:

* paced calls put exactly StreamEncoder's bytes of their (watermarked, or with --no-watermark raw)
  audio on the wire, every frame, in order, on time; a
  stream the scheduler may not write to (as over TLS) hands every frame back and still does;
* a server that stops reading until the caller's socket buffer is full: partial writes are
  finished under websockets' lock, nothing is lost or interleaved;
* a server that closes mid-call (1011) fails the call with its code and reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import HELPERS

CHILD = str(HELPERS / "soak_sender_child.py")


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    procs = {case: subprocess.Popen([sys.executable, CHILD, case], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for case in ("paced", "stall", "close")}
    out = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0 and lines, stderr[-3000:]
        out[case] = json.loads(lines[-1])
    return out


def test_paced_calls_send_the_codecs_bytes_on_schedule(results) -> None:
    r = results["paced"]
    assert [c["call_sid"] for c in r["calls"]] == ["CFAST1", "CFAST2", "SLOW1"]
    for call in r["calls"]:
        assert call["failure"] is None
        assert call["streams"] == 1 and call["closes"] == [1000]  # one stream opened, closed normally
        assert call["frames_sent"] == call["received_media"] == call["lateness_count"] == 30
        assert call["audio_bytes_sent"] == 30 * 576
        assert call["identical"] is True and call["payload_ok"] is True
        # marked calls carry their call's watermark (not the raw frames); --no-watermark sends them as is
        assert call["marked_differs"] is call["watermark"] is (call["call_sid"] != "CFAST2")
        assert call["last"].startswith('{"event":"stop","sequence_number":"32"')
        # drift-free: the last frame is not later than generous CI noise (a timer per frame would drift)
        assert call["late_max_ms"] < 150 and abs(call["drift_ms"]) < 150
    # the call greenlets sent connected/start/stop (3 x 3) and every frame of the TLS-like stream (30)
    assert r["counts"] == {"send": 9 + 30, "flush": 0}


def test_a_stalled_server_gets_every_frame_once_and_in_order(results) -> None:
    r = results["stall"]
    (call,) = r["calls"]
    assert call["failure"] is None
    assert call["frames_sent"] == call["received_media"] == 200
    assert call["identical"] is True and call["payload_ok"] is True
    assert call["last"].startswith('{"event":"stop","sequence_number":"202"')
    # the socket buffer did fill: frames went back to the call greenlet (partial: flushed; none: sent)
    assert r["counts"]["flush"] + r["counts"]["send"] - 3 > 0


def test_a_server_close_mid_call_is_reported_with_its_code(results) -> None:
    (call,) = results["close"]["calls"]
    assert call["failure"] == "closed by server mid-call: 1011 provider failed" and call["closes"] == [1011]
    assert call["frames_sent"] == call["received_media"] == 5
    assert call["identical"] is True


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_a_masked_final_text_frame_websockets_parses(n: int) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from rtaa_cli.internals import text_frame

    payload = bytes(i % 251 for i in range(n))
    wires = [text_frame(payload) for _ in range(3)]
    for wire in wires:
        reader = StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        parser = Frame.parse(reader.read_exact, mask=True)  # mask=True: a server reading a client's frame
        with pytest.raises(StopIteration) as done:
            next(parser)
        frame = done.value.value
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
        assert reader.at_eof()
    # a fresh masking key per frame (RFC 6455 5.3): the masked bytes differ when there are any
    assert n < 4 or len({w for w in wires}) == 3


def test_the_frame_scheduler_does_not_import_the_caller_that_imports_it() -> None:
    """No import cycle, not even for type checkers: the scheduler knows a call's stream by a protocol
    (FrameSink), not by importing the gevent driver (which imports the scheduler)."""
    import ast

    import rtaa_cli.call.frame_scheduler as scheduler_mod

    tree = ast.parse(Path(scheduler_mod.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "rtaa_cli.call.gevent_driver" not in imported and "rtaa_cli.soak.stats" not in imported
