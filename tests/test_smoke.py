"""``rtaa smoke`` through the real CLI against real servers on 127.0.0.1: the real pipeline
(``rtaa serve --provider fake``), the correct reference ingest with the emulator's stats, and a
broken (racing) ingest that the smoke must fail."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from rtaa_cli.emulator import EmulatorConfig, start_in_thread
from helpers.soak import Flaws, Target, readline

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
ARGS = ["--audio", "synthetic", "--length", "4", "--wait-final", "4"]


def _smoke(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([*RTAA, "smoke", *args, *ARGS, "--json", str(tmp / f"{name}.json"),
                             "--junit", str(tmp / f"{name}.xml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, tmp: Path, name: str) -> tuple[int, dict, str]:
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"rtaa smoke ({name}) did not finish in 90 s")
    path = tmp / f"{name}.json"
    assert path.exists(), out + err
    return proc.returncode, orjson.loads(path.read_bytes()), out + err


def _checks(doc: dict) -> dict[str, bool | None]:
    return {r["name"]: r["passed"] for r in doc["thresholds"]}


@pytest.fixture(scope="module")
def smokes(tmp_path_factory) -> dict[str, tuple[int, dict, str]]:
    tmp = tmp_path_factory.mktemp("smoke")
    results = {}
    serve = subprocess.Popen([*RTAA, "serve", "--port", "0", "--json", "--provider", "fake"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    emus = [start_in_thread(EmulatorConfig(handshake_delay_ms=(150, 300))) for _ in range(2)]
    targets = [Target(emus[0].url).__enter__(), Target(emus[1].url, Flaws(race=True)).__enter__(),
               Target(emus[0].url, Flaws(untagged=True)).__enter__()]
    try:
        line = readline(serve, 30.0)  # serve announces its endpoints once it listens
        assert line, "rtaa serve did not start"
        info = orjson.loads(line)
        procs = {
            # --provider fake: no emulator to ask, so the provider checks are turned off
            "serve": _smoke(["--url", info["ingest"], "--transcripts", info["transcripts"], "--provider-stats", "off"],
                            tmp, "serve"),
            # the same without saying so: the provider checks are not measured -> INVALID, never PASS
            "unjudged": _smoke(["--url", info["ingest"], "--transcripts", info["transcripts"]], tmp, "unjudged"),
            "untagged": _smoke(["--url", f"ws://{targets[2].url}/v1/ingest",
                                "--provider-stats", f"{emus[0].http_url}/stats"], tmp, "untagged"),
            "http404": _smoke(["--url", f"ws://{targets[0].url}/nosuch", "--health", ""], tmp, "http404"),
            "reference": _smoke(["--url", f"ws://{targets[0].url}/v1/ingest",
                                 "--provider-stats", f"{emus[0].http_url}/stats"], tmp, "reference"),
            "race": _smoke(["--url", f"ws://{targets[1].url}/v1/ingest",
                            "--provider-stats", f"{emus[1].http_url}/stats"], tmp, "race"),
        }
        try:
            for name, proc in procs.items():
                results[name] = _finish(proc, tmp, name)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
        results["dir"] = tmp
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:  # bounded: never leave it running
            serve.kill()
            serve.wait(timeout=5)
        for t in targets:
            t.__exit__(None, None, None)
        for e in emus:
            e.stop()
    return results


def test_smoke_passes_against_the_real_pipeline(smokes) -> None:
    code, doc, out = smokes["serve"]
    assert code == 0 and doc["verdict"] == "pass", out
    checks = _checks(doc)
    assert checks["health"] and checks["call_clean"] and checks["transcript_received"] and checks["caller_1011"]
    assert checks["latency_final_p95_ms"] is True and doc["latency_ms"]["final"]["count"] >= 1
    assert {r["name"]: r["status"] for r in doc["thresholds"]}["duplicates"] == "off"


def test_smoke_without_provider_evidence_is_invalid_with_the_reason(smokes) -> None:
    code, doc, out = smokes["unjudged"]
    assert code == 2 and doc["verdict"] == "invalid", out
    assert any(r.startswith("duplicates: not measured: no provider evidence") for r in doc["invalid_reasons"])
    assert "--provider-stats off" in out and "Traceback" not in out


def test_smoke_of_an_untagged_pipeline_cannot_pass(smokes) -> None:
    code, doc, out = smokes["untagged"]
    assert code == 2 and doc["verdict"] == "invalid", out
    assert _checks(doc)["call_clean"] is True and _checks(doc)["duplicates"] is None
    assert any("no connection tagged with this call" in r for r in doc["invalid_reasons"])


def test_smoke_says_why_a_handshake_failed_in_the_table(smokes) -> None:
    code, doc, out = smokes["http404"]
    assert code == 1 and doc["verdict"] == "fail"
    assert "call_clean" in out and "HTTP 404" in out and "at handshake" in out  # in the table, not only --json


def test_smoke_with_provider_stats_checks_duplicates_and_1011(smokes) -> None:
    code, doc, out = smokes["reference"]
    assert code == 0, out
    assert _checks(doc)["duplicates"] is True and _checks(doc)["provider_1011"] is True
    assert doc["provider"]["connections"] == 1
    suite = ET.parse(smokes["dir"] / "reference.xml").getroot().find("testsuite")
    assert {c.get("name") for c in suite.findall("testcase")} >= {"health", "transcript_received", "duplicates"}
    assert suite.get("failures") == "0"


def test_smoke_fails_on_duplicate_provider_connections(smokes) -> None:
    code, doc, out = smokes["race"]
    assert code == 1 and doc["verdict"] == "fail"
    assert _checks(doc)["duplicates"] is False and doc["duplicates"] >= 1
    assert _checks(doc)["call_clean"] is True  # the caller saw nothing wrong: only the provider side tells
    suite = ET.parse(smokes["dir"] / "race.xml").getroot().find("testsuite")
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert "duplicates" in failed


def test_smoke_unreachable_target_fails_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run([*RTAA, "smoke", "--url", "ws://127.0.0.1:9/v1/ingest", *ARGS, "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    checks = _checks(orjson.loads((tmp_path / "r.json").read_bytes()))
    assert checks["health"] is False and checks["call_clean"] is False


def test_smoke_usage_error_exit_2() -> None:
    proc = subprocess.run([*RTAA, "smoke", "--url", "http://x/y"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ws://" in proc.stderr and "Traceback" not in proc.stderr


def test_smoke_reports_an_html_error_page_as_one_line(tmp_path: Path) -> None:
    """A web server that is not the pipeline answers /health with an HTML 404 page: the table says
    "HTTP 404: ..." on one line, not the page's markup."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run([*RTAA, "smoke", "--url", f"ws://127.0.0.1:{server.server_port}/nosuch", *ARGS,
                               "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
    finally:
        server.shutdown()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    health = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("health FAIL")]
    assert health and health[0].startswith("health FAIL: HTTP 404: ") and "<" not in health[0], health
