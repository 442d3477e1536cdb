"""Redis transcript feeds (rtaa_cli/feeds/redis_feed.py) against the real Redis at $REDIS_URL or
127.0.0.1:6379: the URL rule, entry decoding, soak's sync tap and replay's asyncio tap (through
run_call against a small Exotel target that publishes to Redis in a foreign schema)."""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import orjson
import pytest
import redis
from websockets.asyncio.server import serve

from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.recorder import FeedRecorder
from rtaa_cli.feeds.redis_feed import SyncRedisFeed, entry_message, parse_redis_url
from rtaa_cli.feeds.url import check_feed_url
from rtaa_cli.latency import SendLog
from helpers.paths import THIRDPARTY

REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
FOREIGN = FieldMapping.parse("text=text,is_final=type==final,seq=seq")
DEADLINE_S = 5.0
BAD_MAP_TOML = THIRDPARTY / "bad-feed-map.toml"


def _redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answers at {REDIS}: {exc}")
    return client


@pytest.fixture
def rds():
    """A client and a unique key prefix; every key under it is deleted afterwards."""
    client = _redis()
    prefix = f"rtaa-test:{uuid.uuid4().hex[:10]}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def _base() -> str:
    return REDIS.split("?")[0].rstrip("/") if REDIS.rstrip("/").count("/") > 2 else REDIS.rstrip("/") + "/0"


def _wait(cond, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------- sans-I/O


def test_url_rule() -> None:
    f = parse_redis_url("redis://h:6380/2?stream=t:{call_sid}", "CA 1")
    assert (f.client_url, f.kind, f.key, f.per_call, f.start_id) == ("redis://h:6380/2", "stream", "t:CA 1", True, "0-0")
    shared = parse_redis_url("redis://h/0?stream=transcripts")
    assert (shared.per_call, shared.start_id, shared.client_url) == (False, None, "redis://h/0")
    assert parse_redis_url("redis://:pw@h:1/3?list=q:{call_sid}", "CA1").client_url == "redis://:pw@h:1/3"
    for bad, why in (("redis://h/0", "exactly one of"), ("redis://h/0?stream=a&list=b", "exactly one of"),
                     ("redis://h/0?list=shared", "must contain {call_sid}"), ("redis://h/x?stream=k", "not a number"),
                     ("redis://h/0?stream=", "non-empty"), ("redis://h/0?stream=k&foo=1", "exactly one of")):
        with pytest.raises(ValueError, match=why):
            parse_redis_url(bad)
    with pytest.raises(ValueError, match="use ws://"):
        check_feed_url("ftp://h/feed")  # http(s):// is an SSE feed (tests/feeds/test_feed_sse.py)
    with pytest.raises(ValueError, match=r"--transcripts 'redis://:\*\*\*@h/0'"):
        check_feed_url("redis://:secret@h/0")


def test_entry_decoding() -> None:
    assert entry_message({b"data": b'{"text": "hi"}'}) == b'{"text": "hi"}'
    assert entry_message({b"seq": b"3", b"type": b"final", b"text": b"3 apples", b"confidence": b"0.9",
                          b"ok": b"true", b"blob": b"[1, 2]"}) == {
        "seq": 3, "type": "final", "text": "3 apples", "confidence": 0.9, "ok": True, "blob": "[1, 2]"}
    assert entry_message({b"text": b"42"}) == {"text": 42}  # a mapping then reports "an int, not text"


# ------------------------------------------------------------------------------- soak's sync tap


def test_sync_stream_per_call_with_mapping(rds) -> None:
    client, prefix = rds
    rec = FeedRecorder("CA1", SendLog(), mapping=FOREIGN, keep_transcripts=True)
    feed = SyncRedisFeed(f"{_base()}?stream={prefix}t:{{call_sid}}", "CA1", rec.message, lambda: rec.ended)
    try:
        key = f"{prefix}t:CA1"
        client.xadd(key, {"seq": 1, "type": "partial", "text": "hello", "confidence": 0.5, "timestamp_ms": 1})
        client.xadd(key, {"seq": 2, "type": "final", "text": "hello there", "confidence": 0.9, "timestamp_ms": 2})
        client.xadd(key, {"data": orjson.dumps({"seq": 3, "type": "final", "text": "bye"})})
        client.xadd(key, {"seq": 4, "kind": "noise"})  # no text: not understood, counted
        _wait(lambda: rec.feed_messages == 4, "4 feed messages")
    finally:
        feed.close()
    assert feed.done.is_set() and feed.error is None
    assert [(t.seq, t.is_final, t.text) for t in rec.transcripts] == [
        (1, False, "hello"), (2, True, "hello there"), (3, True, "bye")]
    assert rec.feed_unrecognised == 1
    assert (rec.samples.finals, rec.samples.unmeasured) == (2, 3)  # results without audio offsets: latency not measured, and said so
    assert any("no audio offsets" in p for p in rec.problems())


def test_sync_unrecognised_counted_without_mapping(rds) -> None:
    client, prefix = rds
    rec = FeedRecorder("CA2", SendLog())
    feed = SyncRedisFeed(f"{_base()}?stream={prefix}t:{{call_sid}}", "CA2", rec.message, lambda: rec.ended)
    try:
        for seq in range(3):
            client.xadd(f"{prefix}t:CA2", {"seq": seq, "type": "final", "text": "x", "timestamp_ms": seq})
        _wait(lambda: rec.feed_messages == 3, "3 feed messages")
    finally:
        feed.close()
    assert rec.feed_unrecognised == 3 and rec.samples.results == 0
    (line,) = rec.problems()
    assert "3 messages arrived, none understood" in line and "type 'final'" in line and "--feed-map" in line


def test_sync_shared_stream_reads_from_subscribe_time_and_filters_calls(rds) -> None:
    client, prefix = rds
    key = f"{prefix}shared"
    mapping = FieldMapping.parse("text=text,call_id=call,is_final=final")
    client.xadd(key, {"call": "CA3", "text": "before subscribe", "final": "true"})
    rec = FeedRecorder("CA3", SendLog(), mapping=mapping)
    feed = SyncRedisFeed(f"{_base()}?stream={key}", "CA3", rec.message, lambda: rec.ended)
    try:
        client.xadd(key, {"call": "CA4", "text": "someone else", "final": "true"})
        client.xadd(key, {"call": "CA3", "text": "mine", "final": "true"})
        _wait(lambda: rec.feed_messages == 2, "2 feed messages")
    finally:
        feed.close()
    assert [t.text for t in rec.transcripts] == ["mine"] and rec.other_calls == 1


def test_sync_list_and_connect_failure(rds) -> None:
    client, prefix = rds
    rec = FeedRecorder("CA5", SendLog(), mapping=FOREIGN)
    feed = SyncRedisFeed(f"{_base()}?list={prefix}l:{{call_sid}}", "CA5", rec.message, lambda: rec.ended)
    try:
        client.rpush(f"{prefix}l:CA5", orjson.dumps({"seq": 1, "type": "final", "text": "from a list"}))
        _wait(lambda: rec.feed_messages == 1, "1 list message")
    finally:
        feed.close()
    assert [t.text for t in rec.transcripts] == ["from a list"]
    with socket_closed_port() as port:
        with pytest.raises(OSError, match="redis feed redis://127.0.0.1"):
            SyncRedisFeed(f"redis://127.0.0.1:{port}/0?stream=k", "CA6", rec.message, lambda: False)


class socket_closed_port:
    """A loopback port nothing listens on (bound then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------- replay's asyncio tap


@pytest.mark.parametrize("kind", ["stream", "list"])
def test_run_call_reads_a_foreign_redis_feed(rds, kind: str) -> None:
    """An Exotel target that writes each media frame's 'transcript' to a Redis stream (or list) per call
    in its own schema; run_call (replay/smoke) with --transcripts redis://... and a mapping sees them all.
    The tap gets the URL with its {call_sid}: a per-call list is only valid that way."""
    client, prefix = rds

    async def main() -> tuple:
        import redis.asyncio as aredis

        pub = aredis.Redis.from_url(REDIS)

        async def handler(ws) -> None:
            seq, sid = 0, None
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg["event"] == "start":
                    sid = msg["start"]["call_sid"]
                elif msg["event"] == "media":
                    seq += 1
                    await publish(sid, {"seq": seq, "type": "final", "text": f"frame {seq}", "confidence": 1.0,
                                        "timestamp_ms": int(time.time() * 1000)})
                elif msg["event"] == "stop":
                    await publish(sid, {"seq": seq + 1, "type": "end", "text": ""})
                    await ws.close()

        async def publish(sid: str, entry: dict) -> None:
            if kind == "stream":
                await pub.xadd(f"{prefix}call:{sid}", entry)
            else:
                await pub.rpush(f"{prefix}call:{sid}", orjson.dumps(entry))

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            script = CallScript.from_pcm(b"\x00\x00" * 8000, CallOptions(call_sid="CA7", stream_sid="ST7",
                                                                         frame_ms=100))
            mapping = FieldMapping.parse("text=text,is_final=type==final,seq=seq,ended=type==end")
            result = await run_call(f"ws://127.0.0.1:{port}", script, speed=0, wait_final_s=DEADLINE_S,
                                    transcripts_url=f"{_base()}?{kind}={prefix}call:{{call_sid}}", mapping=mapping)
        await pub.aclose()
        return result

    started = time.monotonic()
    result = asyncio.run(main())
    assert result.connected and result.stop_sent, result.errors
    assert result.feed_messages == 11 and result.feed_unrecognised == 0  # 10 frames + the end marker
    assert [t.text for t in result.transcripts] == [f"frame {k}" for k in range(1, 11)]
    assert result.call_ended is not None and time.monotonic() - started < DEADLINE_S  # the end marker ended the wait


@pytest.mark.parametrize("args, message", [
    (("replay", "fixtures/audio/call.wav", "--url", "ws://127.0.0.1:9/x", "--transcripts", "redis://127.0.0.1/0"),
     "give exactly one of ?stream=KEY"),
    (("replay", "fixtures/audio/call.wav", "--url", "ws://127.0.0.1:9/x", "--transcripts", "ws://127.0.0.1:9",
      "--feed-map", "txt=a"), "--feed-map: feed mapping: unknown field(s) txt"),
    (("soak", str(BAD_MAP_TOML), "--target", "ws://127.0.0.1:9/x"), "feed.map: feed mapping: unknown field(s) txt"),
    (("replay", "fixtures/audio/call.wav", "--url", "ws://127.0.0.1:9/x", "--transcripts", "ftp://127.0.0.1:9/feed"),
     "use ws://, wss://, redis://, rediss://, http(s):// (SSE or JSON polling) or webhook://HOST:PORT/PATH"),
])
def test_cli_rejects_bad_feed_options(args: tuple[str, ...], message: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rtaa_cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.replace("\n", " ") and "Traceback" not in proc.stderr
