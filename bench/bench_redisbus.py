"""The Redis Streams bus against the memory bus (docs/scale-out.md), and failover over repeated kills.

Every part is its own process: a Redis of the bench's own (so its operation counts and CPU are this run's
only), ``rtaa fake-deepgram``, the target (memory: one ``rtaa serve``; redis: ``--role ingest`` plus one
``--role worker``), and the callers here (N concurrent calls, 36 ms frames paced in real time).

Per target, over the steady window (after every call started):
- pipeline-added latency, ingest receive -> provider send (the workers' own
  ``rtaa_pipeline_added_latency_seconds`` histogram; quantiles interpolated inside its buckets);
- end-to-end latency of finals (``rtaa_end_to_end_latency_seconds{final="true"}``);
- CPU per call: the target processes' ``process_cpu_seconds_total`` (+ Redis's used_cpu for the redis target);
- Redis: commands and network bytes per call-second (INFO commandstats / stats deltas).

Failover (``--kills K``): 3 workers, 6 long calls; K times, SIGKILL the worker owning the most calls, time
from the kill to each of its calls' successor provider stream (the emulator's /stats), start a new worker.

    python bench/bench_redisbus.py                    # 100 calls, 15 s, 10 kills
    python bench/bench_redisbus.py --calls 50 --seconds 10 --kills 3
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rtaa_cli.protocols.exotel import StreamEncoder  # noqa: E402

CLI = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
ENV = {**os.environ, "NO_PROXY": "*", "DEEPGRAM_API_KEY": "bench-key"}
FRAME = 576
RATE = 8000


def speech_like(seconds: float) -> list[bytes]:
    t_on = np.arange(int(0.8 * RATE)) / RATE
    burst = 0.25 * 32767 * np.sin(2 * np.pi * 220 * t_on) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t_on))
    one = np.concatenate([burst, np.zeros(int(0.4 * RATE))]).astype(np.int16).tobytes()
    pcm = one * int(seconds / 1.2 + 1)
    pcm = pcm[: int(seconds * 1000 / 36) * FRAME]
    return [pcm[i:i + FRAME] for i in range(0, len(pcm), FRAME)]


class Proc:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
        self.info = orjson.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with urllib.request.urlopen(self.info["metrics"], timeout=10) as resp:  # noqa: S310 - loopback
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the bench's own (no persistence)."""

    def __init__(self) -> None:
        import redis

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rtaa-bench-redis-")
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is needed (apt-get install redis-server)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                self.client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)

    def snapshot(self) -> dict[str, float]:
        info = self.client.info("all")
        calls = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
        return {"calls": calls, "net_in": info["total_net_input_bytes"], "net_out": info["total_net_output_bytes"],
                "cpu": info["used_cpu_user"] + info["used_cpu_sys"], "mem": info["used_memory"],
                "by_cmd": {k[8:]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """q-quantile (ms) from cumulative (le, count) buckets, linear inside a bucket."""
    total = buckets[-1][1]
    if total <= 0:
        return None
    want = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= want:
            if le == float("inf"):
                return prev_le * 1000
            frac = (want - prev_c) / (c - prev_c) if c > prev_c else 0.0
            return (prev_le + frac * (le - prev_le)) * 1000
        prev_le, prev_c = le, c
    return None


def histogram(before: dict[str, float], after: dict[str, float], name: str, labels: str = "") -> list:
    out = []
    for key, value in after.items():
        if key.startswith(name + "_bucket{") and labels in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    return sorted(out)


async def one_call(url: str, iid: str, frames: list[bytes], stats: dict) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, proxy=None, compression=None, max_size=None) as ws:
        enc = StreamEncoder(f"ST-{iid}", iid)
        await ws.send(enc.connected())
        await ws.send(enc.start())
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            await ws.send(enc.media(f))
            delay = t0 + (i + 1) * 0.036 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats["late_frames"] += 1
        await ws.send(enc.stop())


async def drive(ingest_url: str, calls: int, seconds: float, on_steady, stats: dict) -> None:
    frames = speech_like(seconds)
    ramp_s = 1.0
    tasks = []
    for i in range(calls):
        tasks.append(asyncio.get_running_loop().create_task(one_call(ingest_url, f"CA-b{i:04d}", frames, stats)))
        await asyncio.sleep(ramp_s / calls)
    await asyncio.sleep(1.0)  # every call's provider stream is open by now (pacing)
    await asyncio.to_thread(on_steady)
    await asyncio.sleep(max(0.0, seconds - ramp_s - 2.0))
    await asyncio.to_thread(on_steady)
    await asyncio.gather(*tasks)


def measure(target: str, calls: int, seconds: float) -> dict:
    redis = Redis() if target == "redis" else None
    emu = Proc(["fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live", "--seed", "7"])
    common = ["--json", "--log-level", "error", "--max-calls", str(calls + 10)]
    procs: list[Proc] = []
    try:
        if redis is None:
            procs.append(Proc(["serve", "--port", "0", *common, "--provider", "deepgram",
                               "--deepgram-url", emu.info["url"]]))
            ingest = workers = procs[0]
            workers_list = [procs[0]]
        else:
            ingest = Proc(["serve", "--bus", redis.url, "--role", "ingest", "--port", "0", *common])
            workers = Proc(["serve", "--bus", redis.url, "--role", "worker", *common, "--provider", "deepgram",
                            "--deepgram-url", emu.info["url"]])
            procs += [ingest, workers]
            workers_list = [workers]
        snaps: list[tuple[float, list[dict], dict | None]] = []

        def snap() -> None:
            snaps.append((time.perf_counter(), [p.metrics() for p in procs], redis.snapshot() if redis else None))

        stats = {"late_frames": 0}
        asyncio.run(drive(ingest.info["ingest"], calls, seconds, snap, stats))
        (t0, m0, r0), (t1, m1, r1) = snaps
        wall = t1 - t0
        cpu = sum(b["process_cpu_seconds_total"] - a["process_cpu_seconds_total"] for a, b in zip(m0, m1))
        wi = procs.index(workers_list[0])
        added = histogram(m0[wi], m1[wi], "rtaa_pipeline_added_latency_seconds")
        e2e = histogram(m0[wi], m1[wi], "rtaa_end_to_end_latency_seconds", 'final="true"')
        out = {"target": target, "calls": calls, "wall_s": round(wall, 2),
               "added_p50_ms": quantile(added, 0.5), "added_p99_ms": quantile(added, 0.99),
               "e2e_final_p50_ms": quantile(e2e, 0.5), "e2e_final_p99_ms": quantile(e2e, 0.99),
               "cpu_pct_per_call": 100 * cpu / wall / calls, "late_caller_frames": stats["late_frames"]}
        if redis is not None and r0 is not None and r1 is not None:
            call_s = calls * wall
            out.update({"redis_cpu_pct_per_call": 100 * (r1["cpu"] - r0["cpu"]) / wall / calls,
                        "redis_cmds_per_call_s": (r1["calls"] - r0["calls"]) / call_s,
                        "redis_in_bytes_per_call_s": (r1["net_in"] - r0["net_in"]) / call_s,
                        "redis_out_bytes_per_call_s": (r1["net_out"] - r0["net_out"]) / call_s,
                        "redis_mem_mb": r1["mem"] / 1e6,
                        "top_cmds_per_call_s": {k: round((v - r0["by_cmd"].get(k, 0)) / call_s, 2)
                                                for k, v in sorted(r1["by_cmd"].items(),
                                                                   key=lambda kv: -(kv[1] - r0["by_cmd"].get(kv[0], 0)))[:6]}})
        return out
    finally:
        for p in procs:
            p.stop()
        emu.stop()
        if redis is not None:
            redis.stop()


async def _failover(redis: Redis, emu: Proc, kills: int) -> list[float]:
    prefix = "rtaa"
    common = ["--bus", redis.url, "--json", "--log-level", "error"]
    ingest = Proc(["serve", *common, "--role", "ingest", "--port", "0"])
    workers = [Proc(["serve", *common, "--role", "worker", "--provider", "deepgram", "--deepgram-url",
                     emu.info["url"]]) for _ in range(3)]
    iids = [f"CA-f{i}" for i in range(6)]
    frames = speech_like(kills * 4.5 + 10)
    stats = {"late_frames": 0}
    calls = [asyncio.get_running_loop().create_task(one_call(ingest.info["ingest"], iid, frames, stats))
             for iid in iids]
    await asyncio.sleep(3.0)
    samples: list[float] = []

    def conns(iid: str) -> list[dict]:
        with urllib.request.urlopen(emu.info["stats"], timeout=10) as resp:  # noqa: S310 - loopback
            st = orjson.loads(resp.read())
        return [c for c in st["connections"] if c["interaction"] == iid]

    try:
        for _ in range(kills):
            owners = {iid: (redis.client.get(f"{prefix}:c:{{{iid}}}:lease") or b"").decode().split(":")[0]
                      for iid in iids}
            by_id = {w.info["worker_id"]: w for w in workers}
            victim_id = max(by_id, key=lambda wid: list(owners.values()).count(wid))
            victims = [iid for iid, wid in owners.items() if wid == victim_id]
            before = {iid: len(conns(iid)) for iid in victims}
            killed_at = time.time()
            by_id[victim_id].proc.kill()
            by_id[victim_id].proc.wait()
            workers.remove(by_id[victim_id])
            workers.append(Proc(["serve", *common, "--role", "worker", "--provider", "deepgram", "--deepgram-url",
                                 emu.info["url"]]))
            deadline = time.monotonic() + 15
            pending = set(victims)
            while pending and time.monotonic() < deadline:
                for iid in list(pending):
                    cs = conns(iid)
                    if len(cs) > before[iid]:
                        samples.append(max(c["opened_at"] for c in cs) - killed_at)
                        pending.discard(iid)
                await asyncio.sleep(0.02)
            if pending:
                print(f"  no successor within 15 s for {sorted(pending)}", flush=True)
            await asyncio.sleep(1.5)
    finally:
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        ingest.stop()
        for w in workers:
            w.stop()
    return samples


def failover(kills: int) -> list[float]:
    redis = Redis()
    emu = Proc(["fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live", "--seed", "7"])
    try:
        return asyncio.run(_failover(redis, emu, kills))
    finally:
        emu.stop()
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--kills", type=int, default=10)
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    rows = [measure(t, a.calls, a.seconds) for t in ("memory", "redis")]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("target | calls | added p50 ms | added p99 ms | e2e final p50 ms | e2e final p99 ms | CPU %/call | late caller frames")
    for r in rows:
        print(f"{r['target']:6} | {r['calls']:5} | {fmt(r['added_p50_ms']):>12} | {fmt(r['added_p99_ms']):>12} | "
              f"{fmt(r['e2e_final_p50_ms']):>16} | {fmt(r['e2e_final_p99_ms']):>16} | {r['cpu_pct_per_call']:10.3f} | "
              f"{r['late_caller_frames']}")
    r = rows[1]
    print(f"redis: CPU {r['redis_cpu_pct_per_call']:.3f} %/call, {r['redis_cmds_per_call_s']:.1f} commands, "
          f"{r['redis_in_bytes_per_call_s']:.0f} B in, {r['redis_out_bytes_per_call_s']:.0f} B out per call-second; "
          f"used_memory {r['redis_mem_mb']:.1f} MB at the end; top commands/call-s {r['top_cmds_per_call_s']}")
    if a.kills:
        samples = sorted(failover(a.kills))
        if samples:
            q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]  # noqa: E731
            print(f"failover over {a.kills} SIGKILLs ({len(samples)} calls taken over, --lease-ms 2000): "
                  f"min {samples[0]:.3f} s  p50 {q(0.5):.3f} s  p90 {q(0.9):.3f} s  max {samples[-1]:.3f} s")


if __name__ == "__main__":
    main()
