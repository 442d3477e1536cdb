"""A real `rtaa serve` process (its provider: the emulator, in this process) under rtaa_cli.hostile's
fuzz while legitimate calls stream through it. Shared by tests/pipeline/test_pipeline_fuzz.py and
bench/bench_fuzz.py."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from rtaa_cli import hostile
from rtaa_cli.audio import frames, load_audio
from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.recorder import CallResult
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.emulator import Emulator, EmulatorConfig
from helpers.pipeline import http_get
from helpers.paths import CALL_WAV

CALL = CALL_WAV


def metric(text: str, name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


@dataclass
class FuzzRun:
    outcome: hostile.Outcome
    legit: list[CallResult]
    call_bytes: int  # audio bytes each legitimate call should have delivered
    metrics: str  # the server's /metrics after the run
    health_status: int
    alive: bool  # the server process was still running after the fuzz
    calls_active_after: float
    exit_code: int | None  # after SIGTERM
    provider: dict[str, Any]  # the emulator's /stats
    log_records: list[dict[str, Any]]  # every stderr line, parsed (a non-JSON line raises)
    cpu_s: float  # the server process's CPU time over the whole run
    peak_rss_mb: float


def _proc_cpu_rss(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


async def fuzz_serve(case_list: list[hostile.Case], log_path: Path, *, legit_calls: int = 3, speed: float = 3.0,
                     concurrency: int = 16, log_level: str = "info") -> FuzzRun:
    call_frames = frames(load_audio(CALL).pcm, 8000)
    async with Emulator(EmulatorConfig(seed=3)) as emu:
        with open(log_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from rtaa_cli.cli import main; main()", "serve", "--port", "0", "--json",
                 "--provider", "deepgram", "--deepgram-url", emu.url, "--reconnect-grace-s", "1",
                 "--log-level", log_level],
                stdout=subprocess.PIPE, stderr=err,
                env={**os.environ, "DEEPGRAM_API_KEY": "fuzz-key", "NO_PROXY": "*"})
        try:
            info = orjson.loads(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30))
            legit = [asyncio.ensure_future(run_call(
                info["ingest"], CallScript(call_frames, CallOptions(f"CA-legit-{k}", f"ST-legit-{k}")),
                speed=speed, transcripts_url=info["transcripts"], wait_final_s=15)) for k in range(legit_calls)]
            outcome = await hostile.attack(info["ingest"], case_list, concurrency=concurrency)
            results = list(await asyncio.gather(*legit))

            def active() -> float:
                return metric(http_get(info["metrics"])[1].decode(), "rtaa_calls_active")

            left = await asyncio.to_thread(active)
            for _ in range(200):  # aborted calls end after their 1 s resume grace: a bounded poll
                if left == 0:
                    break
                await asyncio.sleep(0.05)
                left = await asyncio.to_thread(active)
            metrics = (await asyncio.to_thread(http_get, info["metrics"]))[1].decode()
            health = (await asyncio.to_thread(http_get, info["health"]))[0]
            alive = proc.poll() is None
            cpu, rss = _proc_cpu_rss(proc.pid) if alive else (0.0, 0.0)
            stats = emu.stats()
        finally:
            proc.terminate()
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
    records = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    return FuzzRun(outcome, results, sum(map(len, call_frames)), metrics, health, alive, left, proc.returncode,
                   stats, records, cpu, rss)
