"""Pipeline-added latency (ingest receive -> provider send), CPU and RSS per call, rtaa vs a naive forwarder.

Three processes per run, so each one's CPU and memory is its own: the provider, the target (rtaa's
pipeline with the deepgram provider -- the real deepgram-sdk path -- pointed at the provider, or the
baseline), and the callers (N concurrent calls paced at 36 ms frames, starts spread over 1 s). The
baseline is the naive forwarder of docs/architecture.md ("Performance goals"): json.loads + b64decode +
one raw websocket per call to the same provider, nothing else (no single-flight, no KeepAlive, no
reconnect, no replay buffer, no metrics). Both targets time the same span: from the moment the ingest's
read of a frame returns to the moment the provider send returns, for frames whose provider stream is open.

The provider is a sink by default (``--provider sink``): it reads the audio and sends no results until
CloseStream, like the harness of issue 16, so rtaa's reconnect-replay buffer fills up to its limit (16 s)
and the RSS per call is measured with it full. ``--provider emulator`` uses the Deepgram emulator
(segmenter engine: finals every few seconds, so the buffer stays short).

Measured per run: CPU and latency over the middle half of the calls (25 % to 75 % of their length, the
ramp and the end left out); RSS per added call = (RSS at 75 % of the calls - RSS before any call) / N;
after the calls ended, the RSS still held per call, and after glibc's ``malloc_trim(0)``. Ratios are
rtaa / naive, measured in the same run.

    python bench/bench_pipeline.py                              # 100, 200, 400 calls of 30 s
    python bench/bench_pipeline.py --calls 100 --seconds 20 --provider emulator
    python bench/bench_pipeline.py --calls 200 --replay-limit-s 0  # rtaa without its replay buffer
    python bench/bench_pipeline.py --calls 200 --targets rtaa --profile /tmp/prof   # + py-spy stacks
    python bench/bench_pipeline.py --targets naive,rtaa@/tmp/before,rtaa   # + an older checkout, same run
    python bench/bench_pipeline.py --targets naive,naive+uvloop,rtaa,rtaa+uvloop   # the event loop's share
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import ctypes.util
import gc
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


class _Window:
    """Samples, CPU and memory over one measured window (shared by the rtaa and naive targets)."""

    def __init__(self, samples: array, state: dict) -> None:
        self.samples, self.state = samples, state
        self.measuring = False

    def idle(self) -> dict:
        gc.collect()
        self.state["rss_idle"] = _mem_kb("VmRSS")
        return {"rss_idle_kb": self.state["rss_idle"]}

    def start(self) -> dict:
        del self.samples[:]
        self.measuring = True
        self.state["cpu0"], self.state["t0"] = _cpu_seconds(), time.perf_counter()
        return {}

    def report(self, **extra: object) -> dict:
        self.measuring = False
        st = self.state
        return {**_percentiles(self.samples), "cpu_s": _cpu_seconds() - st["cpu0"],
                "wall_s": time.perf_counter() - st["t0"], "rss_full_kb": _mem_kb("VmRSS"), **extra}


def _percentiles(samples: array) -> dict:
    if not samples:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
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


def _malloc_trim() -> bool:
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0)) if name else False
    except (OSError, AttributeError):
        return False


async def _after(active) -> dict:
    """RSS once every call has ended (bounded wait), then after malloc_trim(0)."""
    deadline = time.monotonic() + 15
    while active() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    gc.collect()
    out = {"left_active": active(), "rss_after_kb": _mem_kb("VmRSS")}
    _malloc_trim()
    out["rss_trimmed_kb"] = _mem_kb("VmRSS")
    return out


async def _serve_commands(window: _Window, report, active) -> None:
    """Target protocol on stdin, one JSON line back per command: idle (RSS before any call), start
    (the measured window begins), report (it ends: latency, CPU, RSS now), after (RSS once the calls ended)."""
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "idle":
            out = window.idle()
        elif line == "start":
            out = window.start()
        elif line == "report":
            out = report()
        elif line == "after":
            out = await _after(active)
        else:
            return
        print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- roles
async def role_emulator() -> None:
    from rtaa_cli.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(seed=1, max_closed_records=1000)) as emu:
        print(emu.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def role_sink() -> None:
    """A Deepgram-protocol sink: reads the audio, answers nothing until CloseStream (then Metadata, 1000)."""
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        try:
            async for message in ws:
                if isinstance(message, str) and "CloseStream" in message:
                    await ws.send('{"type":"Metadata","request_id":"bench","channels":1}')
                    await ws.close(1000)
                    return
        except Exception:  # noqa: BLE001
            pass

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        print(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def role_rtaa(emu_url: str, replay_limit_s: float | None, tree: str | None = None) -> None:
    if tree:  # another checkout of rtaa (e.g. the code before a change), measured in the same run
        sys.path.insert(0, os.path.abspath(tree))
    from rtaa_cli.pipeline.config import IngestConfig, PipelineConfig, ProviderConfig, WorkerConfig
    from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
    from rtaa_cli.pipeline.server import PipelineServer

    cfg = PipelineConfig(provider=ProviderConfig(name="deepgram", deepgram_url=emu_url),
                         ingest=IngestConfig(max_calls=10000),
                         worker=WorkerConfig() if replay_limit_s is None else WorkerConfig(replay_limit_s=replay_limit_s))
    server = PipelineServer(cfg, DeepgramProvider("bench", emu_url))
    samples = array("d")
    hist = server.metrics.added_latency
    observe = hist.observe
    window = _Window(samples, {})

    def record(v: float) -> None:  # bench-only: keep exact samples (in the window) next to the histogram
        if window.measuring:
            samples.append(v)
        observe(v)

    hist.observe = record  # type: ignore[method-assign]

    def report() -> dict:
        return window.report(
            provider_connections=server.metrics.value("rtaa_provider_connections_opened_total", provider="deepgram"),
            frames_waited=server.metrics.value("rtaa_frames_waited_for_provider_total"),
            replay_trimmed_kb=round(server.metrics.value("rtaa_replay_buffer_trimmed_bytes_total") / 1024))

    async with server:
        print(server.ingest_url, flush=True)
        await _serve_commands(window, report, lambda: len(server.worker.interactions))


async def role_naive(emu_url: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    samples = array("d")
    window = _Window(samples, {})
    state = {"conns": 0, "active": 0}

    async def drain(dg) -> None:
        try:
            async for _ in dg:
                pass
        except Exception:  # noqa: BLE001
            pass

    async def handler(ws) -> None:
        dg = None
        reader = None
        state["active"] += 1
        try:
            async for message in ws:
                t = time.perf_counter()
                msg = json.loads(message)
                event = msg.get("event")
                if event == "media":
                    pcm = base64.b64decode(msg["media"]["payload"])
                    if dg is not None:
                        await dg.send(pcm)
                        if window.measuring:
                            samples.append(time.perf_counter() - t)
                elif event == "start":
                    sid = msg["start"]["call_sid"]
                    dg = await connect(f"{emu_url}/v1/listen?encoding=linear16&sample_rate=8000&interim_results=true"
                                       f"&model=nova-3&tag={sid}", additional_headers={"Authorization": "Token bench"},
                                       compression=None, proxy=None)
                    state["conns"] += 1
                    reader = asyncio.ensure_future(drain(dg))
                elif event == "stop" and dg is not None:
                    await dg.send('{"type":"CloseStream"}')
        except Exception:  # noqa: BLE001
            pass
        finally:
            if reader is not None:
                try:
                    await asyncio.wait_for(reader, 5)  # the provider's close after CloseStream
                except Exception:  # noqa: BLE001
                    pass
            if dg is not None:
                await dg.close()
            state["active"] -= 1

    def report() -> dict:
        return window.report(provider_connections=state["conns"])

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"ws://127.0.0.1:{port}/v1/ingest", flush=True)
        await _serve_commands(window, report, lambda: state["active"])


async def role_callers(url: str, calls: int, seconds: float) -> None:
    """``calls`` paced callers, started over ~1 s, each streaming ``seconds`` of speech-like audio.
    Prints "go" when the first call starts, then a JSON line of its own pacing lateness (every frame) at the end."""
    import numpy as np
    from websockets.asyncio.client import connect

    from rtaa_cli.protocols.exotel import StreamEncoder

    t = np.arange(int(0.8 * RATE)) / RATE
    burst = (0.25 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    unit = np.concatenate([burst, np.zeros(int(0.4 * RATE), dtype=np.int16)]).tobytes()
    nframes = int(seconds * 1000 / FRAME_MS)
    audio = (unit * (nframes * FRAME_BYTES // len(unit) + 1))[: nframes * FRAME_BYTES]
    late = array("d")
    failed = []

    async def call(i: int) -> None:
        await asyncio.sleep(i / calls)  # spread starts over 1 s, like a ramp
        enc = StreamEncoder(f"ST{i}", f"CA{i}")
        try:
            async with connect(url, compression=None, proxy=None) as ws:
                await ws.send(enc.connected())
                await ws.send(enc.start())
                t0 = time.perf_counter()
                for k in range(nframes):
                    due = t0 + k * FRAME_MS / 1000
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    late.append(max(0.0, -delay))
                    await ws.send(enc.media(audio[k * FRAME_BYTES:(k + 1) * FRAME_BYTES]))
                await ws.send(enc.stop())
        except Exception as exc:  # noqa: BLE001 - counted: a run with failed calls is not valid
            failed.append(repr(exc))

    print("go", flush=True)
    await asyncio.gather(*(call(i) for i in range(calls)))
    late_sorted = sorted(late)
    print(json.dumps({"late_frames": sum(1 for v in late if v > 0), "late_over_10ms": sum(1 for v in late if v > 0.010),
                      "late_p99_ms": round(late_sorted[int(0.99 * len(late_sorted))] * 1000, 1) if late else 0.0,
                      "max_late_ms": round(max(late, default=0) * 1000, 1), "failed": len(failed),
                      "errors": failed[:3]}), flush=True)


# ------------------------------------------------------------------------------------------ driver
def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "NO_PROXY": "*"})


def _ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def _py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    """Sample the target over the window (py-spy, a dev tool: pip install py-spy), without pausing it."""
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen([exe if os.path.exists(exe) else "py-spy", "record", "--pid", str(pid), "--nonblocking",
                             "-r", "200", "-d", str(max(1, int(seconds))), "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(target: str, calls: int, seconds: float, provider: str, replay_limit_s: float | None,
            profile: str | None = None) -> dict:
    prov = _spawn("--role", provider)
    prov_url = prov.stdout.readline().strip()
    name, _, tree = target.partition("@")
    role, _, loop = name.partition("+")
    extra = (["--replay-limit-s", str(replay_limit_s)] if replay_limit_s is not None else []) + \
        (["--tree", tree] if tree else []) if role == "rtaa" else []
    tgt = _spawn("--role", role, "--emu", prov_url, "--loop", loop or "asyncio", *extra)
    try:
        url = tgt.stdout.readline().strip()
        rep = _ask(tgt, "idle")
        callers = _spawn("--role", "callers", "--url", url, "--calls", str(calls), "--seconds", str(seconds))
        assert callers.stdout.readline().strip() == "go"
        go = time.monotonic()
        # Middle half of the calls: starts are spread over 1 s, so every call is past its first quarter.
        time.sleep(max(0.0, go + 1.0 + 0.25 * seconds - time.monotonic()))
        _ask(tgt, "start")
        spy = _py_spy(tgt.pid, 0.5 * seconds - 1.0, f"{profile}/{_label(target)}-{calls}.txt") if profile else None
        time.sleep(max(0.0, go + 0.75 * seconds - time.monotonic()))
        if spy is not None:
            spy.wait(30)
        rep.update(_ask(tgt, "report"))
        rep["callers"] = json.loads(callers.stdout.readline())
        callers.wait(60)
        rep.update(_ask(tgt, "after"))
        rep["cpu_pct_per_call"] = 100.0 * rep["cpu_s"] / (calls * rep["wall_s"])  # % of a core per live call
        rep["mb_per_call"] = (rep["rss_full_kb"] - rep["rss_idle_kb"]) / 1024 / calls
        rep["after_mb_per_call"] = (rep["rss_after_kb"] - rep["rss_idle_kb"]) / 1024 / calls
        rep["trimmed_mb_per_call"] = (rep["rss_trimmed_kb"] - rep["rss_idle_kb"]) / 1024 / calls
        return rep
    finally:
        for p in (tgt, prov):
            try:
                p.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _label(target: str) -> str:
    """'rtaa@/tmp/before' -> 'rtaa@before', 'rtaa+uvloop' -> 'rtaa+uvloo' (10 characters at most, for the table)."""
    role, _, tree = target.partition("@")
    return (role + "@" + os.path.basename(tree.rstrip("/")))[:10] if tree else role[:10]


def _run(main, loop: str):
    """asyncio.run on the standard loop or uvloop (here, not rtaa_cli.eventloop: --tree checkouts may predate it)."""
    factory = None
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="driver")
    ap.add_argument("--emu")
    ap.add_argument("--url")
    ap.add_argument("--calls", type=int, nargs="*", default=[100, 200, 400])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each call (>= 24 s fills the buffer)")
    ap.add_argument("--provider", choices=("sink", "emulator"), default="sink")
    ap.add_argument("--targets", default="naive,rtaa",
                    help="comma-separated, run in this order per N; rtaa@PATH = rtaa from another checkout; "
                         "TARGET+uvloop = that target on uvloop (else the standard asyncio loop)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--replay-limit-s", type=float, help="rtaa's replay buffer (default: WorkerConfig's)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the target over the window: DIR/TARGET-N.txt (raw stacks)")
    a = ap.parse_args()
    if a.role == "emulator":
        return asyncio.run(role_emulator())
    if a.role == "sink":
        return asyncio.run(role_sink())
    if a.role == "rtaa":
        return _run(role_rtaa(a.emu, a.replay_limit_s, a.tree), a.loop)
    if a.role == "naive":
        return _run(role_naive(a.emu), a.loop)
    if a.role == "callers":
        return asyncio.run(role_callers(a.url, a.calls[0], a.seconds))
    targets = a.targets.split(",")
    rows = []
    for n in a.calls:
        reps = {}
        for target in targets:
            reps[target] = measure(target, n, a.seconds, a.provider, a.replay_limit_s, a.profile)
            print(f"  measured {n} calls, {target}: {json.dumps(reps[target])}", file=sys.stderr, flush=True)
        rows.append((n, reps))
    limit = "default" if a.replay_limit_s is None else f"{a.replay_limit_s:g} s"
    print(f"\n{a.seconds:g} s calls of 36 ms frames, provider {a.provider}, rtaa replay limit {limit}; "
          f"latency = ingest receive -> provider send; CPU and latency over the middle half of the calls")
    print(f"{'calls':>5} | {'target':<10} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} | {'CPU %/call':>10} | "
          f"{'MB/call':>7} | {'after':>6} | {'trimmed':>7} | {'frames':>6} | {'conns':>5} | {'caller late p99/max':>19}")
    print("-" * 128)
    for n, reps in rows:
        for name, r in reps.items():
            c = r["callers"]
            print(f"{n:>5} | {_label(name):<10} | {r['p50_ms'] or 0:>7.3f} | {r['p99_ms'] or 0:>7.3f} | {r['max_ms'] or 0:>7.2f} | "
                  f"{r['cpu_pct_per_call']:>10.3f} | {r['mb_per_call']:>7.3f} | {r['after_mb_per_call']:>6.3f} | "
                  f"{r['trimmed_mb_per_call']:>7.3f} | {r['n']:>6} | {int(r['provider_connections']):>5} | "
                  f"{c['late_p99_ms']:>7.1f} / {c['max_late_ms']:>6.1f} ms" + (f"  FAILED CALLS {c['failed']}" if c["failed"] else ""))
        for name in [t for t in reps if t.startswith("rtaa")] if "naive" in reps else ():  # vs asyncio's naive
            nv, rt = reps["naive"], reps[name]
            print(f"{n:>5} | {'/naive':<10} | {_ratio(rt['p50_ms'], nv['p50_ms']):>7} | {_ratio(rt['p99_ms'], nv['p99_ms']):>7} | "
                  f"{'':>7} | {_ratio(rt['cpu_pct_per_call'], nv['cpu_pct_per_call']):>10} | "
                  f"{_ratio(rt['mb_per_call'], nv['mb_per_call']):>7} | {_label(name)}")
    print("/naive = that rtaa target / naive (same run). CPU %/call = target CPU over the window / (calls x window seconds).")
    print("MB/call = (RSS at 75 % of the calls - RSS before the first call) / calls; after = the same once every call")
    print("ended; trimmed = after glibc malloc_trim(0). Caller late = the caller process's own pacing lateness")
    print("(large values mean the machine, not the target, was the bottleneck: the run is then not valid).")


if __name__ == "__main__":
    main()
