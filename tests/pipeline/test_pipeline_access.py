"""Access control of `rtaa serve` (issue 10): who may read a feed, take over a call, see /health and /metrics.
Real RS256 tokens made here, real sockets, the real emulator behind deepgram-sdk."""
from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest import OWNED_REASON, PRINCIPAL_CAP_REASON
from rtaa_cli.pipeline.transcripts import NOT_ENTITLED_REASON
from helpers.access import PEM, bearer, http_status, token
from helpers.pipeline import RATE, Caller, Feed, assert_tiles, frames_of, pipeline, run, speech_like

async def feed_status(url: str, headers: list[tuple[str, str]]) -> int:
    try:
        ws = await connect(url, additional_headers=headers, proxy=None)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


def test_feeds_need_auth_and_entitlement_and_admin_endpoints_can_be_protected() -> None:
    async def main():
        ingest = IngestConfig(auth="jwt", jwt_public_key=PEM, admin_auth=True)
        async with pipeline(ingest=ingest) as (server, _):
            tu = server.transcripts_url
            statuses = {
                "anon_call": await feed_status(tu + "/CA-a", []),
                "anon_firehose": await feed_status(tu, []),
                "bad_token": await feed_status(tu + "/CA-a", bearer("x.y.z")),
                "other_firehose": await feed_status(tu, bearer(token("bob"))),
                "reader_firehose": await feed_status(tu, bearer(token("ops", "reader"))),
            }
            for path in ("/health", "/metrics"):
                for who, hdr in (("anon", []), ("alice", bearer(token("alice"))),
                                 ("reader", bearer(token("ops", "reader")))):
                    statuses[f"{path}_{who}"] = await asyncio.to_thread(http_status, server.http_url + path, hdr)

            own = Feed(await connect(tu + "/CA-a", additional_headers=bearer(token("alice")), proxy=None))
            early_other = Feed(await connect(tu + "/CA-a", additional_headers=bearer(token("bob")), proxy=None))
            reader = Feed(await connect(tu, additional_headers=bearer(token("ops", "reader")), proxy=None))
            pcm = speech_like(3)
            caller = await Caller.open(server, "CA-a", additional_headers=bearer(token("alice")))
            await caller.start()
            await caller.paced(frames_of(pcm)[:20], 0.002)
            late_other = Feed(await connect(tu + "/CA-a", additional_headers=bearer(token("bob")), proxy=None))
            await caller.paced(frames_of(pcm)[20:], 0.002)
            await caller.stop()
            await own.wait_ended(15)
            await reader.wait_ended(15)
            await early_other.wait_ended(5)
            await late_other.wait_ended(5)
            await caller.ws.close()
            closes = [(f.ws.close_code, f.ws.close_reason) for f in (early_other, late_other)]
            await reader.close()
            return statuses, own, early_other, late_other, reader, closes, len(pcm) / (RATE * 2 / 1000), server

    statuses, own, early, late, reader, closes, total_ms, server = run(main(), 60)
    assert statuses == {
        "anon_call": 401, "anon_firehose": 401, "bad_token": 401, "other_firehose": 403, "reader_firehose": 101,
        "/health_anon": 401, "/health_alice": 403, "/health_reader": 200,
        "/metrics_anon": 401, "/metrics_alice": 403, "/metrics_reader": 200,
    }
    assert_tiles(own.transcripts(final=True), total_ms)  # the streamer's own subject reads its call
    assert_tiles([m for m in reader.transcripts(final=True) if m["interaction_id"] == "CA-a"], total_ms)
    assert closes == [(1008, NOT_ENTITLED_REASON)] * 2
    assert early.messages == [] and late.messages == []  # another subject never sees a message of the call
    assert server.metrics.value("rtaa_bad_input_total", kind="not_entitled") == 2 + 3  # 2 feeds + 3 HTTP 403


def test_a_call_cannot_be_taken_over_by_another_principal_even_inside_the_resume_grace() -> None:
    async def main():
        async with pipeline(ingest=IngestConfig(auth="jwt", jwt_public_key=PEM, reconnect_grace_s=5.0)) as (server, emu):
            feed = Feed(await connect(server.transcripts_url + "/CA-v", additional_headers=bearer(token("victim")),
                                      proxy=None))
            pcm = speech_like(4)
            frames = frames_of(pcm)
            third = len(frames) // 3
            victim = await Caller.open(server, "CA-v", "ST-v1", additional_headers=bearer(token("victim")))
            await victim.start()
            await victim.paced(frames[:third], 0.003)
            attacker = await Caller.open(server, "CA-v", "ST-evil", additional_headers=bearer(token("mallory")))
            await attacker.start()
            await attacker.media(frames[0])
            live = await attacker.closed()
            await victim.paced(frames[third:2 * third], 0.003)
            victim.ws.transport.abort()  # the victim drops: the call waits in its resume grace
            attacker2 = await Caller.open(server, "CA-v", "ST-evil2", additional_headers=bearer(token("mallory")))
            await attacker2.start()
            in_grace = await attacker2.closed()
            resumed = await Caller.open(server, "CA-v", "ST-v2", additional_headers=bearer(token("victim")))
            await resumed.start()
            await resumed.paced(frames[2 * third:], 0.003)
            await resumed.stop()
            await feed.wait_ended(15)
            await resumed.ws.close()
            return live, in_grace, feed, emu.stats(), len(pcm) / (RATE * 2 / 1000), server

    live, in_grace, feed, stats, total_ms, server = run(main(), 60)
    assert live == (1008, OWNED_REASON) and in_grace == (1008, OWNED_REASON)
    finals = feed.transcripts(final=True)
    assert_tiles(finals, total_ms)  # byte-complete: every frame of the victim, none of the attacker's
    assert {f["stream_sid"] for f in finals} <= {"ST-v1", "ST-v2"}
    assert [m["reason"] for m in feed.messages if m["type"] == "call_ended"] == ["stopped"]
    assert stats["interactions"]["CA-v"]["connections"] == 1
    assert server.metrics.value("rtaa_bad_input_total", kind="call_hijack") == 2


def test_one_principal_cannot_take_every_call_slot() -> None:
    async def main():
        ingest = IngestConfig(auth="jwt", jwt_public_key=PEM, max_calls=4, max_calls_per_principal=2)
        async with pipeline(ingest=ingest) as (server, _):
            squat = [await Caller.open(server, f"CA-s{i}", additional_headers=bearer(token("squatter")))
                     for i in range(3)]
            for c in squat:
                await c.start()
            refused = await squat[2].closed()
            other = await Caller.open(server, "CA-ok", additional_headers=bearer(token("legit")))
            await other.start()
            feed = Feed(await connect(server.transcripts_url + "/CA-ok", additional_headers=bearer(token("legit")),
                                      proxy=None))
            await other.paced(frames_of(speech_like(1)), 0.002)
            await other.stop()
            await feed.wait_ended(15)
            for c in (*squat, other):
                await c.ws.close()
            return refused, feed

    refused, feed = run(main(), 60)
    assert refused == (1013, PRINCIPAL_CAP_REASON)
    assert feed.transcripts(final=True), "the other principal's call was served"


@pytest.mark.parametrize("claims, ok", [
    ({}, True), ({"aud": "other"}, False), ({"iss": "evil"}, False), ({"exp": int(time.time()) + 7200}, False),
])
def test_jwt_audience_issuer_and_lifetime_are_enforced(claims, ok) -> None:
    base = {"aud": "rtaa", "iss": "https://idp.example"}

    async def main():
        ingest = IngestConfig(auth="jwt", jwt_public_key=PEM, jwt_audience="rtaa", jwt_issuer="https://idp.example",
                              jwt_max_lifetime_s=3600)
        async with pipeline(ingest=ingest) as (server, _):
            return await feed_status(server.ingest_url, bearer(token("alice", **{**base, **claims})))

    assert run(main(), 30) == (101 if ok else 401)


@pytest.mark.parametrize("args, message", [
    (["--auth", "jwt", "--jwt-public-key", "KEYFILE"], "--jwt-public-key is not a PEM public key"),
    (["--port", "99999"], "--port must be 0-65535"),
])
def test_serve_usage_errors_exit_2_without_a_traceback(tmp_path, args, message) -> None:
    import subprocess
    import sys

    bad = tmp_path / "text.wav"
    bad.write_bytes(b"RIFF....WAVEfmt not a key")
    argv = [str(bad) if a == "KEYFILE" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "rtaa_cli", "serve", "--port", "0", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
