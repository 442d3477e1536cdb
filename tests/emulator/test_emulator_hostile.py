"""The emulator against a hostile client (issue 10 item 15), over real loopback sockets: fuzzed handshake
values get 400 with a header-safe ``dg-error`` (never a 500 with a traceback), SchemaError replies are
counted in ``/stats`` and ``/metrics``, and ``/control/faults`` refuses non-finite or out-of-range values."""
from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rtaa_cli.emulator import Emulator, EmulatorConfig, start_in_thread

AUTH = {"Authorization": "Token k"}
LISTEN = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000"
BOUND = 20.0  # safety net for waits; never reached when things work
RTAA = [sys.executable, "-m", "rtaa_cli"]


@pytest.fixture
def emu():
    handle = start_in_thread(EmulatorConfig())
    yield handle
    handle.stop()


def _post(url: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=BOUND) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=BOUND) as resp:
        return resp.read()


# Parameters whose invalid value Deepgram's message echoes ("Invalid 'x' value of '...'."); any value with a
# character below holds a non-ASCII or control character, so it is invalid for every one of them.
ECHOED = ("interim_results", "punctuate", "encoding", "redact", "diarize_model", "sample_rate", "channels",
          "endpointing", "utterance_end_ms")
HOSTILE = ["\r\n", "\r", "\n", "\x00", "\x7f", "\u20ac", "\u00e9", "\u00b2", "\u0663", "\U0001f600", "\ufffd",
           "\u2028", "\x1b[31m"]
PLAIN = list("abcXYZ019 -.,'\"%") + ["true", "8000", "X-Evil: 1", "1" * 40]


def _hostile_values(n: int, seed: int = 10) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    fixed = [("interim_results", "a\r\nX-Evil: 1"), ("encoding", "\u20ac"), ("channels", "\u00b2"),
             ("sample_rate", "8000\u00b2"), ("redact", "\U0001f600"), ("endpointing", "1" * 5000 + "\u00b2")]
    out = list(fixed)
    while len(out) < n:
        parts = [rng.choice(PLAIN) for _ in range(rng.randint(0, 4))]
        parts.insert(rng.randint(0, len(parts)), rng.choice(HOSTILE))
        out.append((rng.choice(ECHOED), "".join(parts)))
    return out


def test_fuzzed_handshake_values_get_400_with_a_header_safe_dg_error(emu) -> None:
    cases = _hostile_values(400)

    async def handshake(name: str, value: str):
        query = LISTEN + "&" + urllib.parse.urlencode({name: value})
        try:
            ws = await websockets.connect(emu.url + query, additional_headers=AUTH, open_timeout=BOUND)
        except InvalidStatus as exc:
            return exc.response
        await ws.close()
        return None

    async def main():
        return [await handshake(name, value) for name, value in cases]

    responses = asyncio.run(asyncio.wait_for(main(), 120))
    statuses = [r.status_code if r is not None else 101 for r in responses]
    assert statuses.count(400) == len(cases), {s: statuses.count(s) for s in set(statuses)}
    for (name, value), r in zip(cases, responses):
        header = r.headers["dg-error"]
        assert all(" " <= c <= "~" for c in header) and len(header) <= 256, (name, value, header)
        assert "X-Evil" not in r.headers and r.headers["dg-request-id"]
        body = orjson.loads(r.body)
        assert body["err_code"] == "Bad Request" and body["request_id"] == r.headers["dg-request-id"]
        # the body keeps the exact message, as Deepgram's body and dg-error carry the same text
        assert body["err_msg"] == f"Invalid '{name}' value of '{value}'.", (name, value, body)
        if len(body["err_msg"]) <= 256 and body["err_msg"].isascii() and body["err_msg"].isprintable():
            assert header == body["err_msg"]
    stats = emu.stats()["totals"]
    assert stats["rejected_400"] == len(cases) and stats["connections"] == 0


def test_schema_errors_are_counted_in_stats_and_metrics(emu) -> None:
    async def main():
        ws = await websockets.connect(emu.url + LISTEN + "&tag=SE1", additional_headers=AUTH, open_timeout=BOUND)
        replies = []
        for text in ("not json", '{"type":"Nope"}', "[1,2]"):
            await ws.send(text)
            replies.append(orjson.loads(await asyncio.wait_for(ws.recv(), BOUND)))
        live = emu.stats()["totals"]["schema_errors"]  # an open stream's count is live
        await ws.send('{"type":"CloseStream"}')
        async for _ in ws:
            pass
        return replies, live

    replies, live = asyncio.run(asyncio.wait_for(main(), BOUND))
    assert [(m["type"], m["variant"]) for m in replies] == [("Error", "SchemaError")] * 3
    assert live == 3
    emu.wait_quiet()
    stats = emu.stats()
    assert stats["totals"]["schema_errors"] == 3 and stats["connections"][0]["schema_errors"] == 3
    metrics = _get(emu.http_url + "/metrics").decode()
    assert "rtaa_emulator_schema_errors_total 3.0" in metrics


@pytest.mark.parametrize("query, message", [
    ("handshake_delay_ms=inf", "handshake_delay_ms must be a finite number in 0..60000, not 'inf'"),
    ("handshake_delay_ms=0,inf", "handshake_delay_ms must be a finite number in 0..60000, not 'inf'"),
    ("handshake_delay_ms=nan,nan", "handshake_delay_ms must be a finite number in 0..60000, not 'nan'"),
    ("handshake_delay_ms=100,x", "handshake_delay_ms: expected a number, got 'x'"),
    ("result_latency_ms=nan", "result_latency_ms must be a finite number in 0..60000, not 'nan'"),
    ("result_jitter_ms=-inf", "result_jitter_ms must be a finite number in 0..60000, not '-inf'"),
    ("result_latency_ms=1e9", "result_latency_ms must be a finite number in 0..60000, not '1e9'"),
    ("drop_after_s=inf", "drop_after_s must be a finite number in 0..86400, not 'inf'"),
    ("close_1011_after_s=nan", "close_1011_after_s must be a finite number in 0..86400, not 'nan'"),
    ("refuse_429_fraction=nan", "refuse_429_fraction must be a finite number in 0..1, not 'nan'"),
])
def test_control_faults_refuses_non_finite_and_out_of_range_values(emu, query, message) -> None:
    before = emu.stats()["faults"]
    status, body = _post(emu.http_url + "/control/faults?" + query)
    assert (status, body) == (400, {"error": message})
    assert emu.stats()["faults"] == before  # nothing applied

    async def handshake() -> float:  # and handshakes still complete at once
        t0 = time.monotonic()
        ws = await websockets.connect(emu.url + LISTEN, additional_headers=AUTH, open_timeout=BOUND)
        await ws.close()
        return time.monotonic() - t0

    assert asyncio.run(handshake()) < 2.0


def test_python_api_refuses_non_finite_faults() -> None:
    with pytest.raises(ValueError, match="result_latency_ms must be a finite number"):
        Emulator(EmulatorConfig(result_latency_ms=float("inf")))
    with pytest.raises(ValueError, match="handshake_delay_ms must be a finite number"):
        Emulator(EmulatorConfig(handshake_delay_ms=(0.0, float("nan"))))


def test_cli_port_in_use_and_bad_values_exit_2_with_one_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cases = [
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--port", "99999"], "--port must be 0-65535, not 99999"),
            (["--port", "0", "--result-latency-ms", "inf"], "--result-latency-ms must be a finite number"),
            (["--port", "0", "--handshake-delay-ms", "inf"], "--handshake-delay-ms must be a finite number"),
        ]
        for args, message in cases:
            proc = subprocess.run([*RTAA, "fake-deepgram", *args, "--quiet", "--no-live"], capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
            assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        taken.close()
