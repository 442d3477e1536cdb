"""`rtaa soak --master` with a `--worker` process that stalls mid-run (SIGSTOP: a load generator starved
of CPU, as on a busy 2-core CI host). Locust's own rule drops a worker after 3 missed 1 s heartbeats and
then stops the whole test, so a 3 s stall silently ended the run with no call reported ("no call
finished"). rtaa's master waits 10 s; a worker lost for longer makes the run INVALID with the reason."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from helpers.soak import readline, readline_matching
from helpers.soak_target import RTAA, SCENARIO, SOAK_TIMEOUT_S, SUPPORT
from helpers.paths import ROOT

STALLS_S = {"short": 5.0, "long": 14.0}  # under / over the master's 10 s heartbeat allowance


def _start(tmp: Path, name: str, procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, subprocess.Popen]:
    server = subprocess.Popen([sys.executable, SUPPORT, "{}", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(server)
    line = readline(server, 30.0)
    assert line, f"{name}: test target did not start"
    urls = orjson.loads(line)
    toml = tmp / f"{name}.toml"
    toml.write_text(SCENARIO.format(name=name, latency=150, jitter=0, users=2, mix="normal = 1")
                    .replace('duration = "4s"', 'duration = "12s"'))
    master = subprocess.Popen(
        [*RTAA, "soak", str(toml), "--json", str(tmp / f"{name}.json"), "--master", "--expect-workers", "1",
         "--master-port", "0", "--target", f"ws://{urls['target']}/v1/ingest",
         "--transcripts", f"ws://{urls['target']}/v1/transcripts", "--provider-stats", f"{urls['emulator_http']}/stats"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(master)
    waiting = readline_matching(master, "waiting for 1 worker(s) on ", 60.0)
    assert waiting, f"{name}: the master did not announce its port"
    worker = subprocess.Popen([*RTAA, "soak", "--worker", "--master-host", "127.0.0.1",
                               "--master-port", waiting.rsplit(":", 1)[1].strip()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(worker)
    return master, worker


def test_a_stalled_worker_is_waited_for_and_a_lost_one_makes_the_run_invalid(tmp_path) -> None:
    procs: list[subprocess.Popen] = []
    try:
        runs = {name: _start(tmp_path, name, procs) for name in STALLS_S}
        for name, (master, worker) in runs.items():
            # the first progress line (5 s into the run): calls are under way on the worker
            assert readline_matching(master, "calls active", 60.0), f"{name}: the run never started"
            os.kill(worker.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        for name in sorted(STALLS_S, key=STALLS_S.get):  # the fault's length, not a synchronisation
            time.sleep(max(0.0, stopped + STALLS_S[name] - time.monotonic()))
            os.kill(runs[name][1].pid, signal.SIGCONT)
        docs = {}
        for name, (master, _worker) in runs.items():
            out, err = master.communicate(timeout=SOAK_TIMEOUT_S)
            docs[name] = orjson.loads((tmp_path / f"{name}.json").read_bytes())
            assert master.returncode in (0, 1, 2), err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait(timeout=20)
    short, long = docs["short"], docs["long"]
    assert not [r for r in short["invalid_reasons"] if "Locust worker" in r], short["invalid_reasons"]
    assert short["calls"]["finished"] >= 2 and short["calls"]["unfinished"] == 0, short["calls"]
    assert long["verdict"] == "invalid"
    assert [r for r in long["invalid_reasons"] if "1 Locust worker(s) sent no heartbeat for 10 s" in r], \
        long["invalid_reasons"]


def test_a_worker_missing_the_scenario_audio_says_so_once_and_the_run_is_invalid(tmp_path) -> None:
    """Issue 10 item 14: a worker started where the scenario's (relative) audio path does not exist printed
    ~450 lines of Locust tracebacks (one per call attempt) and exited 0. Now it tells the master once, the
    master stops the run as invalid with that reason, and the worker exits 1 with one line."""
    repo = ROOT
    here, elsewhere = tmp_path / "master-host", tmp_path / "load-host"
    (here / "calls").mkdir(parents=True)
    elsewhere.mkdir()
    (here / "calls" / "a.wav").write_bytes((repo / "fixtures" / "audio" / "call.wav").read_bytes())
    procs: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen([sys.executable, SUPPORT, "{}", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        procs.append(server)
        line = readline(server, 30.0)
        assert line, "test target did not start"
        urls = orjson.loads(line)
        toml = tmp_path / "w.toml"
        toml.write_text(SCENARIO.format(name="w", latency=150, jitter=0, users=2, mix="normal = 1")
                        .replace('audio = "synthetic"', 'audio = "calls/a.wav"'))
        master = subprocess.Popen(
            [*RTAA, "soak", str(toml), "--json", str(tmp_path / "w.json"), "--master", "--expect-workers", "1",
             "--master-port", "0", "--target", f"ws://{urls['target']}/v1/ingest", "-q"],
            cwd=here, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(master)
        waiting = readline_matching(master, "waiting for 1 worker(s) on ", 60.0)
        assert waiting, "the master did not announce its port"
        worker = subprocess.Popen([*RTAA, "soak", "--worker", "--master-port", waiting.rsplit(":", 1)[1].strip()],
                                  cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(worker)
        w_out, w_err = worker.communicate(timeout=60)
        m_out, m_err = master.communicate(timeout=SOAK_TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=20)
    assert worker.returncode == 1, w_err[-3000:]
    assert w_err.strip().splitlines() == [
        "error: cannot play the scenario on this worker: calls/a.wav: no such file "
        "(audio paths must exist on every worker host)"], w_err[-3000:]
    assert master.returncode == 2 and "Traceback" not in m_err, m_err[-3000:]
    doc = orjson.loads((tmp_path / "w.json").read_bytes())
    assert doc["verdict"] == "invalid" and doc["calls"]["finished"] == 0
    assert doc["invalid_reasons"][0].startswith("Locust worker "), doc["invalid_reasons"]
    assert "cannot play the scenario on this worker: calls/a.wav: no such file" in doc["invalid_reasons"][0]
    assert doc["run"]["stopped_early"].startswith("stopped early: Locust worker ")
