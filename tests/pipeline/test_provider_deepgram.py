"""The deepgram provider reads Results straight off the SDK's socket: well-formed ones become
protocols.deepgram Results with the wire values; malformed provider messages are skipped and counted, never fatal."""
from __future__ import annotations

import asyncio

import orjson
from websockets.asyncio.server import serve

from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider

GOOD = {
    "type": "Results", "channel_index": [0, 1], "duration": 1.5, "start": 2.25, "is_final": True,
    "speech_final": True, "from_finalize": False,
    "channel": {"alternatives": [{"transcript": "hello world", "confidence": 0.9, "words": [
        {"word": "hello", "start": 2.3, "end": 2.7, "confidence": 0.95, "punctuated_word": "Hello"},
        {"word": "world", "start": 2.8, "end": 3.5, "confidence": 0.85}]}]},
    "metadata": {"request_id": "r", "model_info": {"name": "n", "version": "v", "arch": "a"}, "model_uuid": "u"},
}
BAD = [
    "not json",
    '{"type": "Results", "channel": "oops"}',  # channel is not an object
    '{"type": "Results", "channel": {"alternatives": [{"words": [{"start": 1}]}]}}',  # word without text
]
OTHER = '{"type": "Metadata", "request_id": "r"}'  # not a result: ignored, not counted


def test_results_parsed_and_malformed_messages_counted() -> None:
    conn, results = asyncio.run(_stream_from_scripted_provider())
    assert conn.close_code == 1000
    assert conn.unparsable == len(BAD)
    assert len(results) == 1
    r = results[0]
    assert (r.is_final, r.speech_final, r.from_finalize) == (True, True, False)
    assert r.text == "hello world"
    assert (r.start, r.end, r.confidence) == (2.25, 3.75, 0.9)
    assert [(w.word, w.start, w.end, w.confidence) for w in r.words] == [
        ("Hello", 2.3, 2.7, 0.95), ("world", 2.8, 3.5, 0.85)]


async def _stream_from_scripted_provider():
    """A real SDK connection to a server that sends the scripted messages, then closes 1000."""
    async def handler(ws) -> None:
        for text in (*BAD, OTHER, orjson.dumps(GOOD).decode()):
            await ws.send(text)
        await ws.close(1000, "done")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        provider = DeepgramProvider("k", f"ws://127.0.0.1:{port}")
        conn = await provider.open("call-1", 8000)
        results = [r async for r in conn.results()]
        await conn.aclose()
    return conn, results
