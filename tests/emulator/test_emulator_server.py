"""The emulator over real loopback sockets, driven by the real deepgram-sdk 7.16.0 and raw websockets clients."""
from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.emulator.messages import INTERNAL_FAULT
from rtaa_cli.protocols.deepgram import NET0001
from rtaa_cli.latency import SendLog
from helpers.emulator import BOUND, FRAME_BYTES, RATE, call_audio, env_for

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient, DeepgramClient
    from deepgram.core.api_error import ApiError
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

LISTEN = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000"
AUTH = {"Authorization": "Token k"}


def tone_bytes(seconds: float, amp: int = 8000) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 300 * t) * amp).astype(np.int16).tobytes()


def silence_bytes(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def http_json(url: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=BOUND) as resp:
        return json.loads(resp.read())


def check_results_schema(m) -> None:
    """Strict schema check: the SDK does no validation (docs/deepgram-protocol.md §5)."""
    assert m.type == "Results" and len(m.channel_index) == 2
    assert isinstance(m.start, float) and isinstance(m.duration, float) and m.duration >= 0
    assert isinstance(m.is_final, bool) and isinstance(m.speech_final, bool) and isinstance(m.from_finalize, bool)
    assert m.metadata.request_id and m.metadata.model_uuid and m.metadata.model_info.arch == "nova-3"
    alt = m.channel.alternatives[0]
    assert isinstance(alt.transcript, str) and isinstance(alt.confidence, float)
    for w in alt.words:
        assert m.start - 1e-6 <= w.start < w.end <= m.start + m.duration + 1e-6
        assert 0.0 <= w.confidence <= 1.0 and w.punctuated_word


# ------------------------------------------------------------------------------------ the real SDK

def test_sync_sdk_streams_call_in_real_time(emu_factory):
    """Real-time (36 ms frames) with the sync SDK: interims and finals with sane timings, then CloseStream ->
    final results, Metadata, close 1000 (the SDK's loop ends cleanly only on 1000)."""
    emu = emu_factory(api_key="k")
    audio = call_audio(7.5)
    received: list = []
    sender_error: list = []
    client = DeepgramClient(api_key="k", environment=env_for(emu))
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000, interim_results=True,
                                  punctuate=True, endpointing=300, tag="CA1") as conn:
        def send() -> None:
            try:
                start = time.monotonic()
                for i, off in enumerate(range(0, len(audio), FRAME_BYTES)):
                    delay = start + i * 0.036 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # pacing, not synchronisation
                    conn.send_media(audio[off:off + FRAME_BYTES])
                conn.send_close_stream()
            except Exception as exc:  # noqa: BLE001 - reported below
                sender_error.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        for message in conn:
            received.append(message)
        sender.join(BOUND)
    assert not sender_error
    results = [m for m in received if isinstance(m, ListenV1Results)]
    for m in results:
        check_results_schema(m)
    interims = [m for m in results if not m.is_final]
    finals = [m for m in results if m.is_final]
    assert interims and finals
    # Finals tile the audio from 0 without gaps or overlaps, within the 7.5 s sent.
    assert finals[0].start == 0.0
    for a, b in zip(finals, finals[1:]):
        assert b.start == pytest.approx(a.start + a.duration, abs=1e-3)
    assert finals[-1].start + finals[-1].duration <= 7.5 + 1e-3
    # Placeholder words span the clip's speech (call.json's aligned 0.2..6.79 s; energy VAD within 0.25 s).
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    assert len(words) >= 10
    assert abs(words[0].start - 0.2) <= 0.25 and 6.5 <= words[-1].end <= 7.1 + 0.05  # clip ends at 7.1 s
    assert isinstance(received[-1], ListenV1Metadata)
    assert received[-1].duration == pytest.approx(7.5, abs=0.04) and received[-1].transaction_key == "deprecated"
    emu.wait_quiet()
    stats = emu.stats()
    (rec,) = stats["connections"]
    assert (rec["close_code"], rec["interaction"], rec["close_stream"]) == (1000, "CA1", True)
    assert rec["results_sent"] == len(results) and rec["audio_bytes"] == len(audio)


def test_async_sdk_full_call_faster_than_real_time(emu_factory):
    emu = emu_factory()
    audio = call_audio() + silence_bytes(1.5)  # trailing silence: room for an UtteranceEnd

    async def run() -> list:
        client = AsyncDeepgramClient(api_key="any", environment=env_for(emu))
        out = []
        async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000,
                                            interim_results=True, endpointing=300, vad_events=True,
                                            utterance_end_ms=1000, tag="CA2") as conn:
            for off in range(0, len(audio), FRAME_BYTES * 10):
                await conn.send_media(audio[off:off + FRAME_BYTES * 10])
            await conn.send_close_stream()
            async for message in conn:
                out.append(message)
        return out

    received = asyncio.run(asyncio.wait_for(run(), BOUND))
    kinds = {type(m).__name__ for m in received}
    assert {"ListenV1Results", "ListenV1SpeechStarted", "ListenV1UtteranceEnd", "ListenV1Metadata"} <= kinds
    finals = [m for m in received if isinstance(m, ListenV1Results) and m.is_final]
    assert sum(1 for m in finals if m.speech_final) >= 4  # five clips separated by 0.7 s silences
    assert received[-1].duration == pytest.approx(len(audio) / 2 / RATE, abs=1e-3)
    emu.wait_quiet()
    assert emu.stats()["totals"]["closes_1000"] == 1


def test_idle_timeout_closes_1011_with_net0001_through_sdk(emu_factory):
    emu = emu_factory(idle_timeout_s=1.0)
    received = []
    client = DeepgramClient(api_key="k", environment=env_for(emu))
    started = time.monotonic()
    with pytest.raises(ConnectionClosedError) as info:
        with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000, tag="idle") as conn:
            conn.send_media(silence_bytes(0.2))
            for message in conn:
                received.append(message)
    elapsed = time.monotonic() - started
    assert info.value.rcvd.code == 1011 and info.value.rcvd.reason == NET0001
    assert [type(m).__name__ for m in received] == ["ListenV1Metadata"]
    assert 0.9 <= elapsed < 5.0
    emu.wait_quiet()
    assert emu.stats()["totals"]["closes_1011"] == 1


def test_keepalive_prevents_idle_close_for_three_times_the_limit(emu_factory):
    emu = emu_factory(idle_timeout_s=1.0)
    client = DeepgramClient(api_key="k", environment=env_for(emu))
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000, tag="ka") as conn:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            conn.send_keep_alive()
            time.sleep(0.3)  # the KeepAlive cadence under test
        conn.send_close_stream()
        received = list(conn)  # ends cleanly only on 1000
    assert type(received[-1]).__name__ == "ListenV1Metadata"
    emu.wait_quiet()
    (rec,) = emu.stats()["connections"]
    assert rec["close_code"] == 1000 and rec["keepalives"] >= 10


def test_wrong_key_is_401_sync_invalid_status_and_async_api_error(emu_factory):
    emu = emu_factory(api_key="right")
    client = DeepgramClient(api_key="wrong", environment=env_for(emu))
    with pytest.raises(InvalidStatus) as info:  # SDK bug: escapes unwrapped with websockets >= 14
        with client.listen.v1.connect(model="nova-3"):
            pass
    response = info.value.response
    body = json.loads(response.body)
    assert response.status_code == 401 and body["err_code"] == "INVALID_AUTH" and body["err_msg"] == "Invalid credentials."
    assert response.headers["dg-error"] == "Invalid credentials." and response.headers["dg-request-id"] == body["request_id"]

    async def async_connect() -> None:
        async with AsyncDeepgramClient(api_key="wrong", environment=env_for(emu)).listen.v1.connect(model="nova-3"):
            pass

    with pytest.raises(ApiError) as ainfo:
        asyncio.run(async_connect())
    assert ainfo.value.status_code == 401
    # Bearer (the SDK's access_token form) with the right key is accepted.
    with DeepgramClient(access_token="right", environment=env_for(emu)).listen.v1.connect(model="nova-3") as conn:
        conn.send_close_stream()
        assert [type(m).__name__ for m in conn] == ["ListenV1Metadata"]
    assert emu.stats()["totals"]["rejected_401"] == 2


def test_finalize_gives_from_finalize_and_bad_json_gives_schema_error(emu_factory):
    emu = emu_factory()
    client = DeepgramClient(api_key="k", environment=env_for(emu))
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000, endpointing="false") as conn:
        conn.send_media(tone_bytes(0.5))
        conn.send_finalize()
        first = conn.recv()
        conn._websocket.send("{this is not json")  # the SDK cannot send bad JSON by itself
        second = conn.recv()
        conn.send_close_stream()
        rest = list(conn)
    assert first.type == "Results" and first.is_final and first.from_finalize
    assert first.channel.alternatives[0].words and first.duration == 0.5
    assert second.type == "Error" and second.variant == "SchemaError" and second.message == "{this is not json"
    assert [m.type for m in rest] == ["Metadata"]  # nothing pending after Finalize: no extra Results


# ------------------------------------------------------------------------------------ raw websockets

async def _connect(emu, query: str = LISTEN, headers=AUTH, **kw):
    return await websockets.connect(emu.url + query, additional_headers=headers, open_timeout=BOUND, **kw)


def test_over_max_concurrent_is_429(emu_factory):
    emu = emu_factory(max_concurrent=2)

    async def run():
        a = await _connect(emu)
        b = await _connect(emu)
        with pytest.raises(InvalidStatus) as info:
            await _connect(emu)
        await a.close()
        c = await _connect(emu)  # a slot is free again
        await b.close()
        await c.close()
        return info.value.response

    response = asyncio.run(run())
    emu.wait_quiet()
    body = json.loads(response.body)
    assert response.status_code == 429 and body["err_code"] == "TOO_MANY_REQUESTS" and response.headers["dg-request-id"]
    assert emu.stats()["totals"]["rejected_429"] == 1


def test_max_concurrent_holds_for_simultaneous_slow_handshakes(emu_factory):
    """Five handshakes in flight at once (each delayed 100 ms) against a limit of 2: exactly 2 open."""
    emu = emu_factory(max_concurrent=2, handshake_delay_ms=(100.0, 100.0))

    async def attempt():
        try:
            return await _connect(emu)
        except InvalidStatus as exc:
            return exc.response.status_code

    async def run():
        outcomes = await asyncio.gather(*(attempt() for _ in range(5)))
        opened = [o for o in outcomes if not isinstance(o, int)]
        for ws in opened:
            await ws.close()
        return len(opened), sorted(o for o in outcomes if isinstance(o, int))

    opened, refused = asyncio.run(asyncio.wait_for(run(), BOUND))
    assert (opened, refused) == (2, [429, 429, 429])
    emu.wait_quiet()
    assert emu.stats()["totals"]["connections"] == 2


def test_duplicates_counted_for_overlap_only_and_extra_attribution(emu_factory):
    emu = emu_factory()

    async def run():
        a = await _connect(emu, LISTEN + "&tag=CA7")
        b = await _connect(emu, LISTEN + "&tag=CA7")  # overlaps a
        await a.close()
        await b.close()
        c = await _connect(emu, LISTEN + "&tag=CA8")
        await c.close()
        d = await _connect(emu, LISTEN + "&tag=CA8")  # after c closed: not a duplicate
        await d.close()
        e = await _connect(emu, LISTEN + "&extra=interaction_id:CA9")
        f = await _connect(emu, LISTEN + "&extra=interaction_id:CA9")
        await e.close()
        await f.close()

    asyncio.run(run())
    emu.wait_quiet()
    stats = emu.stats()
    assert stats["interactions"]["CA7"] == {"connections": 2, "duplicates": 1, "max_open": 2, "open": 0}
    assert stats["interactions"]["CA8"] == {"connections": 2, "duplicates": 0, "max_open": 1, "open": 0}
    assert stats["interactions"]["CA9"]["duplicates"] == 1
    assert stats["totals"]["duplicates"] == 2 and stats["totals"]["connections"] == 6


@pytest.mark.parametrize("query, fragment", [
    ("?model=nova-3&interim_results=True", "interim_results"),
    ("?model=nova-3&interim_results=true&utterance_end_ms=999", "Invalid 'utterance_end_ms' value of '999'."),
    ("?model=nova-3&encoding=linear16", "sample_rate"),
    ("?model=nova-3&language=english", "No such model"),
    ("?model=nova-3&keywords=hello:2", "Nova-3"),
])
def test_invalid_params_are_400_with_dg_error(emu_factory, query, fragment):
    emu = emu_factory()

    async def run():
        with pytest.raises(InvalidStatus) as info:
            await _connect(emu, "/v1/listen" + query)
        return info.value.response

    response = asyncio.run(run())
    body = json.loads(response.body)
    assert response.status_code == 400 and body["err_code"] == "Bad Request" and fragment in body["err_msg"]
    assert response.headers["dg-error"] == body["err_msg"] and response.headers["dg-request-id"] == body["request_id"]


def test_subprotocol_auth_echoes_token_and_missing_auth_is_401(emu_factory):
    emu = emu_factory(api_key="sk")

    async def run():
        ws = await _connect(emu, headers=None, subprotocols=["token", "sk"])
        assert ws.subprotocol == "token" and ws.response.headers["dg-request-id"]
        await ws.close()
        with pytest.raises(InvalidStatus) as info:
            await _connect(emu, headers=None)
        return info.value.response.status_code

    assert asyncio.run(run()) == 401


def test_undecodable_audio_is_1008_and_other_streams_unaffected(emu_factory):
    emu = emu_factory()

    async def run():
        good = await _connect(emu, LISTEN + "&tag=good")
        bad = await _connect(emu, "/v1/listen?model=nova-3&tag=bad")  # no encoding: WAV expected
        await bad.send(b"OggS\x00\x02" + bytes(40))  # an Ogg page, not a WAV header
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(bad.recv(), BOUND)
        await good.send(tone_bytes(0.5))
        await good.send(orjson.dumps({"type": "CloseStream"}).decode())
        messages = [orjson.loads(m) async for m in good]
        return info.value.rcvd, messages, good.close_code

    rcvd, messages, good_code = asyncio.run(asyncio.wait_for(run(), BOUND))
    assert rcvd.code == 1008 and rcvd.reason.startswith("DATA-0000")
    assert [m["type"] for m in messages] == ["Results", "Metadata"] and good_code == 1000


# ---------------------------------------------------------------------------------------------- faults

async def _paced_stream(emu, audio: bytes, query: str = LISTEN + "&interim_results=true&endpointing=300"):
    """Send ``audio`` at real time; return (SendLog, [(received_at, message)])."""
    log = SendLog()
    received: list = []
    ws = await _connect(emu, query)

    async def reader():
        async for raw in ws:
            received.append((time.time(), orjson.loads(raw)))

    task = asyncio.create_task(reader())
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    for i, off in enumerate(range(0, len(audio), FRAME_BYTES)):
        delay = start + i * 0.036 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing
        chunk = audio[off:off + FRAME_BYTES]
        # Stamped before the send: on a busy machine this thread can lose the CPU between the write and a
        # stamp taken after it, and the result (the emulator runs in another thread) would seem early.
        sent_at = time.time()
        await ws.send(chunk)
        sent += len(chunk)
        log.record(sent / 2 / RATE * 1000.0, sent_at)
    await ws.send('{"type":"CloseStream"}')
    await asyncio.wait_for(task, BOUND)
    return log, received


def _latencies(log: SendLog, received) -> list[float]:
    out = []
    for at, m in received:
        if m["type"] == "Results":
            out.append(log.latency_ms((m["start"] + m["duration"]) * 1000.0, at))
    return [x for x in out if x is not None]


def test_injected_result_latency_shows_up_at_the_client(emu_factory):
    emu = emu_factory()
    audio = (tone_bytes(1.2) + silence_bytes(0.5)) * 2
    base = _latencies(*asyncio.run(_paced_stream(emu, audio)))
    emu.set_faults(result_latency_ms=250.0)
    slow = _latencies(*asyncio.run(_paced_stream(emu, audio)))
    assert len(base) >= 4 and len(slow) == len(base)
    assert min(slow) >= 250.0 - 1.0  # never earlier than arrival + latency
    shift = statistics.median(slow) - statistics.median(base)
    assert 245.0 <= shift <= 280.0, f"latency shift {shift:.1f} ms, expected ~250 (base {base}, slow {slow})"


def test_fault_close_1011_mid_stream(emu_factory):
    emu = emu_factory(close_1011_after_s=0.3)

    async def run():
        ws = await _connect(emu)
        await ws.send(tone_bytes(0.1))
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), BOUND)
        return info.value.rcvd

    rcvd = asyncio.run(run())
    assert rcvd.code == 1011 and rcvd.reason == INTERNAL_FAULT
    emu.wait_quiet()
    assert emu.stats()["totals"]["closes_1011"] == 1


def test_fault_drop_connection_without_close_frame(emu_factory):
    emu = emu_factory(drop_after_s=0.3)

    async def run():
        ws = await _connect(emu)
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), BOUND)
        return info.value

    exc = asyncio.run(run())
    assert exc.rcvd is None  # no close frame: the client sees 1006
    emu.wait_quiet()
    (rec,) = emu.stats()["connections"]
    assert rec["close_code"] == 1006 and emu.stats()["totals"]["dropped"] == 1


def test_fault_refuse_429_fraction_and_slow_handshake_via_control_endpoint(emu_factory):
    emu = emu_factory(seed=7)
    faults = http_json(emu.http_url + "/control/faults?refuse_429_fraction=1", method="POST")
    assert faults["refuse_429_fraction"] == 1.0

    async def refused():
        with pytest.raises(InvalidStatus) as info:
            await _connect(emu)
        return info.value.response.status_code

    before = time.time()
    assert asyncio.run(refused()) == 429
    rejections = http_json(emu.http_url + "/stats")["rejections"]  # timed, so a soak can plot them
    assert [r["status"] for r in rejections] == [429] and before <= rejections[0]["at"] <= time.time()
    http_json(emu.http_url + "/control/faults?refuse_429_fraction=0&handshake_delay_ms=300,400", method="POST")

    async def slow():
        t0 = time.monotonic()
        ws = await _connect(emu)
        elapsed = time.monotonic() - t0
        await ws.close()
        return elapsed

    assert asyncio.run(slow()) >= 0.3
    with pytest.raises(urllib.error.HTTPError) as info:
        http_json(emu.http_url + "/control/faults?refuse_429_fraction=2", method="POST")
    assert info.value.code == 400
    info.value.close()  # a lingering HTTP client would hold the server's shutdown for close_timeout


# ------------------------------------------------------------------------------------ HTTP endpoints

def test_stats_metrics_and_reset_over_http(emu_factory):
    emu = emu_factory()

    async def one_call():
        ws = await _connect(emu, LISTEN + "&tag=CA1")
        await ws.send(tone_bytes(0.3))
        await ws.send('{"type":"KeepAlive"}')
        await ws.send('{"type":"CloseStream"}')
        return [m async for m in ws]

    asyncio.run(one_call())
    emu.wait_quiet()
    stats = http_json(emu.http_url + "/stats")
    assert stats == emu.stats()
    assert stats["totals"]["keepalives"] == 1 and stats["totals"]["audio_seconds"] == 0.3
    with urllib.request.urlopen(emu.http_url + "/metrics", timeout=BOUND) as resp:
        metrics = resp.read().decode()
    assert "rtaa_emulator_connections_total 1.0" in metrics and 'rtaa_emulator_closes_total{code="1000"} 1.0' in metrics
    assert http_json(emu.http_url + "/stats/reset", method="POST") == {"ok": True}
    assert emu.stats()["totals"]["connections"] == 0 and emu.stats()["connections"] == []


def test_in_process_async_api(caplog):
    caplog.set_level("INFO", logger="rtaa.emulator")

    async def run():
        async with Emulator(EmulatorConfig(result_latency_ms=0)) as emu:
            assert emu.url.startswith("ws://127.0.0.1:") and emu.http_url.startswith("http://127.0.0.1:")
            ws = await _connect(emu, LISTEN + "&tag=X")
            await ws.send(b"")  # legacy end of stream
            msgs = [orjson.loads(m) async for m in ws]
            await asyncio.wait_for(emu.wait_quiet(), BOUND)
            emu.set_faults(result_latency_ms=5)
            with pytest.raises(ValueError):
                emu.set_faults(nonsense=1)
            return msgs, ws.close_code, emu.stats()

    msgs, code, stats = asyncio.run(asyncio.wait_for(run(), BOUND))
    assert [m["type"] for m in msgs] == ["Metadata"] and code == 1000
    assert stats["faults"]["result_latency_ms"] == 5.0 and stats["totals"]["close_streams"] == 1
    # One JSON log line per connection open and close, with interaction, request id and close code.
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rtaa.emulator"]
    opened, closed = [x for x in lines if x["event"] == "open"], [x for x in lines if x["event"] == "close"]
    assert len(opened) == len(closed) == 1 and closed[0]["code"] == 1000 and closed[0]["interaction"] == "X"
    assert opened[0]["request_id"] == closed[0]["request_id"] == stats["connections"][0]["request_id"]


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_serves_until_sigterm_and_exits_cleanly():
    rtaa = Path(sys.executable).with_name("rtaa")  # the console script of this venv
    proc = subprocess.Popen([str(rtaa), "fake-deepgram", "--port", "0", "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listening = json.loads(proc.stdout.readline())
        assert listening["event"] == "listening"
        assert http_json(listening["stats"])["totals"]["connections"] == 0
        proc.terminate()
        out, err = proc.communicate(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(BOUND)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["event"] == "stopped"


def test_watermark_attributes_untagged_connections_in_stats(emu_factory):
    """Untagged streams over real sockets: a marked call re-chunked to 72 ms with every 10th frame dropped,
    a marked call replaying 20 frames, and an unmarked call. /stats names each marked connection's call
    with exact packet counts, and gives the unmarked one ``"watermark": null``."""
    from rtaa_cli.watermark import Marker, PACKET_BITS, call_hex

    emu = emu_factory()
    pcm = call_audio(8.0)
    frames = [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm) // FRAME_BYTES * FRAME_BYTES, FRAME_BYTES)]
    per_frame = FRAME_BYTES // 2 // PACKET_BITS
    a = [f for k, f in enumerate(Marker("CAwmA").mark_frames(frames)) if k % 10 != 3]
    marked_b = Marker("CAwmB").mark_frames(frames)
    b = marked_b[:60] + marked_b[40:]

    async def send(chunks):
        async with await _connect(emu) as ws:
            for c in chunks:
                await ws.send(c)
            await ws.send('{"type":"CloseStream"}')
            async for _ in ws:
                pass

    async def run():
        joined = b"".join(a)
        await send([joined[i:i + 1152] for i in range(0, len(joined), 1152)])  # re-chunked to 72 ms
        await send(b)
        await send(frames)

    asyncio.run(run())
    emu.wait_quiet()
    by_order = sorted(emu.stats()["connections"], key=lambda c: c["id"])
    wa, wb, wn = (c["watermark"] for c in by_order)
    dropped = sum(1 for k in range(len(frames)) if k % 10 == 3)
    assert wa["call"] == call_hex("CAwmA") and wa["missing"] == dropped * per_frame and wa["repeated"] == 0
    assert wa["packets"] == len(a) * per_frame and wa["first"] == 0
    assert wb["call"] == call_hex("CAwmB") and wb["missing"] == 0 and wb["repeated"] == 20 * per_frame
    assert wn is None and all(c["interaction"] is None for c in by_order)
