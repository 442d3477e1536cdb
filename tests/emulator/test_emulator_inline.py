"""The emulator's inline message path (rtaa_cli/emulator/connection.py) over real loopback sockets.

Messages go from websockets' parser straight into the session, so what websockets' assembler used to do
(reassembly, UTF-8 checks, order) and the close bookkeeping are checked here with a raw client built on
websockets' sans-I/O ``ClientProtocol``, which lets a test pipeline frames, fragment and send bad UTF-8.
"""
from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from rtaa_cli.emulator import Emulator, EmulatorConfig, start_in_thread

RATE = 8000
FRAME_BYTES = 576  # 36 ms of 8 kHz linear16
LISTEN = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true"
BOUND = 20.0  # safety net for waits; never reached when things work
CLOSE_STREAM = b'{"type":"CloseStream"}'


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()


def masked(opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=True)


class RawClient:
    """Handshake and frame parsing by websockets' ClientProtocol; frames written as raw bytes when needed."""

    def __init__(self, protocol: ClientProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.protocol, self.reader, self.writer = protocol, reader, writer
        self.messages: list[dict] = []

    @classmethod
    async def open(cls, emu: Emulator, path: str, pipelined: bytes = b"") -> RawClient:
        """Send the upgrade request followed at once by ``pipelined`` bytes (frames sent before the 101)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        protocol = ClientProtocol(parse_uri(emu.url + path))
        request = protocol.connect()
        request.headers["Authorization"] = "Token k"
        protocol.send_request(request)
        writer.write(b"".join(protocol.data_to_send()) + pipelined)
        client = cls(protocol, reader, writer)
        while protocol.state is State.CONNECTING:
            await client._read()
        # (The whole exchange may arrive at once: the state can be past OPEN already.)
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read(self) -> bool:
        data = await self.reader.read(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.messages.append(orjson.loads(event.data))
        for out in self.protocol.data_to_send():  # close replies
            if out:
                self.writer.write(out)
        return bool(data)

    async def until_closed(self) -> tuple[int | None, str]:
        """Read until the server closes; returns the close code and reason it sent."""
        while self.protocol.state is not State.CLOSED and await self._read():
            pass
        self.writer.close()
        rcvd = self.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, BOUND))


def test_frames_pipelined_before_the_101_are_processed_in_order():
    """Audio, CloseStream and late audio all in the request's own write: the late audio is ignored,
    exactly as when it arrives after the stream started closing."""
    audio = tone(0.72)
    frames = b"".join(masked(Opcode.BINARY, audio[i:i + FRAME_BYTES]) for i in range(0, len(audio), FRAME_BYTES))

    async def main():
        async with Emulator(EmulatorConfig()) as emu:
            client = await RawClient.open(emu, LISTEN, frames + masked(Opcode.TEXT, CLOSE_STREAM)
                                          + masked(Opcode.BINARY, tone(0.5)))
            code = await client.until_closed()
            await emu.wait_quiet()
            return client.messages, code, emu.stats()["totals"]

    messages, code, totals = run(main())
    assert code == (1000, "")
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == pytest.approx(0.72)
    assert any(m["type"] == "Results" and m["is_final"] for m in messages)
    assert totals["audio_bytes"] == len(audio) and totals["closes_1000"] == 1


def test_fragmented_binary_and_text_messages_are_reassembled():
    audio = tone(0.5)
    third = len(audio) // 3 // 2 * 2  # whole samples per fragment

    async def main():
        async with Emulator(EmulatorConfig()) as emu:
            client = await RawClient.open(emu, LISTEN)
            client.send(masked(Opcode.BINARY, audio[:third], fin=False)
                        + masked(Opcode.CONT, audio[third:2 * third], fin=False)
                        + masked(Opcode.CONT, audio[2 * third:], fin=True))
            client.send(masked(Opcode.TEXT, CLOSE_STREAM[:7], fin=False)
                        + masked(Opcode.CONT, CLOSE_STREAM[7:], fin=True))
            code = await client.until_closed()
            await emu.wait_quiet()
            return client.messages, code, emu.stats()["connections"][0]

    messages, code, record = run(main())
    assert code == (1000, "") and record["close_stream"] is True
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == pytest.approx(0.5)
    assert record["audio_bytes"] == len(audio)


def test_invalid_utf8_text_closes_1007_and_is_counted():
    async def main():
        async with Emulator(EmulatorConfig()) as emu:
            client = await RawClient.open(emu, LISTEN)
            client.send(masked(Opcode.BINARY, tone(0.1)) + masked(Opcode.TEXT, b'{"type":"\xff"}'))
            code = await client.until_closed()
            await emu.wait_quiet()
            return code, emu.stats()["totals"]

    (code, reason), totals = run(main())
    assert code == 1007 and "invalid" in reason
    assert totals["close_codes"] == {"1007": 1} and totals["closes_other"] == 1


def test_endless_fragments_close_1009():
    async def main():
        async with Emulator(EmulatorConfig()) as emu:
            client = await RawClient.open(emu, LISTEN)
            client.send(masked(Opcode.BINARY, b"\x00\x00", fin=False)
                        + b"".join(masked(Opcode.CONT, b"\x00\x00", fin=False) for _ in range(1100)))
            code = await client.until_closed()
            await emu.wait_quiet()
            return code, emu.stats()["totals"]

    (code, reason), totals = run(main())
    assert (code, reason) == (1009, "too many fragments")
    assert totals["audio_bytes"] == 0 and totals["close_codes"] == {"1009": 1}


def test_reconnecting_right_after_a_close_is_neither_a_duplicate_nor_over_the_limit():
    """The close is booked in connection_lost, not later in the handler task: a caller that reconnects the
    moment its close completed is neither a duplicate nor over --max-concurrent. (Booked in the handler,
    the new handshake is processed first and this fails on the first rounds.)"""
    rounds = 20
    handle = start_in_thread(EmulatorConfig(max_concurrent=1))
    try:
        async def main():
            for _ in range(rounds):
                client = await RawClient.open(handle.emulator, LISTEN + "&tag=CA1")
                client.send(masked(Opcode.BINARY, tone(0.036)) + masked(Opcode.TEXT, CLOSE_STREAM))
                assert await client.until_closed() == (1000, "")
                client.writer.transport.abort()  # gone at once, as a process that exits

        run(main())
        handle.wait_quiet(BOUND)
        stats = handle.stats()
    finally:
        handle.stop()
    assert stats["totals"]["connections"] == rounds and stats["totals"]["rejected_429"] == 0
    assert stats["interactions"]["CA1"] == {"connections": rounds, "duplicates": 0, "max_open": 1, "open": 0}


def _frame_with_64bit_length(payload: bytes) -> bytes:
    """A binary frame using the 8-byte length form for a short payload (legal, just not minimal)."""
    mask = b"\x01\x02\x03\x04"
    masked_payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | 127]) + len(payload).to_bytes(8, "big") + mask + masked_payload


def test_audio_frames_in_every_wire_form_give_the_same_stream():
    """Each frame alone in a read, frames split across reads, many in one read (whole, cut inside the last
    one, followed by a text frame), the 16- and 64-bit length forms: the same audio, the same results."""
    audio = tone(1.44)
    chunks = [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]

    async def stream(emu, wire_pieces):
        client = await RawClient.open(emu, LISTEN)
        for piece in wire_pieces:
            client.send(piece)
            await client.writer.drain()
            await asyncio.sleep(0)  # separate writes (a safety net only: TCP may coalesce them anyway)
        client.send(masked(Opcode.TEXT, CLOSE_STREAM))
        code = await client.until_closed()
        return code, [(m["type"], m.get("start"), m.get("duration"), m.get("is_final"),
                       m.get("channel", {}).get("alternatives", [{}])[0].get("transcript")) for m in client.messages
                      if m["type"] != "Metadata"], client.messages[-1]

    async def main():
        # unmarked text: the text mark names each result's connection, and every form here is a new one
        async with Emulator(EmulatorConfig(text_mark=False)) as emu:
            plain = [masked(Opcode.BINARY, c) for c in chunks]
            split = [piece for frame in plain for piece in (frame[:3], frame[3:])]
            coalesced = [b"".join(plain)]
            cut_inside_last = [b"".join(plain)[:-100], b"".join(plain)[-100:]]
            then_text = [b"".join(plain) + masked(Opcode.TEXT, b'{"type":"KeepAlive"}')]
            long_form = [_frame_with_64bit_length(c) for c in chunks]
            return [await stream(emu, pieces) for pieces in (plain, split, coalesced, cut_inside_last, then_text,
                                                             long_form)]

    outcomes = run(main())
    first_code, first_results, first_meta = outcomes[0]
    assert first_code == (1000, "") and any(r[3] for r in first_results)
    for code, results, meta in outcomes[1:]:
        assert code == first_code and results == first_results
        assert meta["sha256"] == first_meta["sha256"] and meta["duration"] == pytest.approx(1.44)


def test_unmasked_client_frame_is_a_protocol_error():
    async def main():
        async with Emulator(EmulatorConfig()) as emu:
            client = await RawClient.open(emu, LISTEN)
            payload = tone(0.016)  # 256 bytes: the 16-bit length form (and the size a masked 254-byte frame has)
            client.send(bytes([0x82, 126]) + len(payload).to_bytes(2, "big") + payload)
            code = await client.until_closed()
            await emu.wait_quiet()
            return code, emu.stats()["totals"]

    (code, reason), totals = run(main())
    assert code == 1002 and "mask" in reason
    assert totals["audio_bytes"] == 0 and totals["close_codes"] == {"1002": 1}
