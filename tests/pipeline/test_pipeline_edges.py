"""Documented pipeline edges that had no test: a feed subscriber that stops reading, the interaction key
(``custom:<name>`` and ``stream_sid``), and a new stream of a call whose stopped stream is still
finalising. Real emulator, real deepgram-sdk, real sockets on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest import SUPERSEDED_REASON
from rtaa_cli.pipeline.server import PipelineServer
from helpers.pipeline import RATE, Caller, Feed, assert_tiles, frames_of, pipeline, run, speech_like, until

MS_PER_BYTE = 1000 / (RATE * 2)


def _ms(pcm: bytes) -> float:
    return len(pcm) * MS_PER_BYTE


def _close_of(ws: ClientConnection) -> tuple[int | None, str]:
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


# -- 1. a subscriber that never reads -------------------------------------------------------------

async def _stalled_subscriber(server: PipelineServer, interaction_id: str) -> ClientConnection:
    """A feed subscriber that never reads, made deterministic:

    - ``transport.pause_reading()`` right after the handshake: not one byte of the feed leaves the kernel;
    - ``SO_RCVBUF`` at the kernel minimum (~2 KB) and ``TCP_MAXSEG`` 536, both set before ``connect`` (the
      SYN carries them): the server's TCP send buffer is sized from the peer's MSS, so it stays small
      (~28 KB here instead of MBs with loopback's 64 KB MSS).
    So once that send buffer, websockets' 32 KiB write limit and the ~2 KB receive buffer are full (measured
    here: ~80 KB, 81 messages of ~1 KB), the server's send to this subscriber blocks in drain and its bounded
    queue fills with the next ``subscriber_queue`` messages. The call below publishes about three times that
    (asserted), so the outcome depends on byte counts, not on timing.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(f"{server.transcripts_url}/{interaction_id}", sock=sock, proxy=None)
    ws.transport.pause_reading()
    return ws


def test_a_subscriber_that_never_reads_is_closed_1008_and_nothing_else_is_affected() -> None:
    # Continuous speech: a 5 s window is finalised every 5 s with interims every 1 s in between, one word per
    # 300 ms: ~1 KB of feed per audio second. 240 s of it in 1 s frames, sent 100x real time (so with the
    # audio rate limit off: this test is about the feed, not the caller).
    pcm = speech_like(60, on_s=4.0, off_s=0.0)
    frames = frames_of(pcm, RATE * 2)

    async def main() -> dict[str, Any]:
        async with pipeline(subscriber_queue=8, ingest=IngestConfig(max_audio_speed=0)) as (server, emu):
            iid = "CA-slow-feed"
            slow = await _stalled_subscriber(server, iid)
            reader = await Feed.open(server, iid)
            await until(lambda: server.metrics.value("rtaa_transcript_subscribers") == 2, 5,
                        "both subscribers to be registered")
            caller = await Caller.open(server, iid)
            await caller.start()
            await caller.paced(frames, 0.01)
            await caller.stop()
            await reader.wait_ended(20)
            too_slow = server.metrics.value("rtaa_transcript_subscribers_too_slow_total")
            caller_close = _close_of(caller.ws)
            # Now let the stalled subscriber read: what reached its socket, then the server's close frame.
            slow.transport.resume_reading()
            got: list[dict[str, Any]] = []
            try:
                async with asyncio.timeout(10):
                    async for raw in slow:
                        got.append(orjson.loads(raw))
            except ConnectionClosed:
                pass
            except TimeoutError:
                raise AssertionError("the stalled subscriber was never closed") from None
            await asyncio.gather(reader._task)  # the reader ends with the server's close
            await until(lambda: server.metrics.value("rtaa_transcript_subscribers") == 0, 5, "subscribers freed")
            await caller.ws.close()
            return {"too_slow": too_slow, "slow_close": _close_of(slow), "got": got, "reader": reader,
                    "reader_close": _close_of(reader.ws), "caller_close": caller_close, "stats": emu.stats(),
                    "metrics": server.metrics}

    r = run(main(), 60)
    reader: Feed = r["reader"]
    assert reader.messages[-1]["type"] == "call_ended" and r["reader_close"] == (1000, "call ended")
    feed_bytes = sum(len(orjson.dumps(m)) for m in reader.messages)
    assert feed_bytes > 200_000, f"the call published only {feed_bytes} feed bytes: too few to stall a socket"
    assert r["slow_close"] == (1008, "subscriber too slow"), r["slow_close"]
    assert r["too_slow"] == 1 and r["metrics"].value("rtaa_transcript_subscribers_too_slow_total") == 1
    # The stalled subscriber got an in-order prefix of the feed, nothing after its queue overflowed.
    got = r["got"]
    assert got == reader.messages[:len(got)] and len(got) < len(reader.messages) - 8, (len(got), len(reader.messages))
    # The reading subscriber and the call: unaffected, the transcript complete.
    finals = reader.transcripts(final=True)
    assert_tiles(finals, _ms(pcm))
    assert [m["seq"] for m in reader.transcripts()] == list(range(1, len(reader.transcripts()) + 1))
    assert r["caller_close"] == (None, "")  # the server never closed the caller
    inter = r["stats"]["interactions"]["CA-slow-feed"]
    assert inter["connections"] == 1 and r["stats"]["totals"]["closes_1011"] == 0


# -- 2. the interaction key -----------------------------------------------------------------------

async def _start_with(c: Caller, custom: dict[str, str] | None) -> None:
    await c.ws.send(c.enc.connected())
    await c.ws.send(c.enc.start(custom_parameters=custom))


def test_custom_interaction_key_joins_streams_of_different_call_sids_and_requires_the_parameter() -> None:
    pcm = speech_like(6)
    frames = frames_of(pcm)
    half = len(frames) // 2

    async def main() -> dict[str, Any]:
        async with pipeline(ingest=IngestConfig(interaction_key="custom:conversation")) as (server, emu):
            feed = await Feed.open(server, "CONV-1")
            first = await Caller.open(server, "CA-leg-a", "ST-a")
            await _start_with(first, {"conversation": "CONV-1", "agent": "7"})
            await first.paced(frames[:half], 0.005)
            # A different call_sid with the same conversation: the same interaction, so the newest stream wins.
            second = await Caller.open(server, "CA-leg-b", "ST-b")
            await _start_with(second, {"conversation": "CONV-1"})
            first_close = await first.closed()
            await second.paced(frames[half:], 0.005)
            await second.stop()
            await feed.wait_ended(15)
            second_close = _close_of(second.ws)
            await second.ws.close()

            missing = await Caller.open(server, "CA-bare")
            await _start_with(missing, {"agent": "7"})
            empty = await Caller.open(server, "CA-empty")
            await _start_with(empty, {"conversation": ""})
            closes = (await missing.closed(), await empty.closed())
            return {"feed": feed, "first_close": first_close, "second_close": second_close, "closes": closes,
                    "stats": emu.stats(), "metrics": server.metrics, "channels": set(server.bus.channels)}

    r = run(main(), 60)
    assert r["first_close"] == (1001, SUPERSEDED_REASON)
    assert r["second_close"] == (None, "")
    reason = "start.custom_parameters.conversation: missing (interaction key)"
    assert r["closes"] == ((1007, reason), (1007, reason))
    # One provider stream, tagged with the conversation id (never the call_sids), one call on the feed.
    assert set(r["stats"]["interactions"]) == {"CONV-1"}, r["stats"]["interactions"]
    assert r["stats"]["interactions"]["CONV-1"]["connections"] == 1
    assert r["stats"]["totals"]["duplicates"] == 0
    feed: Feed = r["feed"]
    assert [(m["type"], m.get("stream_sid")) for m in feed.messages if m["type"] != "transcript"] == \
        [("call_started", "ST-a"), ("call_ended", None)]
    assert {m["interaction_id"] for m in feed.messages} == {"CONV-1"}
    finals = feed.transcripts(final=True)
    assert_tiles(finals, _ms(pcm))  # the second leg's audio continued the same provider stream
    assert finals[-1]["stream_sid"] == "ST-b"
    m = r["metrics"]
    assert m.value("rtaa_ingest_streams_superseded_total") == 1
    assert m.value("rtaa_calls_total") == 1
    assert m.value("rtaa_bad_input_total", kind="invalid_field") == 2
    assert m.value("rtaa_caller_closes_total", code="1007") == 2
    assert r["channels"] == set()  # the refused starts opened nothing


def test_stream_sid_interaction_key_keeps_two_streams_of_one_call_apart() -> None:
    pcm = speech_like(4)
    frames = frames_of(pcm)

    async def main() -> dict[str, Any]:
        async with pipeline(ingest=IngestConfig(interaction_key="stream_sid")) as (server, emu):
            feeds = [await Feed.open(server, sid) for sid in ("ST-1", "ST-2")]
            callers = [await Caller.open(server, "CA-same", sid) for sid in ("ST-1", "ST-2")]
            for c in callers:
                await c.start()

            async def talk(c: Caller) -> None:
                await c.paced(frames, 0.005)
                await c.stop()

            await asyncio.gather(*(talk(c) for c in callers))
            for f in feeds:
                await f.wait_ended(15)
            closes = [_close_of(c.ws) for c in callers]
            for c in callers:
                await c.ws.close()
            return {"feeds": feeds, "closes": closes, "stats": emu.stats(), "metrics": server.metrics}

    r = run(main(), 60)
    assert r["closes"] == [(None, ""), (None, "")]  # neither superseded the other
    inter = r["stats"]["interactions"]
    assert set(inter) == {"ST-1", "ST-2"} and all(v["connections"] == 1 for v in inter.values()), inter
    for sid, feed in zip(("ST-1", "ST-2"), r["feeds"]):
        assert {m["interaction_id"] for m in feed.messages} == {sid}
        assert_tiles(feed.transcripts(final=True), _ms(pcm))
    assert r["metrics"].value("rtaa_ingest_streams_superseded_total") == 0
    assert r["metrics"].value("rtaa_calls_total") == 2


# -- 3. a new stream while the stopped one is finalising -----------------------------------------

def _provider_conns(emu, iid: str) -> list[dict[str, Any]]:
    return sorted((c for c in emu.stats()["connections"] if c["interaction"] == iid), key=lambda c: c["id"])


def test_a_new_stream_during_the_previous_streams_finalisation_starts_a_new_call_after_it() -> None:
    """Stream A sends stop; its provider stream got CloseStream and its finals are still 1 s away (the
    emulator's result latency). Stream B of the same call_sid starts now and sends all its audio.
    Documented outcome (docs/serve.md, "A second stream for the same call"): A's call finishes first (its
    finals, then call_ended), then B is a new call with the same id (call_started, seq and stream time
    from the start), its audio queued meanwhile and none lost; never two provider streams at once."""
    iid = "CA-again"
    pcm_a, pcm_b = speech_like(3), speech_like(4)

    async def main() -> dict[str, Any]:
        async with pipeline(EmulatorConfig(result_latency_ms=1000.0, seed=11)) as (server, emu):
            firehose = await Feed.open(server)
            per_call = await Feed.open(server, iid)
            a = await Caller.open(server, iid, "ST-a")
            await a.start()
            await a.paced(frames_of(pcm_a), 0.005)
            await a.stop()
            await until(lambda: any(c["close_stream"] for c in _provider_conns(emu, iid)), 5,
                        "the first stream's CloseStream to reach the provider")
            b = await Caller.open(server, iid, "ST-b")
            await b.start()
            await until(lambda: server.metrics.value("rtaa_ingest_streams_total") == 2, 5, "the second start")
            # Precondition, checked rather than assumed: A was still finalising when B's start was taken.
            conns = _provider_conns(emu, iid)
            assert len(conns) == 1 and conns[0]["closed_at"] is None, conns
            emu.set_faults(result_latency_ms=0.0)  # B's own results need not wait
            await b.paced(frames_of(pcm_b), 0.005)
            await b.stop()
            await until(lambda: sum(m["type"] == "call_ended" for m in firehose.messages) == 2, 15,
                        "both calls to end on the firehose")
            await per_call.wait_ended(5)
            b_close = _close_of(b.ws)
            for c in (a, b):
                await c.ws.close()
            await until(lambda: not server.bus.channels and not server.worker.interactions, 5, "call state freed")
            return {"fire": firehose.messages, "per_call": per_call.messages, "per_call_close": _close_of(per_call.ws),
                    "conns": _provider_conns(emu, iid), "stats": emu.stats(), "b_close": b_close,
                    "metrics": server.metrics}

    r = run(main(), 60)
    fire = [m for m in r["fire"] if m["interaction_id"] == iid]
    kinds = [m["type"] for m in fire]
    ended_at = kinds.index("call_ended")
    call_a, call_b = fire[:ended_at + 1], fire[ended_at + 1:]
    # Two calls, one after the other, each framed by its own call_started/call_ended.
    assert (call_a[0]["type"], call_a[0]["stream_sid"]) == ("call_started", "ST-a"), call_a[0]
    assert call_a[-1]["type"] == "call_ended" and call_a[-1]["reason"] == "stopped"
    assert call_b and (call_b[0]["type"], call_b[0].get("stream_sid")) == ("call_started", "ST-b"), call_b[:1]
    assert call_b[-1]["type"] == "call_ended" and call_b[-1]["reason"] == "stopped"
    for call, pcm in ((call_a, pcm_a), (call_b, pcm_b)):
        transcripts = [m for m in call if m["type"] == "transcript"]
        assert [m["seq"] for m in transcripts] == list(range(1, len(transcripts) + 1))
        assert_tiles([m for m in transcripts if m["is_final"]], _ms(pcm))  # complete: nothing lost, nothing extra
    assert {m["stream_sid"] for m in call_a if m["type"] == "transcript"} == {"ST-a"}
    assert {m["stream_sid"] for m in call_b if m["type"] == "transcript"} == {"ST-b"}
    # A per-call subscriber of the first call got that call whole and was closed after its call_ended.
    assert r["per_call"] == call_a and r["per_call_close"] == (1000, "call ended")
    # The provider: two connections, one after the other, each with its own stream's audio, both closed 1000.
    conn_a, conn_b = r["conns"]
    assert conn_a["closed_at"] <= conn_b["opened_at"], (conn_a, conn_b)
    assert (conn_a["audio_bytes"], conn_b["audio_bytes"]) == (len(pcm_a), len(pcm_b))
    assert conn_a["close_code"] == conn_b["close_code"] == 1000 and conn_a["close_stream"] and conn_b["close_stream"]
    inter = r["stats"]["interactions"][iid]
    assert inter["connections"] == 2 and inter["max_open"] == 1 and inter["duplicates"] == 0
    m = r["metrics"]
    assert m.value("rtaa_calls_total") == 2
    assert m.value("rtaa_provider_duplicate_connections_total") == 0
    assert m.value("rtaa_finalize_timeouts_total") == 0
    assert m.value("rtaa_audio_after_end_total") == 0
    assert r["b_close"] == (None, "")  # B was served, not closed
