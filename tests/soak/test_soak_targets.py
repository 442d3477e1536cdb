"""End-to-end soaks through the real CLI (``rtaa soak`` subprocesses: Locust monkey-patches the process
it runs in, so never inside pytest), against real servers on 127.0.0.1 and the real emulator.

* the real local pipeline (``rtaa serve`` + emulator, started and stopped by the soak, with Locust's
  master + 2 workers) passes;
* a correct reference ingest passes, and with a known injected provider latency (400 ms, no
  jitter) the reported percentiles match it within a few ms (the ground truth);
* each deliberately broken ingest (tests/helpers/soak.py) is caught by the threshold that
  names its failure, and by nothing else.

The soaks run concurrently (each is a few light callers) to keep the suite short.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass

import orjson
import pytest

from rtaa_cli.soak.htmlreport import external_references
from helpers.soak import Flaws, readline, readline_matching
from helpers.soak_target import RTAA, SCENARIO, SOAK_TIMEOUT_S, SUPPORT
from helpers.paths import ROOT


@dataclass
class Case:
    flaws: Flaws
    idle_timeout_s: float = 10.0
    latency: float = 150.0
    jitter: float = 100.0
    users: int = 3
    mix: str = "normal = 1"
    path: str = "/v1/ingest"
    extra_toml: str = ""
    args: tuple[str, ...] = ()  # extra `rtaa soak` options


BAD_MIX = "normal = 1\nbad_input = 2"  # bad inputs go round-robin: 6 users cover all six kinds


CASES = {
    "reference": Case(Flaws(), latency=400.0, jitter=0.0),
    "race": Case(Flaws(race=True)),
    "hold": Case(Flaws(hold=True), idle_timeout_s=1.5),
    "no_finalize": Case(Flaws(no_finalize=True)),
    "drop_frames": Case(Flaws(drop_every=8)),
    "bad_input": Case(Flaws(), users=9, mix=BAD_MIX),
    "bad_1011": Case(Flaws(bad_1011=True), users=9, mix=BAD_MIX),
    # no tag= / extra=: attributed by the callers' audio watermark (on by default) ...
    "untagged": Case(Flaws(untagged=True)),
    # ... and without it, unattributed (the detection of untagged traffic stays tested)
    "untagged_no_watermark": Case(Flaws(untagged=True), args=("--no-watermark",)),
    "leak": Case(Flaws(leak=True)),
    # a 3 s hold (no media) on a 1.5 s provider idle timeout, and a target that sends no KeepAlive
    "silent_hold": Case(Flaws(no_keepalive=True), idle_timeout_s=1.5, mix="hold = 1",
                        extra_toml='[hold]\nat = "1s"\nlength = "3s"\n'),
}
# runs that must not pass, with no threshold of CASES' kind: see the tests below
UNJUDGED = {
    "http404": Case(Flaws(), path="/nosuch"),
    "memory_unmeasured": Case(Flaws(), extra_toml="[thresholds]\nmemory_growth_mb_per_h = 20\n"),
}
# the one threshold family each broken target must breach -- and nothing else may
EXPECTED_FAILURES = {
    "reference": set(),
    "race": {"duplicates"},
    "hold": {"closes_1011_rate", "latency_final_p95_ms"},
    "no_finalize": {"delivery_rate"},
    "drop_frames": {"audio_loss"},
    "bad_input": set(),
    "bad_1011": {"bad_input_unexpected"},
    "untagged": set(),
    "untagged_no_watermark": {"unattributed_connections", "calls_unreached_rate"},
    "leak": {"provider_open_at_end"},
    "silent_hold": {"closes_1011_rate"},
}


def _wait(proc: subprocess.Popen, what: str) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=SOAK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what}: rtaa soak did not finish within {SOAK_TIMEOUT_S} s\n{err[-2000:]}")
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def soaks(tmp_path_factory) -> dict[str, dict]:
    """Run every soak of this module concurrently; returns name -> {code, doc, output, paths}."""
    tmp = tmp_path_factory.mktemp("soaks")
    results: dict[str, dict] = {}
    started = []
    servers: list[subprocess.Popen] = []

    def collect() -> None:
        for name, out, proc in started:
            code, output = _wait(proc, name)
            doc = orjson.loads(out.read_bytes()) if out.exists() else None
            results[name] = {"code": code, "doc": doc, "output": output, "dir": tmp}
    try:
        for name, case in {**CASES, **UNJUDGED}.items():
            server = subprocess.Popen([sys.executable, SUPPORT, orjson.dumps(asdict(case.flaws)).decode(),
                                       str(case.idle_timeout_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            servers.append(server)
            line = readline(server, 30.0)  # the target announces its URLs once it listens
            assert line, f"{name}: test target did not start"
            urls = orjson.loads(line)
            target, emu_http = urls["target"], urls["emulator_http"]
            toml = tmp / f"{name}.toml"
            toml.write_text(SCENARIO.format(name=name, latency=case.latency, jitter=case.jitter, users=case.users,
                                            mix=case.mix) + case.extra_toml)
            out = tmp / f"{name}.json"
            cmd = [*RTAA, "soak", str(toml), "--quiet", "--json", str(out),
                   "--target", f"ws://{target}{case.path}", "--transcripts", f"ws://{target}/v1/transcripts",
                   "--provider-stats", f"{emu_http}/stats", "--provider-control", f"{emu_http}/control/faults", *case.args]
            started.append((name, out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        # the documented cross-host commands, on one host: `--master` waits for a `--worker` process
        server = subprocess.Popen([sys.executable, SUPPORT, "{}", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        servers.append(server)
        line = readline(server, 30.0)
        assert line, "distributed: test target did not start"
        urls = orjson.loads(line)
        toml = tmp / "distributed.toml"
        toml.write_text(SCENARIO.format(name="distributed", latency=150, jitter=100, users=4, mix="normal = 1"))
        master = subprocess.Popen(
            [*RTAA, "soak", str(toml), "--quiet", "--json", str(tmp / "distributed.json"), "--master",
             "--expect-workers", "1", "--master-port", "0", "--target", f"ws://{urls['target']}/v1/ingest",
             "--transcripts", f"ws://{urls['target']}/v1/transcripts", "--provider-stats", f"{urls['emulator_http']}/stats"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(("distributed", tmp / "distributed.json", master))
        waiting = readline_matching(master, "waiting for 1 worker(s) on ", 60.0)
        assert waiting, "distributed: the master did not announce its port"
        port = waiting.rsplit(":", 1)[1].strip()
        worker = subprocess.Popen([*RTAA, "soak", "--worker", "--master-host", "127.0.0.1", "--master-port", port],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(worker)
        collect()
        # The real pipeline, started by the soak itself, runs alone once the others are done: on 2 cores,
        # ten concurrent soaks make the load generator itself the bottleneck and the run (rightly) invalid.
        # (with Locust master + 2 worker processes)
        toml = tmp / "pipeline.toml"
        # every caller behaviour at once: plain calls, TCP drop + reconnect, a second stream, bad input
        toml.write_text(SCENARIO.format(name="pipeline", latency=150, jitter=100, users=8,
                                        mix="normal = 1\ndisconnect = 1\nsecond_stream = 1\nbad_input = 1"))
        paths = {k: tmp / f"pipeline.{k}" for k in ("json", "xml", "html")}
        cmd = [*RTAA, "soak", str(toml), "--quiet", "--processes", "2", "--json", str(paths["json"]),
               "--junit", str(paths["xml"]), "--html", str(paths["html"]), "--csv", str(tmp / "pipeline")]
        started = [("pipeline", paths["json"], subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))]
        collect()
    finally:
        for _, _, proc in started:
            if proc.poll() is None:
                proc.kill()
        for server in servers:  # EOF on stdin stops a target; kill is the bounded fallback
            if server.stdin is not None:
                server.stdin.close()
            else:
                server.terminate()  # the Locust worker (its master has quit already)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return results


def _failed(doc: dict) -> set[str]:
    return {row["name"] for row in doc["thresholds"] if row["passed"] is False}


@pytest.mark.parametrize("name", list(CASES))
def test_each_target_is_caught_by_its_threshold_and_nothing_else(soaks, name) -> None:
    r = soaks[name]
    assert r["doc"] is not None, f"no JSON report; output:\n{r['output'][-3000:]}"
    doc = r["doc"]
    assert doc["verdict"] != "invalid", f"invalid run: {doc['invalid_reasons']}"
    assert doc["calls"]["finished"] >= 3 and doc["calls"]["unfinished"] == 0
    assert _failed(doc) == EXPECTED_FAILURES[name], (
        f"{name}: failing thresholds {_failed(doc)}; expected {EXPECTED_FAILURES[name]}\n"
        f"{orjson.dumps(doc['thresholds']).decode()}")
    assert r["code"] == (0 if not EXPECTED_FAILURES[name] else 1), r["output"][-2000:]
    assert doc["verdict"] == ("pass" if not EXPECTED_FAILURES[name] else "fail")


def test_a_target_that_404s_every_call_fails_early_with_the_cause(soaks) -> None:
    r = soaks["http404"]
    doc = r["doc"]
    assert r["code"] == 1 and doc["verdict"] == "fail", r["output"][-2000:]
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["completed_calls"]["status"] == "fail" and rows["failed_rate"]["value"] == 1.0
    assert "HTTP 404" in doc["run"]["stopped_early"] and doc["calls"]["handshake_failed"] == doc["calls"]["finished"]
    assert "stopped early" in r["output"] and "connect: HTTP 404" in r["output"]


def test_a_threshold_with_no_evidence_makes_the_run_invalid(soaks) -> None:
    r = soaks["memory_unmeasured"]  # a memory limit, and no --metrics to sample the target's memory from
    doc = r["doc"]
    assert r["code"] == 2 and doc["verdict"] == "invalid", r["output"][-2000:]
    assert any(line.startswith("memory_growth_mb_per_h: not measured: the target's memory was not sampled: pass "
                               "--metrics") for line in doc["invalid_reasons"])
    assert "invalid run: memory_growth_mb_per_h: not measured" in " ".join(r["output"].split())


def test_provider_evidence_of_an_untagged_pipeline(soaks) -> None:
    doc = soaks["untagged_no_watermark"]["doc"]
    prov = doc["provider"]
    assert prov["calls_reached"] == 0 and prov["unattributed_connections"] >= doc["calls"]["finished"]
    assert prov["attributed_by_watermark"] == 0 and prov["marked_connections"] == 0
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["duplicates"]["status"] == "not measured" and "unattributed connections seen" in rows["duplicates"]["reason"]
    assert not any("watermark not found" in n for n in doc["run"]["notes"])  # nothing was marked


def test_an_untagged_pipeline_is_attributed_by_the_watermark(soaks) -> None:
    """The same untagged target with the callers' watermark on: every connection is attributed to its
    call by the audio it carried, so duplicates, audio loss and calls reached are measured again."""
    doc = soaks["untagged"]["doc"]
    prov = doc["provider"]
    assert prov["unattributed_connections"] == 0 and prov["attributed_by_tag"] == 0
    assert prov["attributed_by_watermark"] == prov["connections"] >= doc["calls"]["finished"]
    assert prov["calls_reached"] == prov["calls_with_audio"] == doc["calls"]["finished"]
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["duplicates"]["value"] == 0 and rows["audio_loss"]["value"] == 0.0
    # a tagged target's connections carry the mark too, and are counted as attributed by tag
    ref = soaks["reference"]["doc"]["provider"]
    assert ref["attributed_by_watermark"] == 0 and ref["attributed_by_tag"] == ref["connections"] == ref["marked_connections"]


def test_a_leaking_target_is_caught_by_the_post_run_watch(soaks) -> None:
    doc = soaks["leak"]["doc"]
    assert doc["provider"]["open_at_end"] == doc["calls"]["finished"] and doc["run"]["watch_after_s"] == 3.0
    assert doc["delivery_rate"] == 1.0  # its finals arrived: only the provider side shows the leak


def test_reported_latency_matches_the_injected_provider_latency(soaks) -> None:
    """Ground truth: the emulator holds every result exactly 400 ms after the audio it covers
    arrived; the caller-side latency adds only loopback hops through the ingest (3-4 ms on an idle
    machine: p50 403-404 ms measured). The lower bound is exact -- no result may beat the injected
    latency; the upper bound leaves room for the scheduling delays of a loaded 2-core CI machine."""
    lat = soaks["reference"]["doc"]["latency_ms"]
    for kind in ("first_partial", "final"):
        s = lat[kind]
        assert s["count"] >= 6, lat
        assert 400 <= s["p50"] <= 450, f"{kind} p50 {s['p50']} ms for 400 ms injected"
        assert 400 <= s["p95"] <= 500, f"{kind} p95 {s['p95']} ms for 400 ms injected"


def test_the_broken_targets_show_the_seeds_symptoms(soaks) -> None:
    race, hold = soaks["race"]["doc"], soaks["hold"]["doc"]
    assert race["duplicates"] >= race["calls"]["started"]  # several extra provider sockets per call
    assert hold["closes_1011"]["provider"] >= hold["calls"]["started"]  # every call's provider timed out
    assert hold["latency_ms"]["final"]["max"] > 2000  # held audio transcribed only at the end
    # why the provider closed 1011: audio held back vs a hold with no KeepAlive (the emulator's evidence)
    assert set(hold["provider"]["closes_1011_by_cause"]) == {"starvation"}, hold["provider"]
    assert sum(hold["timeline"]["provider"]["1011"]) == hold["closes_1011"]["provider"]  # plotted over time
    silent = soaks["silent_hold"]["doc"]["provider"]
    assert set(silent["closes_1011_by_cause"]) == {"idle, no KeepAlive"} and silent["keepalives"] == 0, silent
    assert soaks["no_finalize"]["doc"]["delivery_rate"] == 0.0
    assert soaks["drop_frames"]["doc"]["audio"]["loss"] == pytest.approx(1 / 8, abs=0.03)


def test_master_and_worker_processes_aggregate_at_the_master(soaks) -> None:
    """`rtaa soak --master` + `rtaa soak --worker` (the cross-host commands, here on one host)."""
    r = soaks["distributed"]
    doc = r["doc"]
    assert doc is not None, r["output"][-3000:]
    assert r["code"] == 0 and doc["verdict"] == "pass", (doc["thresholds"], doc["invalid_reasons"])
    assert doc["calls"]["finished"] >= 4 and doc["calls"]["unfinished"] == 0  # every call reported to the master
    assert doc["latency_ms"]["final"]["count"] > 0 and doc["duplicates"] == 0


def test_bad_input_gets_the_right_close_codes_and_spares_the_other_calls(soaks) -> None:
    good, broken = soaks["bad_input"]["doc"], soaks["bad_1011"]["doc"]
    kinds = {k for k in good["calls"]["by_kind"] if k.startswith("bad:")}
    assert kinds == {f"bad:{k}" for k in ("malformed_json", "bad_base64", "oversize", "wrong_sample_rate",
                                           "media_before_start", "frames_after_stop")}
    closes = good["caller_closes"]
    assert {"1007", "1008", "1009"} <= set(closes) and "1011" not in closes
    assert good["calls"]["by_kind"]["normal"]["failed"] == 0 and good["delivery_rate"] == 1.0
    # the broken target's 1011s are blamed on it, and the well-behaved calls still pass
    assert broken["calls"]["bad_input_unexpected"] >= 3
    assert broken["calls"]["by_kind"]["normal"]["failed"] == 0 and broken["closes_1011"]["caller"] == 0


def test_local_pipeline_soak_passes_with_locust_workers_and_writes_reports(soaks) -> None:
    r = soaks["pipeline"]
    doc = r["doc"]
    assert doc is not None, r["output"][-3000:]
    assert r["code"] == 0 and doc["verdict"] == "pass", (r["output"][-3000:], doc["thresholds"], doc["invalid_reasons"])
    assert doc["run"]["processes"] == 2 and doc["run"]["description"] == "local rtaa serve + emulator"
    assert doc["calls"]["completed"] >= 8 and doc["duplicates"] == 0 and doc["delivery_rate"] == 1.0
    assert doc["audio"]["loss"] == 0.0 and doc["latency_ms"]["final"]["count"] > 0
    kinds = doc["calls"]["by_kind"]
    assert {"normal", "disconnect", "second_stream"} <= set(kinds) and any(k.startswith("bad:") for k in kinds)
    assert doc["calls"]["bad_input_unexpected"] == 0
    suite = ET.parse(r["dir"] / "pipeline.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and len(suite.findall("testcase")) == len(doc["thresholds"]) + 1
    # --csv: one row per finished call (as it finished), one per timeline bucket
    with open(r["dir"] / "pipeline_calls.csv", newline="") as f:
        calls_csv = list(csv.DictReader(f))
    assert len(calls_csv) == doc["calls"]["finished"] == len({c["call_sid"] for c in calls_csv})
    assert sum(c["completed"] == "True" for c in calls_csv) == doc["calls"]["completed"]
    assert all(c["call_sid"].startswith(doc["run"]["call_prefix"]) for c in calls_csv)
    with open(r["dir"] / "pipeline_timeline.csv", newline="") as f:
        timeline = list(csv.DictReader(f))
    assert [float(row["t_s"]) for row in timeline] == doc["timeline"]["t"]
    assert sum(int(row["started"]) for row in timeline) == doc["calls"]["finished"]
    page = (r["dir"] / "pipeline.html").read_text()
    assert "PASS" in page and 'id="chart-latency"' in page and external_references(page) == []
    # the drill-down's calls carry the emulator's own records of their provider connections
    kept = doc["call_samples"]
    assert kept["failed_kept"] == 0 and kept["completed_seen"] == doc["calls"]["completed"]
    assert 5 <= len(kept["calls"]) <= 6 and page.count("<option value=") == len(kept["calls"])
    for call in kept["calls"]:
        if call["frames_sent"] and not call["kind"].startswith("bad:"):
            conns = call["provider_connections"]
            assert conns and all(call["started_s"] - 0.5 <= c["opened_s"] <= call["ended_s"] for c in conns), call
            assert all(c["closed_s"] is not None and c["audio_bytes"] > 0 for c in conns), call
            assert call["final"] and all(call["started_s"] <= t <= call["ended_s"] + 5 for t, _ in call["final"])
    # The target's RSS was sampled from its /metrics during the run and plotted (the growth slope needs
    # >= 60 s of steady running, so this short run reports none rather than a meaningless number).
    mem = doc["target_memory"]
    assert mem["samples"] >= 3 and 10 < mem["rss_mb"]["first"] <= mem["rss_mb"]["max"] < 2000
    assert mem["growth_mb_per_h"] is None
    assert "Target resident memory" in page


USAGE_ERRORS = [
    (["soak", "/nonexistent/x.toml"], "scenario file not found"),
    (["soak", "steady", "--threshold", "bogus=1"], "bad threshold"),
    (["soak", "steady", "--duration", "soon"], "--duration"),
    (["soak", "steady", "--target", "ws://127.0.0.1:9/v1/ingest", "--quiet"], "unreachable"),
    (["soak", "steady", "--transcripts", "ws://x/v1/transcripts"], "need --target"),
]


def test_usage_errors_exit_2_with_one_line() -> None:
    root = ROOT
    procs = [(args, message, subprocess.Popen([*RTAA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, cwd=root)) for args, message in USAGE_ERRORS]
    for args, message, proc in procs:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{args}: no answer within 60 s")
        assert proc.returncode == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
