"""How many concurrent real-time streams one emulator process sustains (segmenter engine).

The server under test runs in its own process pinned to one core (the one other work used least just
before the step); a driver process pinned to another core opens N streams, each sending 36 ms linear16
frames at 8 kHz in real time (1.2 s of tone, 0.6 s of silence, repeated, phase-shifted per stream), and
measures every result's *lateness*: receive time minus the send time of the frame holding the result's
audio end (the emulator's due time with zero injected latency). Audio keeps flowing 1 s past the measured
window, so the CloseStream burst at the end is not measured. Per N it prints the server's CPU (% of one
core) and how long it waited for its core, p50/p99 lateness, the CPU ratio against a baseline measured in
the same run (a plain websockets server reading the same frames and sending one small JSON per second of
audio), the driver's CPU and timer lag (if that lag is high, the driver, not the server, was the
bottleneck), and how much of the server's core other processes used. The driver's clients are raw asyncio
protocols (one HTTP upgrade, pre-built masked frames, one write per frame, a minimal parser that only
timestamps results; JSON is parsed after the run) so that one core can pace hundreds of streams.

    python bench/bench_emulator.py            # N = 100, 250, 500, 750; 15 s measured per step
    python bench/bench_emulator.py --quick    # N = 50, 200; 5 s per step
    python bench/bench_emulator.py --steps 100,500 --seconds 20 --nice -10
    python bench/bench_emulator.py --steps 500 --watermark   # the audio marked as rtaa's callers mark it
    python bench/bench_emulator.py --steps 500 --compare-robust   # + a run without the robust mark's detector
    python bench/bench_emulator.py --steps 250,500 --compare-loop   # + the emulator on uvloop, same run
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
TAIL_S = 1.0  # streaming goes on this long after the measured window
GROUPS = 12  # streams are spread over 12 send slots per 36 ms tick (3 ms apart), as real callers are
QUERY = "/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true&endpointing=300"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pin(cpu: int, nice: int = 0) -> None:
    os.sched_setaffinity(0, {cpu})
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def _sched(pid: int) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of all threads of ``pid``, from
    /proc/PID/task/*/schedstat. The wait is what other work on the same core (another engineer's tests)
    cost this process: lateness measured while it is high says more about the machine than the server."""
    run = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
        except FileNotFoundError:  # thread ended
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def _core_ticks(cpu: int) -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of one core from /proc/stat."""
    name = f"cpu{cpu} "
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(name):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                steal = v[7] if len(v) > 7 else 0
                total = sum(v[:8])
                return total - idle - steal, steal, total
    return 0, 0, 1


def _pick_cpus() -> tuple[int, int]:
    """(server CPU, driver CPU): the server gets the core other work used least over the last 0.5 s (other
    engineers' tests and benches pin to "core 0" too), the driver another one when there is one."""
    cpus = sorted(os.sched_getaffinity(0))
    before = {c: _core_ticks(c) for c in cpus}
    time.sleep(0.5)
    busy = {c: (_core_ticks(c)[0] - before[c][0]) / max(1, _core_ticks(c)[2] - before[c][2]) for c in cpus}
    server = min(cpus, key=busy.get)
    others = [c for c in cpus if c != server]
    return server, (min(others, key=busy.get) if others else server)


# ------------------------------------------------------------------------------------------ servers

def _run_emulator(port_queue, cpu: int, nice: int, loop: str = "asyncio") -> None:
    _pin(cpu, nice)
    _raise_nofile()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rtaa_cli import eventloop
    from rtaa_cli.emulator import Emulator, EmulatorConfig

    async def main() -> None:
        async with Emulator(EmulatorConfig(idle_timeout_s=30, max_closed_records=100)) as emu:
            port_queue.put(emu.port)
            await asyncio.Event().wait()

    eventloop.run(main(), loop)


def _run_emulator_uvloop(port_queue, cpu: int, nice: int) -> None:
    """The emulator on uvloop (--compare-loop: what the event loop costs, same run; the other runs: asyncio's)."""
    _run_emulator(port_queue, cpu, nice, "uvloop")


def _run_emulator_no_robust(port_queue, cpu: int, nice: int) -> None:
    """The emulator without the robust mark's detector (--compare-robust: its cost, same run)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rtaa_cli.emulator import session

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, for its sibling
    from bench_robustmark import DetectorOff

    session.RobustMarkDetector = DetectorOff
    _run_emulator(port_queue, cpu, nice)


def _run_baseline(port_queue, cpu: int, nice: int) -> None:
    """Plain websockets: read frames, send one small JSON per second of audio, close on CloseStream."""
    _pin(cpu, nice)
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
    one = np.concatenate([burst, np.zeros(int(0.6 * RATE), np.int16)]).tobytes()
    if os.environ.get("RTAA_BENCH_WATERMARK") == "1":  # --watermark: the decoder locked on every stream
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from rtaa_cli.watermark import Marker
        one = Marker("CAbench", robust=True).mark(one, 0)
    return one


class RawClient(asyncio.Protocol):
    """A minimal WebSocket client for load, as an asyncio protocol: one HTTP upgrade, then pre-built masked
    binary frames (a fixed all-zero mask key: client frames must be masked, the key may be anything),
    one ``transport.write`` per frame, and a small parser for the server's unmasked frames that only
    timestamps text messages; JSON is parsed after the run, not while pacing."""

    def __init__(self, now) -> None:
        self.now = now
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received: list[tuple[float, bytes]] = []  # (receive time, text payload)

    @classmethod
    async def connect(cls, port: int, path: str, now) -> "RawClient":
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(now), "127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        client.transport.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                                "Authorization: Token bench\r\n\r\n").encode())
        await asyncio.wait_for(client.upgraded, 30)
        return client

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

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = self.now()
        buf = self.buffer
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            del buf[:end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(RuntimeError(f"handshake refused: {status!r}"))
                self.transport.close()
                return
            self.upgraded.set_result(None)
        while len(buf) >= 2:
            b0, n = buf[0], buf[1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, head = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, head = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < head + n:
                return
            payload = bytes(buf[head:head + n])
            del buf[:head + n]
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.received.append((now, payload))
            elif opcode == 0x9:  # ping -> pong
                self.transport.write(self.frame(0xA, payload))
            elif opcode == 0x8:  # close -> echo the code, then the server closes TCP
                self.transport.write(self.frame(0x8, payload[:2]))


async def _drive(port: int, server_pid: int, server_cpu: int, n: int, warmup_s: float, measure_s: float) -> dict:
    loop = asyncio.get_running_loop()
    pattern = _pattern()
    frames_per_pattern = len(pattern) // FRAME_BYTES
    frames = [RawClient.frame(0x2, pattern[f * FRAME_BYTES:(f + 1) * FRAME_BYTES]) for f in range(frames_per_pattern)]
    close_stream = RawClient.frame(0x1, b'{"type":"CloseStream"}')
    conns = [await RawClient.connect(port, f"{QUERY}&tag=b{i}", loop.time) for i in range(n)]
    writes = [c.transport.write for c in conns]
    send_logs: list[list[float]] = [[] for _ in range(n)]  # per stream: send time of each frame
    send_lag: list[float] = []
    t_start = loop.time() + 0.2
    measure_from = t_start + warmup_s
    measure_to = measure_from + measure_s
    offsets = [(i * 7) % frames_per_pattern for i in range(n)]  # phase shift per stream
    groups = [list(range(g, n, GROUPS)) for g in range(GROUPS)]
    # Audio keeps flowing for TAIL_S after the window, so that every result about audio sent inside it is
    # an ordinary one (the CloseStream flush of 500 streams is a burst of its own, not measured here).
    stream_to = measure_to + TAIL_S
    k = 0
    before = after = None
    while True:
        tick = t_start + k * FRAME_MS / 1000.0
        if tick >= stream_to:
            break
        if before is None and tick >= measure_from:
            before = _sched(server_pid), _sched(os.getpid()), time.monotonic(), _core_ticks(server_cpu)
        if after is None and tick >= measure_to:
            after = _sched(server_pid), _sched(os.getpid()), time.monotonic(), _core_ticks(server_cpu)
        for g, members in enumerate(groups):
            due = tick + g * FRAME_MS / 1000.0 / GROUPS
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if measure_from <= tick < measure_to:
                send_lag.append((now - due) * 1000.0)
            for i in members:
                writes[i](frames[(k + offsets[i]) % frames_per_pattern])
                send_logs[i].append(now)
        k += 1
    for write in writes:
        write(close_stream)
    done, pending = await asyncio.wait([c.closed for c in conns], timeout=60)
    for c in conns:
        c.transport.abort()

    lateness: list[float] = []
    for log, client in zip(send_logs, conns):
        for received_at, raw in client.received:
            m = orjson.loads(raw)
            if m.get("type") != "Results":
                continue
            end = m["start"] + m["duration"]
            k = math.ceil(end * 1000 / FRAME_MS - 1e-6) - 1  # index of the frame holding the audio end
            sent = log[min(max(k, 0), len(log) - 1)]
            if measure_from <= sent <= measure_to:
                lateness.append((received_at - sent) * 1000.0)
    lateness.sort()
    send_lag.sort()

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    (s_run0, s_wait0), (d_run0, d_wait0), wall0, (busy0, steal0, total0) = before
    (s_run1, s_wait1), (d_run1, d_wait1), wall1, (busy1, steal1, total1) = after
    wall = wall1 - wall0
    ticks = max(1, total1 - total0)
    core_busy, core_steal = 100.0 * (busy1 - busy0) / ticks, 100.0 * (steal1 - steal0) / ticks
    return {"n": n, "cpu_pct": 100.0 * (s_run1 - s_run0) / wall, "wait_ms_s": 1000.0 * (s_wait1 - s_wait0) / wall,
            "driver_cpu_pct": 100.0 * (d_run1 - d_run0) / wall, "driver_wait_ms_s": 1000.0 * (d_wait1 - d_wait0) / wall,
            "core_busy_pct": core_busy, "core_steal_pct": core_steal,
            "results": len(lateness), "unclosed": len(pending),
            "p50": statistics.median(lateness) if lateness else float("nan"), "p99": pct(lateness, 0.99),
            "max": lateness[-1] if lateness else float("nan"),
            "within_50ms": sum(x <= 50.0 for x in lateness) / max(1, len(lateness)),
            "send_lag_p99": pct(send_lag, 0.99)}


def _run_driver(port: int, server_pid: int, cpus: tuple[int, int], n: int, warmup_s: float, measure_s: float,
                nice: int, out) -> None:
    _pin(cpus[1], nice)
    _raise_nofile()
    result = asyncio.run(_drive(port, server_pid, cpus[0], n, warmup_s, measure_s))
    result["server_cpu"], result["driver_cpu"] = cpus
    out.put(result)


def _measure(target, n: int, warmup_s: float, measure_s: float, nice: int) -> dict:
    ctx = mp.get_context("spawn")
    cpus = _pick_cpus()
    ports = ctx.Queue()
    server = ctx.Process(target=target, args=(ports, cpus[0], nice), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        out = ctx.Queue()
        driver = ctx.Process(target=_run_driver, args=(port, server.pid, cpus, n, warmup_s, measure_s, nice, out),
                             daemon=True)
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
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of the server and driver processes (negative needs root); on the shared "
                         "development VM -10 did not measurably reduce their waiting; default 0")
    ap.add_argument("--watermark", action="store_true",
                    help="send audio marked as rtaa's callers mark it (the emulator's decoder stays locked)")
    ap.add_argument("--compare-robust", action="store_true",
                    help="also run each step without the robust mark's detector (its CPU cost, same run)")
    ap.add_argument("--compare-loop", action="store_true",
                    help="also run each step with the emulator on uvloop (rtaa fake-deepgram --loop auto's choice)")
    args = ap.parse_args()
    if args.watermark:
        os.environ["RTAA_BENCH_WATERMARK"] = "1"  # read by the spawned driver processes
    steps = [50, 200] if args.quick else [100, 250, 500, 750]
    if args.steps:
        steps = [int(x) for x in args.steps.split(",")]
    measure_s = args.seconds or (5.0 if args.quick else 15.0)
    warmup_s = 3.0
    print(f"cores available: {len(os.sched_getaffinity(0))} (server pinned to the idlest, driver to another); nice "
          f"{args.nice}; {measure_s:.0f} s measured per step after {warmup_s:.0f} s warm-up; 36 ms frames, "
          f"8 kHz linear16, interim_results, endpointing 300 ms, audio {'marked' if args.watermark else 'unmarked'}; load average {os.getloadavg()[0]:.2f}")
    header = (f"{'N':>5} | {'emu CPU%':>8} | {'emu wait':>8} | {'late p50':>8} | {'late p99':>8} | {'<=50ms':>7} | "
              f"{'results':>7} | {'base CPU%':>9} | {'base p99':>8} | {'CPU ratio':>9} | {'drv CPU%':>8} | "
              f"{'drv lag p99':>11} | {'drv wait':>8} | {'core':>4} | {'core other%':>11} | {'steal%':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for n in steps:
        emu = _measure(_run_emulator, n, warmup_s, measure_s, args.nice)
        base = _measure(_run_baseline, n, warmup_s, measure_s, args.nice)
        ratio = emu["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] > 0 else float("nan")
        rows.append((n, emu, base))
        if args.compare_robust:
            off = _measure(_run_emulator_no_robust, n, warmup_s, measure_s, args.nice)
            print(f"{n:>5} | without the robust detector: emu CPU% {off['cpu_pct']:.1f}, late p99 {off['p99']:.1f}, "
                  f"CPU ratio vs base {off['cpu_pct'] / base['cpu_pct']:.2f}; with it / without: "
                  f"{emu['cpu_pct'] / off['cpu_pct']:.2f}", flush=True)
        if args.compare_loop:
            uv = _measure(_run_emulator_uvloop, n, warmup_s, measure_s, args.nice)
            print(f"{n:>5} | on uvloop: emu CPU% {uv['cpu_pct']:.1f}, late p99 {uv['p99']:.1f}, within 50 ms "
                  f"{100 * uv['within_50ms']:.1f}%, CPU ratio vs base {uv['cpu_pct'] / base['cpu_pct']:.2f}; "
                  f"uvloop / asyncio: {uv['cpu_pct'] / emu['cpu_pct']:.2f}", flush=True)
        print(f"{n:>5} | {emu['cpu_pct']:>8.1f} | {emu['wait_ms_s']:>8.1f} | {emu['p50']:>8.1f} | {emu['p99']:>8.1f} | "
              f"{100 * emu['within_50ms']:>6.1f}% | {emu['results']:>7} | {base['cpu_pct']:>9.1f} | "
              f"{base['p99']:>8.1f} | {ratio:>9.2f} | {emu['driver_cpu_pct']:>8.1f} | {emu['send_lag_p99']:>11.1f} | "
              f"{emu['driver_wait_ms_s']:>8.1f} | {emu['server_cpu']:>4} | "
              f"{max(0.0, emu['core_busy_pct'] - emu['cpu_pct']):>11.1f} | "
              f"{emu['core_steal_pct']:>6.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("emu CPU% = emulator process CPU in % of one core; emu wait / drv wait = ms per second the process was\n"
          "runnable but waiting for its core (other work on the machine; high values make lateness meaningless).\n"
          "late = result receive time - send time of the frame holding its audio end (ms; 0 latency injected).\n"
          "base = plain websockets server (websockets 17 defaults) reading the same frames and sending one small\n"
          "JSON per second of audio. CPU ratio = emulator CPU / base CPU at the same N. drv lag p99 = how late the\n"
          "driver's own frame ticks were (> ~10 ms: the driver, not the server, limited the run).\n"
          "core = the CPU the server was pinned to (the one other work used least just before the step);\n"
          "core other% = that CPU's time used by other processes; steal% = time the hypervisor took from it.")
    for n, emu, _ in rows:
        if emu["p99"] <= 50.0:
            print(f"N={n}: p99 within 50 ms of due: yes; CPU-bound capacity estimate "
                  f"{n * 100.0 / emu['cpu_pct']:.0f} streams per core")
        else:  # behind: the CPU it got is not the CPU it needed, so no capacity estimate
            print(f"N={n}: p99 within 50 ms of due: no (emu wait {emu['wait_ms_s']:.0f} ms/s, other work on its "
                  f"core {emu['core_busy_pct'] - emu['cpu_pct']:.0f}%)")


if __name__ == "__main__":
    main()
