"""Contract tests of rtaa_cli.internals: every shortcut past websockets' and deepgram-sdk's documented API,
against real connections on 127.0.0.1, so a library upgrade that breaks one fails here, by name, before
it breaks the emulator, the soak's frame writer or the provider in a subtler way."""
from __future__ import annotations

import asyncio
import os
import threading

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as sync_connect

from rtaa_cli import internals
from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.internals import SUPPORTED, UnsupportedLibrary, check_version
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
from helpers.pipeline import run


def test_the_guard_names_the_supported_versions_when_another_is_installed() -> None:
    assert check_version("websockets") and check_version("deepgram-sdk")  # the installed ones pass
    assert check_version("websockets", SUPPORTED["websockets"][0] + ".1")  # a patch release of the series
    with pytest.raises(UnsupportedLibrary) as info:
        check_version("websockets", "18.0")
    text = str(info.value)
    assert "websockets 18.0 is installed" in text and f"{SUPPORTED['websockets'][0]}.x" in text
    assert "tests/test_internals.py" in text  # what to do about it
    with pytest.raises(UnsupportedLibrary, match="deepgram-sdk 7.17.0"):
        check_version("deepgram-sdk", "7.17.0")
    with pytest.raises(UnsupportedLibrary):
        check_version("websockets", SUPPORTED["websockets"][0] + "0")  # 17.40 is not 17.4


def test_the_hooks_the_inline_connection_overrides_exist() -> None:
    for name in internals.INLINE_HOOKS:
        assert callable(getattr(ServerConnection, name)), name


async def _server_side(check) -> object:
    """Run ``check(server_connection, client)`` inside a real server handler; return its result."""
    loop = asyncio.get_running_loop()
    client_ready: asyncio.Future = loop.create_future()
    result: asyncio.Future = loop.create_future()

    async def handler(ws: ServerConnection) -> None:
        client = await client_ready
        try:
            result.set_result(await check(ws, client))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result.set_exception(exc)

    async with serve(handler, "127.0.0.1", 0, max_size=1000) as server:
        port = server.sockets[0].getsockname()[1]
        async with async_connect(f"ws://127.0.0.1:{port}") as client:
            client_ready.set_result(client)
            return await asyncio.wait_for(result, 10)


def test_asyncio_server_connection_internals() -> None:
    async def check(ws: ServerConnection, client) -> dict:
        out: dict = {"idle": internals.parser_idle(ws.protocol), "limit": internals.frame_limit(ws.protocol)}
        out["wrote"] = internals.write_text_nowait(ws, "héllo".encode())
        out["received"] = await asyncio.wait_for(client.recv(), 5)
        pong = await ws.ping(b"abcd")
        internals.acknowledge_pong(ws, b"abcd")  # what InlineConnection's process_event does with a PONG
        await asyncio.wait_for(pong, 5)
        out["gone_while_open"] = internals.connection_gone(ws)
        internals.set_connection_exc(ws, ValueError("why"))
        internals.fail_now(ws, 1008, "rule broken")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(client.recv(), 5)
        out["client_close"] = (info.value.rcvd.code, info.value.rcvd.reason)
        await asyncio.wait_for(ws.wait_closed(), 5)
        out["gone_after"] = internals.connection_gone(ws)
        return out

    out = run(_server_side(check), 30)
    assert out == {"idle": True, "limit": 1000, "wrote": True, "received": "héllo", "gone_while_open": False,
                   "client_close": (1008, "rule broken"), "gone_after": True}


def test_the_parser_is_not_idle_inside_a_frame() -> None:
    async def check(ws: ServerConnection, client) -> tuple[bool, bool]:
        frame = Frame(Opcode.BINARY, b"\x01" * 200).serialize(mask=True, extensions=[])
        ws.protocol.receive_data(frame[:10])  # half a frame: the parser holds it
        inside = internals.parser_idle(ws.protocol)
        ws.protocol.receive_data(frame[10:])
        return inside, internals.parser_idle(ws.protocol)

    assert run(_server_side(check), 30) == (False, True)


def _echo_server(expect: int):
    """A websockets asyncio server on 127.0.0.1 in a thread, recording the text messages it receives;
    ``state["all"]`` is set once ``expect`` arrived."""
    got: list[str] = []
    ready = threading.Event()
    state: dict = {"all": threading.Event()}

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(message)
            if len(got) >= expect:
                state["all"].set()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            state["port"] = server.sockets[0].getsockname()[1]
            state["stop"] = asyncio.get_running_loop().create_future()
            state["loop"] = asyncio.get_running_loop()
            ready.set()
            await state["stop"]

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    return got, state, thread


def test_raw_frames_written_to_a_sync_connection_arrive_whole_and_in_order() -> None:
    got, state, thread = _echo_server(expect=6)
    try:
        with sync_connect(f"ws://127.0.0.1:{state['port']}") as ws:
            assert internals.raw_socket(ws) is ws.socket
            texts = ["a" * n for n in (5, 125, 126, 300, 70000)]  # each length form of the frame header
            for text in texts[:3]:
                assert internals.write_nowait(ws, internals.text_frame(text.encode())) == b""
            frame = internals.text_frame(texts[3].encode())
            internals.flush_tail(ws, frame[:7])  # a frame written in two parts, under websockets' lock
            internals.flush_tail(ws, frame[7:])
            ws.send(texts[4])  # websockets' own send in between raw writes: no interleaving
            with ws.protocol_mutex:  # websockets is writing: nothing is written behind its back
                assert internals.write_nowait(ws, internals.text_frame(b"x")) is None
            assert internals.write_nowait(ws, internals.text_frame(b"last")) == b""
            assert state["all"].wait(10)
        assert got == texts + ["last"]
        assert internals.write_nowait(ws, internals.text_frame(b"late")) is None  # closed: not written
        with pytest.raises(ConnectionClosed):
            internals.flush_tail(ws, b"tail")
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)


def test_text_frame_is_what_websockets_would_serialize() -> None:
    payload = os.urandom(300)
    frame = internals.text_frame(payload)
    mask = frame[4:8]
    reference = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
    assert frame[:4] == reference[:4]  # FIN + text, mask bit, 16-bit length
    assert bytes(internals.apply_mask(frame[8:], mask)) == payload


def test_the_sdk_websocket_under_a_real_deepgram_sdk_connection() -> None:
    async def main() -> tuple[bool, int | None, int | None, int, str]:
        async with Emulator(EmulatorConfig()) as emu:
            conn = await DeepgramProvider("test-key", emu.url).open("internals", 8000)
            ws = internals.sdk_websocket(conn._sock)
            writable = conn.writable()
            backlog = internals.write_backlog(ws)
            await conn.send_audio(b"\x00\x00" * 4000)
            await conn.close_stream()
            async for _ in conn.results():
                pass
            after = internals.write_backlog(ws)
            await conn.aclose()
            return writable, backlog, after, conn.close_code, type(ws).__module__

    writable, backlog, after, code, module = run(main(), 30)
    assert writable and backlog == 0
    assert after is None and code == 1000  # closed: no transport to write to
    assert module.startswith("websockets")


def test_binary_sends_without_waiting_reach_a_real_server_intact_and_stop_at_close() -> None:
    """send_binary_nowait on the SDK's websocket: the emulator receives every byte (its watermark decoder
    finds every packet of the marked audio, none missing or repeated); closed, it writes nothing."""
    from rtaa_cli.watermark import PACKET_BITS, Marker, call_hex

    pcm = Marker("CA-nowait").mark(os.urandom(576 * 50), 0)
    frames = [pcm[i:i + 576] for i in range(0, len(pcm), 576)]

    async def main() -> tuple[list[bool], bool, dict]:
        async with Emulator(EmulatorConfig()) as emu:
            conn = await DeepgramProvider("test-key", emu.url).open("nowait", 8000)
            ws = internals.sdk_websocket(conn._sock)
            assert not ws.extensions  # the raw frame path (no permessage-deflate negotiated)
            sent = [internals.send_binary_nowait(ws, f) for f in frames]
            await conn.close_stream()
            async for _ in conn.results():
                pass
            after_close = internals.send_binary_nowait(ws, frames[0])
            await conn.aclose()
            return sent, after_close, emu.stats()["connections"][0]

    sent, after_close, record = run(main(), 30)
    assert all(sent) and not after_close
    assert record["audio_bytes"] == len(pcm)
    mark = record["watermark"]
    assert mark["call"] == call_hex("CA-nowait") and mark["missing"] == 0 and mark["repeated"] == 0
    assert mark["packets"] == len(pcm) // (2 * PACKET_BITS)


def test_the_sdk_guard_fails_loudly_without_a_websocket() -> None:
    class Changed:
        _websocket = None

    with pytest.raises(UnsupportedLibrary, match="deepgram-sdk"):
        internals.sdk_websocket(Changed())
