"""How many concurrent real-time streams one emulator process sustains (segmenter engine).

The server under test runs in its own process pinned to one core; a driver process (pinned to another
core when there is one) opens N raw websockets streams, each sending 36 ms linear16 frames at 8 kHz in
real time (1.2 s of tone, 0.6 s of silence, repeated, phase-shifted per stream), and measures every
result's *lateness*: receive time minus the send time of the frame holding the result's audio end
(the emulator's due time with zero injected latency). Per N it prints the server core's CPU %, p50/p99
lateness, the driver's own send lag (if that is high, the driver, not the server, was the bottleneck)
and the CPU ratio against a baseline measured in the same run: a trivial websockets server that reads
the same frames and sends one small JSON per second of audio (cost of plain websockets). The driver's
clients are minimal raw WebSocket clients (pre-built frames, one write per frame) so that the driver
can pace hundreds of streams from one core.

    python bench/bench_emulator.py            # N = 100, 250, 500, 750; 15 s measured per step
    python bench/bench_emulator.py --quick    # N = 50, 200; 5 s per step
    python bench/bench_emulator.py --steps 100,500 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import math
import multiprocessing as mp
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import orjson

RATE = 8000
FRAME_MS = 36
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
GROUPS = 12  # streams are spread over 12 send slots per 36 ms tick (3 ms apart), as real callers are
QUERY = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true&endpointing=300"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pin(core: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core % len(cores)]})


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ servers

def _run_emulator(port_queue) -> None:
    _pin(0)
    _raise_nofile()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rtaa_cli.emulator import Emulator, EmulatorConfig

    async def main() -> None:
        async with Emulator(EmulatorConfig(idle_timeout_s=30, max_closed_records=100)) as emu:
            port_queue.put(emu.port)
            await asyncio.Event().wait()

    asyncio.run(main())


def _run_baseline(port_queue) -> None:
    """Plain websockets: read frames, send one small JSON per second of audio, close on CloseStream."""
    _pin(0)
    _raise_nofile()
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        received = 0
        next_report = RATE * 2
        async for message in ws:
            if isinstance(message, str):
                if orjson.loads(message).get("type") == "CloseStream":
                    await ws.close(1000)
                continue
            received += len(message)
            if received >= next_report:
                next_report += RATE * 2
                end = received / 2 / RATE
                await ws.send(orjson.dumps({"type": "Results", "start": end - 1.0, "duration": 1.0}), text=True)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
            port_queue.put(server.sockets[0].getsockname()[1])
            await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------- driver

def _pattern() -> bytes:
    t = np.arange(int(1.2 * RATE)) / RATE
    burst = (np.sin(2 * np.pi * 250 * t) * 6000).astype(np.int16)
    one = np.concatenate([burst, np.zeros(int(0.6 * RATE), np.int16)])
    return one.tobytes()


class RawClient:
    """A minimal websockets client for load: pre-built masked frames (zero mask key, which RFC 6455 allows
    a server to accept), one ``transport.write`` per frame, a small reader for server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Authorization: Token bench\r\n\r\n").encode())
        status = await reader.readline()
        if b" 101 " not in status:
            raise RuntimeError(f"handshake refused: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return cls(reader, writer)

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
        return head + b"\x00\x00\x00\x00" + payload  # zero mask key: payload unchanged

    async def messages(self):
        """Yield text payloads until the server closes (answers pings and the close frame)."""
        read = self.reader.readexactly
        while True:
            try:
                b0, b1 = await read(2)
            except asyncio.IncompleteReadError:
                return
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await read(8))[0]
            payload = await read(n) if n else b""
            opcode = b0 & 0x0F
            if opcode == 0x1:
                yield payload
            elif opcode == 0x9:
                self.writer.write(self.frame(0xA, payload))
            elif opcode == 0x8:
                self.writer.write(self.frame(0x8, payload[:2]))
                self.writer.close()
                return


async def _drive(port: int, server_pid: int, n: int, warmup_s: float, measure_s: float) -> dict:
    loop = asyncio.get_running_loop()
    pattern = _pattern()
    frames_per_pattern = len(pattern) // FRAME_BYTES
    frames = [RawClient.frame(0x2, pattern[f * FRAME_BYTES:(f + 1) * FRAME_BYTES]) for f in range(frames_per_pattern)]
    close_stream = RawClient.frame(0x1, b'{"type":"CloseStream"}')
    conns = [await RawClient.connect(port, f"{QUERY}&tag=b{i}") for i in range(n)]
    # per stream: send time of each frame, and the lateness samples
    send_logs: list[list[float]] = [[] for _ in range(n)]
    lateness: list[float] = []
    send_lag: list[float] = []
    t_start = loop.time() + 0.2
    measure_from = t_start + warmup_s
    measure_to = measure_from + measure_s

    async def reader(i: int, client: RawClient) -> None:
        log = send_logs[i]
        async for raw in client.messages():
            now = loop.time()
            m = orjson.loads(raw)
            if m.get("type") != "Results":
                continue
            end = m["start"] + m["duration"]
            k = math.ceil(end * 1000 / FRAME_MS - 1e-6) - 1  # index of the frame holding the audio end
            k = min(max(k, 0), len(log) - 1)
            sent = log[k]
            if measure_from <= sent <= measure_to:
                lateness.append((now - sent) * 1000.0)

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(conns)]
    offsets = [(i * 7) % frames_per_pattern for i in range(n)]  # phase shift per stream
    groups = [list(range(g, n, GROUPS)) for g in range(GROUPS)]
    k = 0
    cpu0 = cpu1 = None
    while True:
        tick = t_start + k * FRAME_MS / 1000.0
        if tick >= measure_to:
            break
        if cpu0 is None and tick >= measure_from:
            cpu0, wall0 = _cpu_seconds(server_pid), time.monotonic()
        for g, members in enumerate(groups):
            due = tick + g * FRAME_MS / 1000.0 / GROUPS
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if tick >= measure_from:
                send_lag.append((now - due) * 1000.0)
            for i in members:
                conns[i].writer.write(frames[(k + offsets[i]) % frames_per_pattern])
                send_logs[i].append(loop.time())
        k += 1
    cpu1, wall1 = _cpu_seconds(server_pid), time.monotonic()
    for client in conns:
        client.writer.write(close_stream)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    lateness.sort()
    send_lag.sort()

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {"n": n, "cpu_pct": 100.0 * (cpu1 - cpu0) / (wall1 - wall0), "results": len(lateness),
            "p50": statistics.median(lateness) if lateness else float("nan"), "p99": pct(lateness, 0.99),
            "within_50ms": sum(x <= 50.0 for x in lateness) / max(1, len(lateness)),
            "send_lag_p99": pct(send_lag, 0.99)}


def _run_driver(port: int, server_pid: int, n: int, warmup_s: float, measure_s: float, out) -> None:
    _pin(1)
    _raise_nofile()
    out.put(asyncio.run(_drive(port, server_pid, n, warmup_s, measure_s)))


def _measure(target, n: int, warmup_s: float, measure_s: float) -> dict:
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=target, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        out = ctx.Queue()
        driver = ctx.Process(target=_run_driver, args=(port, server.pid, n, warmup_s, measure_s, out), daemon=True)
        driver.start()
        result = out.get(timeout=warmup_s + measure_s + 240)
        driver.join(30)
        return result
    finally:
        server.terminate()
        server.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 50, 200; 5 s measured per step")
    ap.add_argument("--steps", help="comma-separated stream counts")
    ap.add_argument("--seconds", type=float, help="measured seconds per step")
    args = ap.parse_args()
    steps = [50, 200] if args.quick else [100, 250, 500, 750]
    if args.steps:
        steps = [int(x) for x in args.steps.split(",")]
    measure_s = args.seconds or (5.0 if args.quick else 15.0)
    warmup_s = 3.0
    print(f"cores available: {len(os.sched_getaffinity(0))} (server pinned to one, driver to another); "
          f"{measure_s:.0f} s measured per step after {warmup_s:.0f} s warm-up; 36 ms frames, 8 kHz linear16")
    header = (f"{'N':>5} | {'emu CPU%':>8} | {'late p50':>8} | {'late p99':>8} | {'<=50ms':>7} | {'results':>7} | "
              f"{'base CPU%':>9} | {'base p99':>8} | {'CPU ratio':>9} | {'drv lag p99':>11}")
    print(header)
    print("-" * len(header))
    for n in steps:
        emu = _measure(_run_emulator, n, warmup_s, measure_s)
        base = _measure(_run_baseline, n, warmup_s, measure_s)
        ratio = emu["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] > 0 else float("nan")
        print(f"{n:>5} | {emu['cpu_pct']:>8.1f} | {emu['p50']:>8.1f} | {emu['p99']:>8.1f} | "
              f"{100 * emu['within_50ms']:>6.1f}% | {emu['results']:>7} | {base['cpu_pct']:>9.1f} | "
              f"{base['p99']:>8.1f} | {ratio:>9.2f} | {max(emu['send_lag_p99'], base['send_lag_p99']):>11.1f}",
              flush=True)
    print("late = result receive time - send time of the frame holding its audio end (ms; 0 latency injected).")
    print("CPU ratio = emulator core CPU / plain-websockets baseline core CPU at the same N. "
          "drv lag p99 > ~10 ms means the driver, not the server, limited the run.")


if __name__ == "__main__":
    main()
