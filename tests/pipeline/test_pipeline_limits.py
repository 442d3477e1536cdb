"""Issue 10 items 3 and 6: audio faster than real time, idle limits, the connection cap, EMFILE on accept.
Real sockets throughout (the real ingest, real deepgram-sdk, the real emulator); small configured limits
instead of sleeps."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtaa_cli.pipeline.config import IngestConfig, WorkerConfig
from rtaa_cli.pipeline.ratelimit import TokenBucket, audio_bucket, auto_max_connections
from rtaa_cli.pipeline.server import max_connections
from helpers.pipeline import Caller, Feed, frames_of, http_get, pipeline, run, speech_like, until
from helpers.paths import ROOT



# -- the sans-I/O parts -------------------------------------------------------------------------------
def test_audio_bucket_allows_the_speed_plus_the_burst_and_no_more() -> None:
    b = audio_bucket(4.0, 10.0, now=0.0)
    assert isinstance(b, TokenBucket)
    assert b.take(0.0, 10.0)  # the burst at once
    assert not b.take(0.0, 0.036)  # nothing left, and a refused take spends nothing
    assert b.take(1.0, 4.0)  # one wall second refills 4 audio seconds
    assert not b.take(1.0, 0.001)
    assert b.take(100.0, 10.0) and not b.take(100.0, 0.5)  # a long pause refills only up to the burst
    assert audio_bucket(0.0, 10.0, 0.0) is None  # 0 = no limit


def test_the_auto_connection_cap_stays_below_the_descriptor_limit() -> None:
    assert auto_max_connections(1024) == 480  # 2 descriptors per connection (its provider socket), 64 spare
    assert auto_max_connections(10) == 1
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 2 * max_connections(0) < soft or soft == resource.RLIM_INFINITY
    assert max_connections(7) == 7


# -- item 3: audio faster than real time ---------------------------------------------------------------
def test_a_stream_faster_than_the_limit_is_closed_1008_while_a_4x_stream_completes() -> None:
    """The old limit counted messages only: 6 s of audio pushed at once (167 frames, within the message
    burst) went to the provider. Now it is audio seconds: beyond 4 x real time plus a 1 s burst the stream
    is closed 1008 with the reason and its call ends, while a stream paced at 4x is untouched."""
    audio = speech_like(5, on_s=0.8, off_s=0.4)  # 6 s

    async def main() -> None:
        ingest = IngestConfig(max_audio_speed=4.0, audio_burst_s=1.0)
        async with pipeline(ingest=ingest) as (server, emu):
            fast_feed = await Feed.open(server, "CA-fast")
            paced_feed = await Feed.open(server, "CA-4x")
            fast = await Caller.open(server, "CA-fast")
            paced = await Caller.open(server, "CA-4x")
            await fast.start()
            await paced.start()

            async def push_fast() -> None:
                for f in frames_of(audio):
                    try:
                        await fast.media(f)
                    except ConnectionClosed:  # closed under us: the point of the test
                        return

            async def push_paced() -> None:
                await paced.paced(frames_of(audio), frame_s=0.036 / 4)  # 4 x real time
                await paced.stop()

            await asyncio.gather(push_fast(), push_paced())
            code, reason = await fast.closed()
            assert (code, reason) == (1008, "audio faster than 4 x real time")
            await fast_feed.wait_ended()
            ended = [m for m in fast_feed.messages if m["type"] == "call_ended"]
            assert ended and ended[0]["reason"] == "audio faster than 4 x real time", fast_feed.messages

            await paced_feed.wait_ended(20)
            assert paced_feed.transcripts(final=True), "the 4x stream got no final"
            assert [m["type"] for m in paced_feed.messages][-1] == "call_ended"
            assert paced.ws.close_code is None or paced.ws.close_code == 1000  # not closed by a limit
            assert server.metrics.value("rtaa_bad_input_total", kind="audio_rate") == 1
            # the fast stream's audio reached the provider only up to the budget: 1 s burst + 4x of its time
            sent_s = server.metrics.value("rtaa_frames_out_total") * 0.036
            assert sent_s < 6.0 + 2.0, sent_s  # the paced call's 6 s + at most ~1.x s of the fast one
            await fast_feed.close()
            await paced_feed.close()

    run(main(), 60)


# -- item 6: idle limits ----------------------------------------------------------------------------------
def test_a_socket_that_never_sends_start_is_closed_after_the_start_timeout() -> None:
    async def main() -> None:
        async with pipeline(ingest=IngestConfig(start_timeout_s=0.3)) as (server, _):
            silent = await Caller.open(server, "CA-silent")
            await silent.ws.send(silent.enc.connected())  # `connected` is not a start
            prompt = await Caller.open(server, "CA-prompt")
            await prompt.start()
            t0 = time.perf_counter()
            assert await silent.closed(5) == (1008, "no start within 0.3 s")
            assert time.perf_counter() - t0 < 2.0
            assert server.metrics.value("rtaa_idle_closes_total", limit="start") == 1
            assert server.metrics.value("rtaa_caller_closes_total", code="1008") == 1
            assert prompt.ws.close_code is None  # a started stream is not subject to it
            await prompt.stop()
            await prompt.ws.close()

    run(main(), 30)


def test_a_started_call_without_audio_is_ended_at_the_hold_limit_despite_keepalive() -> None:
    """A start and a little audio, then nothing: KeepAlive kept the provider stream (and the call's slot)
    forever. Now the call ends at --max-hold-s (its final flushed, call_ended, slot and provider stream
    freed) and the caller is closed 1008. A stream whose gaps stay under the limit runs on past it."""
    async def main() -> None:
        worker = WorkerConfig(keepalive_interval_s=0.1)
        async with pipeline(ingest=IngestConfig(max_hold_s=0.6), worker=worker) as (server, emu):
            feed = await Feed.open(server, "CA-hold")
            held = await Caller.open(server, "CA-hold")
            await held.start()
            for f in frames_of(speech_like(1)):
                await held.media(f)
            steady = await Caller.open(server, "CA-steady")
            await steady.start()
            steady_audio = speech_like(2)  # 2.4 s paced in real time: four times the hold limit
            steady_task = asyncio.get_running_loop().create_task(steady.paced(frames_of(steady_audio)))

            assert await held.closed(10) == (1008, "no audio for 0.6 s")
            await feed.wait_ended()
            assert [m["reason"] for m in feed.messages if m["type"] == "call_ended"] == ["no audio for 0.6 s"]
            assert feed.transcripts(final=True), "the audio before the hold lost its final"
            assert server.metrics.value("rtaa_idle_closes_total", limit="hold") == 1
            assert server.metrics.value("rtaa_provider_keepalives_total") > 0  # KeepAlive did flow meanwhile
            await until(lambda: "CA-hold" not in server.bus.channels, 5, "the held call's slot freed")

            await steady_task
            assert steady.ws.close_code is None, (steady.ws.close_code, steady.ws.close_reason)
            await steady.stop()
            await steady.ws.close()
            await until(lambda: server.metrics.value("rtaa_calls_active") == 0, 10, "every call ended")
            await feed.close()

    run(main(), 40)


def test_a_feed_for_an_id_that_never_becomes_a_call_is_closed() -> None:
    async def main() -> None:
        async with pipeline(feed_wait_s=0.4) as (server, _):
            ghost = await Feed.open(server, "CA-never")
            later = await Feed.open(server, "CA-later")  # subscribes before its call starts: fine
            caller = await Caller.open(server, "CA-later")
            await caller.start()
            await ghost.wait_ended(5)
            assert (ghost.ws.close_code, ghost.ws.close_reason) == (1008, "no such call within 0.4 s")
            assert ghost.messages == []
            assert server.metrics.value("rtaa_idle_closes_total", limit="feed") == 1
            await caller.paced(frames_of(speech_like(1)))  # 1.2 s: the call outlives the feed wait
            await caller.stop()
            await later.wait_ended()
            assert later.transcripts(final=True)
            await later.close()
            assert (later.ws.close_code, later.ws.close_reason) == (1000, "call ended")
            assert server.metrics.value("rtaa_idle_closes_total", limit="feed") == 1

    run(main(), 30)


# -- the connection cap --------------------------------------------------------------------------------------
def test_connections_beyond_the_cap_get_503_at_the_handshake() -> None:
    async def main() -> None:
        async with pipeline(max_connections=2) as (server, _):
            a = await Caller.open(server, "CA-a")
            feed = await Feed.open(server, "CA-a")
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ingest_url, proxy=None)
            assert refused.value.response.status_code == 503
            with pytest.raises(InvalidStatus) as refused_feed:
                await connect(server.transcripts_url + "/CA-a", proxy=None)
            assert refused_feed.value.response.status_code == 503
            assert server.metrics.value("rtaa_connections_refused_total") == 2
            status, _, _ = await asyncio.to_thread(http_get, server.http_url + "/health")
            assert status == 200  # plain HTTP is not a held connection
            await feed.close()
            await until(lambda: server.ws_open < 2, 5, "the closed feed released its place")
            b = await Caller.open(server, "CA-b")  # room again
            await b.start()
            await b.stop()
            await b.ws.close()
            await a.ws.close()

    run(main(), 30)


def test_emfile_on_accept_is_one_log_line_not_a_traceback_flood() -> None:
    """rtaa serve with 64 descriptors, flooded with idle TCP connections: the default handler wrote a
    traceback per backlogged connection per retry (8,271 stderr lines in 4 s). Now one JSON line per
    10 s, every failure counted, and the server answers again once descriptors are free."""
    limit = 64

    def lower_limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    env = dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "rtaa_cli", "serve", "--port", "0", "--json",
                             "--max-connections", "1000"], cwd=ROOT, env=env, preexec_fn=lower_limit,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    failed = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"accept_failed"' in line:
                failed.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        port = int(info["health"].rsplit(":", 1)[1].split("/")[0])
        for _ in range(2 * limit):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert failed.wait(20), "no accept_failed line: " + "".join(lines[-5:])
        time.sleep(2.5)  # an observation window (asyncio retries accept each second), not synchronisation
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body, _ = http_get(info["metrics"])
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not recover after descriptors were freed"
                time.sleep(0.1)
        assert status == 200
        errors = [ln for ln in body.decode().splitlines() if ln.startswith('rtaa_accept_errors_total{errno="EMFILE"}')]
        assert errors and float(errors[0].split()[-1]) > 1, errors
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(20)
        reader.join(5)
    assert proc.returncode == 0
    assert not any("Traceback" in ln for ln in lines), "".join(lines[:20])
    accept_lines = [ln for ln in lines if '"accept_failed"' in ln]
    assert len(accept_lines) == 1, accept_lines  # the run was shorter than the 10 s throttle
    for ln in lines:
        json.loads(ln)  # every stderr line is a JSON log line
    assert json.loads(accept_lines[0])["errno"] == "EMFILE"


# -- the options from the environment and the config file ------------------------------------------------------
def test_the_limits_come_from_env_and_toml_and_bad_values_are_usage_errors(tmp_path: Path) -> None:
    toml = tmp_path / "rtaa.toml"
    toml.write_text("[serve]\nfeed-wait-s = 0.3\nmax-audio-speed = 2\n")
    env = dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1", RTAA_SERVE_START_TIMEOUT_S="0.25")
    proc = subprocess.Popen([sys.executable, "-m", "rtaa_cli", "--config", str(toml), "serve", "--port", "0",
                             "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())

        async def main() -> None:
            silent = await connect(info["ingest"], proxy=None)
            feed = await connect(info["transcripts"] + "/CA-none", proxy=None)
            await silent.wait_closed()
            await feed.wait_closed()
            assert (silent.close_code, silent.close_reason) == (1008, "no start within 0.25 s")
            assert (feed.close_code, feed.close_reason) == (1008, "no such call within 0.3 s")
            fast = await connect(info["ingest"], proxy=None)
            caller = Caller(fast, "CA-toml", "ST-toml")
            await caller.start()
            for f in frames_of(speech_like(10)):  # 12 s at once: past the default 10 s burst
                try:
                    await caller.media(f)
                except ConnectionClosed:
                    break
            assert await caller.closed(5) == (1008, "audio faster than 2 x real time")
        run(main(), 20)
    finally:
        proc.terminate()
        proc.wait(20)
    for bad in (["--max-hold-s", "0"], ["--start-timeout-s", "-1"], ["--feed-wait-s", "nan"],
                ["--max-audio-speed", "-1"], ["--audio-burst-s", "0"], ["--max-connections", "-1"]):
        r = subprocess.run([sys.executable, "-m", "rtaa_cli", "serve", "--port", "0", *bad], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (bad, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and bad[0] in r.stderr, (bad, r.stderr)


def test_with_the_redis_bus_a_feed_of_a_call_on_another_ingest_outlives_the_feed_wait() -> None:
    """Scale-out: ingest B does not stream the call (it is not live *there*), so only the call's messages tell B
    it exists. A subscriber on B that joins mid-call must get the call to its end, not the feed-wait close."""
    from helpers.redisdb import delete, new_prefix, redis_url
    from helpers.scaleout import emulator, ingest, worker

    url, prefix = redis_url(), new_prefix()
    procs = []

    async def main() -> None:
        emu = emulator()
        procs.append(emu)
        await emu.ready()
        ing_a, ing_b = ingest(url, prefix), ingest(url, prefix, "--feed-wait-s", "3")
        w = worker(url, prefix, emu.info["url"])
        procs.extend([ing_a, ing_b, w])
        await asyncio.gather(ing_a.ready(), ing_b.ready(), w.ready())
        caller = Caller(await connect(ing_a.info["ingest"], proxy=None, compression=None), "CA-remote", "ST-remote")
        await caller.start()
        frames = frames_of(speech_like(7))  # 8.4 s in real time: the call outlives B's 3 s feed wait
        pacing = asyncio.get_running_loop().create_task(caller.paced(frames))
        await until(lambda: ing_a.metric("rtaa_frames_in_total") > 20, 10, "the call to be under way on A")
        feed = Feed(await connect(ing_b.info["transcripts"] + "/CA-remote", proxy=None))
        await pacing
        await caller.stop()
        await feed.wait_ended(20)
        await caller.ws.close()
        assert feed.transcripts(final=True), feed.messages
        assert feed.messages[-1]["type"] == "call_ended", feed.messages[-3:]
        await asyncio.gather(feed._task, return_exceptions=True)
        assert (feed.ws.close_code, feed.ws.close_reason) == (1000, "call ended")
        assert ing_b.metric("rtaa_idle_closes_total") == 0

    try:
        run(main(), 90)
    finally:
        for p in procs:
            p.stop()
        delete(prefix)
