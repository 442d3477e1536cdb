"""`rtaa soak --metrics-port`: while a real soak runs, its own figures are served in Prometheus text (the
same SoakStats the report is made of), parsed here with prometheus-client's own parser; a port in use is
a usage error."""
from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from helpers.soak_target import RTAA, SOAK_TIMEOUT_S

SCENARIO = """name = "watched"
[load]
users = 2
spawn_rate = 10
duration = "8s"
[call]
audio = ["fixtures/audio/call.wav"]
length = "3s"
pause = ["0.2s", "0.3s"]
wait_final = "5s"
"""


def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_a_running_soak_serves_its_figures_in_prometheus_text(tmp_path) -> None:
    toml = tmp_path / "watched.toml"
    toml.write_text(SCENARIO)
    out = tmp_path / "run.json"
    proc = subprocess.Popen([*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = threading.Event()
    url: list[str] = []
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            m = re.search(r"soak metrics \(Prometheus\): (http://\S+/metrics)", line)
            if m and not url:
                url.append(m.group(1))
                found.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "".join(err_lines)[-2000:]
        during = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded poll: until a call has completed (figures come per call)
            m = _scrape(url[0])
            if m["rtaa_soak_calls_completed_total"][()] >= 1:
                during = m
                break
            time.sleep(0.2)
        assert during is not None, "no call completed while the run was watched"
        proc.wait(SOAK_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    doc = orjson.loads(out.read_bytes())
    assert doc["run"]["metrics_url"] == url[0]
    assert during["rtaa_soak_users"][()] == 2
    assert during["rtaa_soak_info"][(("scenario", "watched"), ("target", doc["run"]["target"]))] == 1
    started, done = during["rtaa_soak_calls_started_total"][()], during["rtaa_soak_calls_completed_total"][()]
    assert started >= done >= 1 and done <= doc["calls"]["completed"]
    buckets = during["rtaa_soak_final_latency_seconds_bucket"]
    counts = [buckets[(("le", le),)] for le in ("0.1", "0.2", "0.5", "1", "2", "10", "+Inf")]
    assert counts == sorted(counts) and counts[-1] == during["rtaa_soak_final_latency_seconds_count"][()] >= 1
    assert during["rtaa_soak_final_latency_seconds_sum"][()] > 0
    assert during["rtaa_soak_pacing_lateness_seconds_count"][()] > 0
    # the provider's view (the local emulator's records), measured, so present
    assert during["rtaa_soak_provider_duplicates"][()] == 0
    assert (("side", "provider"),) in during["rtaa_soak_closes_1011_total"]


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path) -> None:
    toml = tmp_path / "watched.toml"
    toml.write_text(SCENARIO)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([*RTAA, "soak", str(toml), "--quiet", "--metrics-port", str(port)],
                              capture_output=True, text=True, timeout=SOAK_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--metrics-port {port}: cannot listen" in proc.stderr and "Traceback" not in proc.stderr
