"""Ingest: bad input of each kind gets its close code and reason, is counted by kind, and does not touch a
concurrent good call; limits (size, rate, capacity); a second stream of the same call; auth; health and
metrics on the same port."""
from __future__ import annotations

import asyncio
import base64

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest import SUPERSEDED_REASON
from helpers.pipeline import (FRAME, RATE, Caller, Feed, assert_tiles, frames_of, http_get, pipeline, run,
                                   speech_like, until)

GOOD_FRAME = b"\x01\x00" * (FRAME // 2)


async def _started(server, sid: str, rate: int = RATE) -> Caller:
    c = await Caller.open(server, sid, rate=rate)
    await c.start()
    return c


def _media_json(payload: str) -> str:
    return orjson.dumps({"event": "media", "stream_sid": "S", "sequence_number": "3",
                         "media": {"chunk": "1", "timestamp": "36", "payload": payload}}).decode()


async def _bad_cases(server) -> dict[str, tuple[int | None, str]]:
    out: dict[str, tuple[int | None, str]] = {}

    c = await _started(server, "CA-json")
    await c.ws.send('{"event": "media", "media": ')
    out["malformed_json"] = await c.closed()

    c = await _started(server, "CA-b64")
    await c.ws.send(_media_json("!!!not base64!!!"))
    out["bad_base64"] = await c.closed()

    c = await Caller.open(server, "CA-early")
    await c.media(GOOD_FRAME)
    out["media_before_start"] = await c.closed()

    c = await _started(server, "CA-bin")
    await c.ws.send(b"\x00\x01\x02")
    out["binary_frame"] = await c.closed()

    c = await Caller.open(server, "CA-rate", rate=11025)
    await c.start()
    out["wrong_sample_rate"] = await c.closed()

    c = await _started(server, "CA-big")
    await c.ws.send(_media_json(base64.b64encode(b"\x00" * 300_000).decode()))
    out["oversize"] = await c.closed()

    c = await _started(server, "CA-after")
    await c.media(GOOD_FRAME)
    await c.stop()
    await c.media(GOOD_FRAME)
    out["media_after_stop"] = await c.closed()

    c = await _started(server, "CA-flood")
    for _ in range(300):  # burst 60 at 50 msg/s in this test's config
        await c.media(GOOD_FRAME)
    out["rate_limit"] = await c.closed()

    # Unknown event: counted, logged, ignored -- the stream goes on and ends normally.
    c = await _started(server, "CA-unknown")
    await c.ws.send('{"event": "brand_new_event", "stream_sid": "S"}')
    await c.media(GOOD_FRAME)
    await c.stop()
    feed_closed = asyncio.ensure_future(c.closed(3.0))
    await until(lambda: "CA-unknown" not in server.bus.channels, 10, "the unknown-event call to finish")
    await c.ws.close()
    out["unknown_event"] = await feed_closed
    return out


def test_bad_input_of_each_kind_is_closed_counted_and_leaves_a_concurrent_call_alone() -> None:
    async def main():
        ingest = IngestConfig(max_messages_per_s=50.0, rate_burst=60.0)
        async with pipeline(ingest=ingest) as (server, emu):
            feed = await Feed.open(server, "CA-good")
            good = await _started(server, "CA-good")
            pcm = speech_like(6)
            good_task = asyncio.ensure_future(good.paced(frames_of(pcm), 0.036))
            outcomes = await _bad_cases(server)
            await good_task
            await good.stop()
            await feed.wait_ended(15)
            await good.ws.close()
            return outcomes, server.metrics, feed.transcripts(final=True), emu.stats(), len(pcm) / (RATE * 2 / 1000)

    outcomes, metrics, finals, stats, total_ms = run(main(), 90)
    assert outcomes["malformed_json"] == (1007, "message is not valid JSON")
    assert outcomes["bad_base64"] == (1007, "media.payload: invalid base64")
    assert outcomes["media_before_start"] == (1008, "media before start")
    assert outcomes["binary_frame"] == (1003, "binary frames are not Exotel messages")
    assert outcomes["wrong_sample_rate"][0] == 1007 and "11025" in outcomes["wrong_sample_rate"][1]
    assert outcomes["oversize"][0] == 1009
    assert outcomes["media_after_stop"] == (1008, "media after stop")
    assert outcomes["rate_limit"] == (1008, "message rate limit exceeded")
    assert outcomes["unknown_event"][0] == 1000  # closed by the caller, after a normal call
    for kind in ("malformed_json", "bad_base64", "media_before_start", "binary_frame", "wrong_sample_rate",
                 "media_after_stop", "rate_limit", "unknown_event"):
        assert metrics.value("rtaa_bad_input_total", kind=kind) == 1, kind
    assert metrics.value("rtaa_audio_after_end_total") == 1
    # The good call: complete transcript, one provider stream, no 1011 anywhere.
    assert_tiles(finals, total_ms)
    assert stats["interactions"]["CA-good"]["connections"] == 1
    assert stats["totals"]["duplicates"] == 0 and stats["totals"]["closes_1011"] == 0


def test_bad_input_is_counted_by_the_rule_broken_not_by_words_its_reason_quotes() -> None:
    """A chunk number "base64" is a mistyped field (invalid_field), though the reason quotes "base64"."""
    async def main():
        async with pipeline() as (server, _):
            c = await _started(server, "CA-quoted")
            await c.ws.send(orjson.dumps({"event": "media", "stream_sid": "S", "sequence_number": "3",
                                          "media": {"chunk": "base64", "timestamp": "36",
                                                    "payload": base64.b64encode(GOOD_FRAME).decode()}}).decode())
            return await c.closed(), server.metrics

    (code, reason), metrics = run(main(), 30)
    assert code == 1007 and "base64" in reason, reason
    assert metrics.value("rtaa_bad_input_total", kind="invalid_field") == 1
    assert metrics.value("rtaa_bad_input_total", kind="bad_base64") == 0


def test_calls_beyond_capacity_are_told_to_try_again_later() -> None:
    async def main():
        async with pipeline(ingest=IngestConfig(max_calls=1)) as (server, _):
            first = await _started(server, "CA-1")
            await first.media(GOOD_FRAME)
            second = await _started(server, "CA-2")
            code = await second.closed()
            await first.stop()
            await first.ws.close()
            return code, server.metrics

    code, metrics = run(main(), 30)
    assert code == (1013, "at capacity, try again later")
    assert metrics.value("rtaa_caller_closes_total", code="1013") == 1


def test_a_second_stream_for_a_call_supersedes_the_first_and_keeps_one_provider_stream() -> None:
    async def main():
        async with pipeline() as (server, emu):
            feed = await Feed.open(server, "CA-dup")
            pcm = speech_like(6)
            frames = frames_of(pcm)
            half = len(frames) // 2
            first = await Caller.open(server, "CA-dup", "ST-first")
            await first.start()
            await first.paced(frames[:half], 0.01)
            # Exotel retries / hands over: a new stream (new stream_sid, same call_sid) while the first is live.
            second = await Caller.open(server, "CA-dup", "ST-second")
            await second.start()
            old_close = await first.closed()
            await second.paced(frames[half:], 0.01)
            await second.stop()
            await feed.wait_ended(15)
            await second.ws.close()
            ended = [m for m in feed.messages if m["type"] == "call_ended"]
            return old_close, emu.stats(), feed.transcripts(final=True), ended, server.metrics, len(pcm) / (RATE * 2 / 1000)

    old_close, stats, finals, ended, metrics, total_ms = run(main(), 60)
    assert old_close == (1001, SUPERSEDED_REASON)
    assert stats["interactions"]["CA-dup"]["connections"] == 1
    assert stats["totals"]["duplicates"] == 0
    assert_tiles(finals, total_ms)  # the audio continued from the new stream into the same provider stream
    assert {f["stream_sid"] for f in finals} >= {"ST-second"}
    assert len(ended) == 1
    assert metrics.value("rtaa_ingest_streams_superseded_total") == 1


def test_health_metrics_and_unknown_paths_share_the_port() -> None:
    async def main():
        async with pipeline() as (server, _):
            base = server.http_url
            return [await asyncio.to_thread(http_get, base + p) for p in ("/health", "/metrics", "/nope")]

    (hs, hbody, htype), (ms, mbody, mtype), (ns, _, _) = run(main(), 30)
    assert hs == 200 and htype == "application/json"
    assert orjson.loads(hbody)["status"] == "ok"
    assert ms == 200 and mtype.startswith("text/plain")
    for name in ("rtaa_calls_active", "rtaa_frames_in_total", "rtaa_provider_connections_opened_total",
                 "rtaa_provider_duplicate_opens_prevented_total", "rtaa_pipeline_added_latency_seconds_bucket",
                 "rtaa_end_to_end_latency_seconds", "rtaa_queue_depth"):
        assert name.encode() in mbody, name
    assert ns == 404


def test_health_is_503_with_a_reason_when_the_provider_is_unreachable() -> None:
    async def main():
        async with pipeline() as (server, emu):
            await emu.__aexit__(None, None, None)  # the provider goes away
            c = await _started(server, "CA-down")
            await c.media(GOOD_FRAME)
            code = await c.closed(30)
            status, body, _ = await asyncio.to_thread(http_get, server.http_url + "/health")
            return code, status, orjson.loads(body)

    code, status, body = run(main(), 60)
    assert code == (1011, "transcription provider unavailable")
    assert status == 503 and body["status"] == "degraded"
    assert any("deepgram" in r for r in body["reasons"]), body


@pytest.mark.parametrize("creds, ok", [(("exotel", "s3cret"), True), (("exotel", "wrong"), False), (None, False)])
def test_basic_auth_is_checked_at_the_handshake(creds, ok) -> None:
    async def main():
        ingest = IngestConfig(auth="basic", basic_user="exotel", basic_password="s3cret")
        async with pipeline(ingest=ingest) as (server, _):
            headers = []
            if creds:
                headers.append(("Authorization", "Basic " + base64.b64encode(":".join(creds).encode()).decode()))
            try:
                ws = await connect(server.ingest_url, additional_headers=headers, proxy=None)
            except InvalidStatus as exc:
                return exc.response.status_code, server.metrics
            await ws.close()
            return 101, server.metrics

    status, metrics = run(main(), 30)
    assert status == (101 if ok else 401)
    assert metrics.value("rtaa_bad_input_total", kind="auth") == (0 if ok else 1)


def test_jwt_auth_accepts_a_valid_rs256_token_and_rejects_others() -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    now = int(time.time())
    tokens = {
        "valid": jwt.encode({"sub": "exotel", "exp": now + 60}, key, algorithm="RS256"),
        "expired": jwt.encode({"sub": "exotel", "exp": now - 60}, key, algorithm="RS256"),
        "wrong_key": jwt.encode({"sub": "exotel", "exp": now + 60}, other, algorithm="RS256"),
        "no_exp": jwt.encode({"sub": "exotel"}, key, algorithm="RS256"),
    }

    async def main():
        async with pipeline(ingest=IngestConfig(auth="jwt", jwt_public_key=pem)) as (server, _):
            out = {}
            for name, token in tokens.items():
                try:
                    ws = await connect(server.ingest_url, additional_headers=[("Authorization", f"Bearer {token}")],
                                       proxy=None)
                except InvalidStatus as exc:
                    out[name] = exc.response.status_code
                else:
                    out[name] = 101
                    await ws.close()
            return out

    assert run(main(), 30) == {"valid": 101, "expired": 401, "wrong_key": 401, "no_exp": 401}


def test_a_dropped_stream_resumes_within_the_grace_and_ends_after_it() -> None:
    """Disconnect scenario: the caller's socket drops mid-call (no stop) and a new stream of the same call
    arrives within the grace: same provider stream, continuous transcript. A drop with no resume ends the
    call after the grace with reason "stream dropped". Per-call state is freed either way."""
    async def main():
        async with pipeline(ingest=IngestConfig(reconnect_grace_s=1.0)) as (server, emu):
            feed = await Feed.open(server, "CA-drop")
            pcm = speech_like(4)
            frames = frames_of(pcm)
            half = len(frames) // 2
            first = await Caller.open(server, "CA-drop", "ST-a")
            await first.start()
            await first.paced(frames[:half], 0.005)
            first.ws.transport.abort()  # TCP drop: no close frame, no stop
            second = await Caller.open(server, "CA-drop", "ST-b")
            await second.start()
            await second.paced(frames[half:], 0.005)
            await second.stop()
            await feed.wait_ended(15)
            await second.ws.close()
            resumed = (feed.transcripts(final=True), [m for m in feed.messages if m["type"] == "call_ended"])

            lone = await Feed.open(server, "CA-gone")
            gone = await Caller.open(server, "CA-gone")
            await gone.start()
            await gone.paced(frames[:10], 0.005)
            gone.ws.transport.abort()
            await lone.wait_ended(10)
            ended_gone = [m for m in lone.messages if m["type"] == "call_ended"]
            await until(lambda: not server.bus.channels and not server.worker.interactions, 5, "per-call state freed")
            return resumed, ended_gone, emu.stats(), len(pcm) / (RATE * 2 / 1000), server

    (finals, ended), ended_gone, stats, total_ms, server = run(main(), 60)
    assert stats["interactions"]["CA-drop"]["connections"] == 1
    assert_tiles(finals, total_ms)
    assert [e["reason"] for e in ended] == ["stopped"]
    assert [e["reason"] for e in ended_gone] == ["stream dropped"]
    assert server.ingest.current == {} and server.hub._by_call == {}
