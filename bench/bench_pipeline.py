"""Pipeline-added latency (ingest receive -> provider send) and CPU per call, rtaa vs a naive forwarder.

Three processes per run, so each one's CPU is its own: the Deepgram emulator (segmenter engine), the
target (rtaa's pipeline with the deepgram provider pointed at the emulator -- what `--provider fake`
runs -- or the baseline), and the callers (N concurrent calls paced at 36 ms frames). The baseline is
the naive forwarder of docs/architecture.md ("Performance goals"): json.loads + b64decode + one raw websocket per call to the same
emulator, nothing else (no single-flight, no KeepAlive, no reconnect, no metrics). Both targets time
the same span: from the moment the ingest's read of a frame returns to the moment the provider send
returns, for frames whose provider stream is open. Ratios are rtaa / naive, measured in the same run.

    python bench/bench_pipeline.py                    # 50, 100, 200 calls, 12 s each
    python bench/bench_pipeline.py --calls 100 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FRAME_MS = 36
RATE = 8000
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000


def _split(samples: array, times: array, steady_from: float) -> dict:
    """Overall stats, plus "steady": frames received after the last provider stream had opened (the ramp's
    handshakes -- CPU on the same event loop -- excluded)."""
    steady = array("d", (v for v, t in zip(samples, times) if t >= steady_from))
    out = _percentiles(samples)
    st = _percentiles(steady)
    out.update({"steady_n": st["n"], "steady_p50_ms": st["p50_ms"], "steady_p99_ms": st["p99_ms"]})
    return out


class _Window:
    """Samples, CPU and memory over one measured window (shared by the rtaa and naive targets)."""

    def __init__(self, samples: array, times: array, state: dict) -> None:
        self.samples, self.times, self.state = samples, times, state

    def start(self) -> None:
        del self.samples[:]
        del self.times[:]
        self.state["cpu0"], self.state["t0"] = _cpu_seconds(), time.perf_counter()
        self.state["rss0"] = _mem_kb("VmRSS")

    def report(self, **extra: object) -> dict:
        st = self.state
        return {**_split(self.samples, self.times, st["last_open"]), "cpu_s": _cpu_seconds() - st["cpu0"],
                "wall_s": time.perf_counter() - st["t0"], "peak_growth_kb": _mem_kb("VmHWM") - st["rss0"], **extra}


def _percentiles(samples: array) -> dict:
    if not samples:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000.0  # noqa: E731
    return {"n": len(s), "p50_ms": round(pick(0.50), 4), "p99_ms": round(pick(0.99), 4), "max_ms": round(s[-1] * 1000, 3),
            "over_10ms": sum(1 for v in s if v > 0.010)}


def _mem_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _serve_until_report(start_measuring, report) -> None:
    """Target protocol on stdin: "start" -> reset samples and CPU; "report" -> print JSON and exit."""
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "start":
            start_measuring()
            print("ok", flush=True)
        elif line in ("report", ""):
            print(json.dumps(report()), flush=True)
            return


# ------------------------------------------------------------------------------------------- roles
async def role_emulator() -> None:
    from rtaa_cli.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(seed=1, max_closed_records=1000)) as emu:
        print(emu.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def role_rtaa(emu_url: str) -> None:
    from rtaa_cli.pipeline.config import IngestConfig, PipelineConfig, ProviderConfig
    from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
    from rtaa_cli.pipeline.server import PipelineServer

    cfg = PipelineConfig(provider=ProviderConfig(name="deepgram", deepgram_url=emu_url),
                         ingest=IngestConfig(max_calls=10000))
    server = PipelineServer(cfg, DeepgramProvider("bench", emu_url))
    samples, times = array("d"), array("d")
    hist = server.metrics.added_latency
    observe = hist.observe
    state = {"cpu0": 0.0, "t0": 0.0, "last_open": 0.0}

    def record(v: float) -> None:  # bench-only: keep exact samples next to the histogram
        samples.append(v)
        times.append(time.perf_counter() - v)  # receive time of the frame
        observe(v)

    hist.observe = record  # type: ignore[method-assign]
    provider = server.provider
    open_ = provider.open

    async def timed_open(*args):  # bench-only: when did the last provider stream open?
        conn = await open_(*args)
        state["last_open"] = time.perf_counter()
        return conn

    provider.open = timed_open  # type: ignore[method-assign]

    window = _Window(samples, times, state)
    start = window.start

    def report() -> dict:
        return window.report(
            provider_connections=server.metrics.value("rtaa_provider_connections_opened_total", provider="deepgram"),
            frames_waited=server.metrics.value("rtaa_frames_waited_for_provider_total"))

    async with server:
        print(server.ingest_url, flush=True)
        await _serve_until_report(start, report)


async def role_naive(emu_url: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    samples, times = array("d"), array("d")
    state = {"cpu0": 0.0, "t0": 0.0, "conns": 0, "last_open": 0.0}

    async def drain(dg) -> None:
        try:
            async for _ in dg:
                pass
        except Exception:  # noqa: BLE001
            pass

    async def handler(ws) -> None:
        dg = None
        reader = None
        try:
            async for message in ws:
                t = time.perf_counter()
                msg = json.loads(message)
                event = msg.get("event")
                if event == "media":
                    pcm = base64.b64decode(msg["media"]["payload"])
                    if dg is not None:
                        await dg.send(pcm)
                        samples.append(time.perf_counter() - t)
                        times.append(t)
                elif event == "start":
                    sid = msg["start"]["call_sid"]
                    dg = await connect(f"{emu_url}/v1/listen?encoding=linear16&sample_rate=8000&interim_results=true"
                                       f"&model=nova-3&tag={sid}", additional_headers={"Authorization": "Token bench"},
                                       compression=None, proxy=None)
                    state["conns"] += 1
                    state["last_open"] = time.perf_counter()
                    reader = asyncio.ensure_future(drain(dg))
                elif event == "stop" and dg is not None:
                    await dg.send('{"type":"CloseStream"}')
        except Exception:  # noqa: BLE001
            pass
        finally:
            if dg is not None:
                await dg.close()
            if reader is not None:
                reader.cancel()

    window = _Window(samples, times, state)
    start = window.start

    def report() -> dict:
        return window.report(provider_connections=state["conns"])

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"ws://127.0.0.1:{port}/v1/ingest", flush=True)
        await _serve_until_report(start, report)


async def role_callers(url: str, calls: int, seconds: float) -> None:
    """``calls`` paced callers, started over ~1 s, each streaming ``seconds`` of speech-like audio."""
    import numpy as np
    from websockets.asyncio.client import connect

    from rtaa_cli.exotel import StreamEncoder

    t = np.arange(int(0.8 * RATE)) / RATE
    burst = (0.25 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    unit = np.concatenate([burst, np.zeros(int(0.4 * RATE), dtype=np.int16)]).tobytes()
    nframes = int(seconds * 1000 / FRAME_MS)
    audio = (unit * (nframes * FRAME_BYTES // len(unit) + 1))[: nframes * FRAME_BYTES]
    late = array("d")

    async def call(i: int) -> None:
        await asyncio.sleep(i / calls)  # spread starts over 1 s, like a ramp
        enc = StreamEncoder(f"ST{i}", f"CA{i}")
        async with connect(url, compression=None, proxy=None) as ws:
            await ws.send(enc.connected())
            await ws.send(enc.start())
            t0 = time.perf_counter()
            for k in range(nframes):
                due = t0 + k * FRAME_MS / 1000
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late.append(-delay)
                await ws.send(enc.media(audio[k * FRAME_BYTES:(k + 1) * FRAME_BYTES]))
            await ws.send(enc.stop())

    await asyncio.gather(*(call(i) for i in range(calls)))
    print(json.dumps({"late_frames": len(late), "max_late_ms": round(max(late, default=0) * 1000, 1)}), flush=True)


# ------------------------------------------------------------------------------------------ driver
def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "NO_PROXY": "*"})


def measure(target: str, calls: int, seconds: float) -> dict:
    emu = _spawn("--role", "emulator")
    emu_url = emu.stdout.readline().strip()
    tgt = _spawn("--role", target, "--emu", emu_url)
    try:
        url = tgt.stdout.readline().strip()
        tgt.stdin.write("start\n")
        tgt.stdin.flush()
        assert tgt.stdout.readline().strip() == "ok"
        callers = _spawn("--role", "callers", "--url", url, "--calls", str(calls), "--seconds", str(seconds))
        caller_report = json.loads(callers.stdout.readline())
        callers.wait(60)
        tgt.stdin.write("report\n")
        tgt.stdin.flush()
        rep = json.loads(tgt.stdout.readline())
        rep["callers"] = caller_report
        # CPU per call-second of streaming: everything the target spent, over calls x audio seconds.
        rep["cpu_pct_per_call"] = 100.0 * rep["cpu_s"] / (calls * seconds)
        return rep
    finally:
        for p in (tgt, emu):
            try:
                p.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="driver")
    ap.add_argument("--emu")
    ap.add_argument("--url")
    ap.add_argument("--calls", type=int, nargs="*", default=[50, 100, 200])
    ap.add_argument("--seconds", type=float, default=12.0)
    a = ap.parse_args()
    if a.role == "emulator":
        return asyncio.run(role_emulator())
    if a.role == "rtaa":
        return asyncio.run(role_rtaa(a.emu))
    if a.role == "naive":
        return asyncio.run(role_naive(a.emu))
    if a.role == "callers":
        return asyncio.run(role_callers(a.url, a.calls[0], a.seconds))
    rows = []
    for n in a.calls:
        naive = measure("naive", n, a.seconds)
        rtaa = measure("rtaa", n, a.seconds)
        rows.append((n, naive, rtaa))
        print(f"  measured {n} calls: naive {json.dumps(naive)}\n                   rtaa {json.dumps(rtaa)}", file=sys.stderr, flush=True)
    print(f"\npipeline-added latency (ingest receive -> provider send) and target CPU; {a.seconds:g} s of 36 ms frames per call")
    print(f"{'calls':>5} | {'target':<6} | {'p50 ms':>7} | {'p99 ms':>8} | {'max ms':>8} | {'steady p50':>10} | "
          f"{'steady p99':>10} | {'CPU %/call':>10} | {'MB/call':>7} | {'frames':>6} | {'conns':>5} | {'caller late':>11}")
    print("-" * 128)
    for n, naive, rtaa in rows:
        for name, r in (("naive", naive), ("rtaa", rtaa)):
            print(f"{n:>5} | {name:<6} | {r['p50_ms']:>7.3f} | {r['p99_ms']:>8.3f} | {r['max_ms']:>8.2f} | "
                  f"{r['steady_p50_ms']:>10.3f} | {r['steady_p99_ms']:>10.3f} | "
                  f"{r['cpu_pct_per_call']:>10.3f} | {r['peak_growth_kb'] / 1024 / n:>7.3f} | {r['n']:>6} | "
                  f"{int(r['provider_connections']):>5} | "
                  f"{r['callers']['max_late_ms']:>8.1f} ms")
        print(f"{n:>5} | {'ratio':<6} | {rtaa['p50_ms'] / naive['p50_ms']:>7.2f} | {rtaa['p99_ms'] / naive['p99_ms']:>8.2f} | "
              f"{'':>8} | {rtaa['steady_p50_ms'] / naive['steady_p50_ms']:>10.2f} | "
              f"{rtaa['steady_p99_ms'] / naive['steady_p99_ms']:>10.2f} | "
              f"{rtaa['cpu_pct_per_call'] / naive['cpu_pct_per_call']:>10.2f} |")
    print("ratio = rtaa / naive (same run). steady = frames received after the last provider stream opened.")
    print("CPU %/call = target process CPU / (calls x audio seconds). Caller late = worst pacing lateness of the")
    print("caller process (large values mean the machine, not the target, was the bottleneck).")
    print("MB/call = peak RSS growth of the target during the run / calls.")
    print("Target: rtaa p99 < 5 ms at 100 calls.")


if __name__ == "__main__":
    main()
