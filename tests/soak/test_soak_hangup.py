"""A bot that hangs up (closes 1000 before the caller's ``stop``) is a scenario choice: ``[call]
server_hangup = "fail"`` (the default: the call failed) or ``"ok"`` (the call completed, counted as a
server hang-up). Two real soaks against the test target of tests/helpers/soak.py."""
from __future__ import annotations

import subprocess
import sys

import orjson

from helpers.soak import readline
from helpers.soak_target import RTAA, SCENARIO, SOAK_TIMEOUT_S, SUPPORT


def test_a_server_hangup_fails_the_call_unless_the_scenario_allows_it(tmp_path) -> None:
    server = subprocess.Popen([sys.executable, SUPPORT, '{"hangup_after": 40}', "10"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = readline(server, 30.0)
        assert line, "test target did not start"
        urls = orjson.loads(line)
        runs = {}
        for name, extra in (("default", ""), ("ok", '\nserver_hangup = "ok"')):
            toml = tmp_path / f"{name}.toml"
            toml.write_text(SCENARIO.format(name=name, latency=150, jitter=0, users=2, mix="normal = 1")
                            .replace('wait_final = "4s"', 'wait_final = "4s"' + extra))
            out = tmp_path / f"{name}.json"
            runs[name] = (out, subprocess.Popen(
                [*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--target", f"ws://{urls['target']}/v1/ingest",
                 "--transcripts", f"ws://{urls['target']}/v1/transcripts", "--provider-stats", f"{urls['emulator_http']}/stats"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        docs = {}
        for name, (out, proc) in runs.items():
            _o, err = proc.communicate(timeout=SOAK_TIMEOUT_S)
            assert out.exists(), err[-2000:]
            docs[name] = orjson.loads(out.read_bytes())
    finally:
        server.stdin.close()
        server.wait(20)
    default, ok = docs["default"]["calls"], docs["ok"]["calls"]
    assert default["failed"] == default["finished"] >= 2 and default["server_hangups"] == 0, default
    assert any("closed by server mid-call: 1000 bot hung up" in reason
               for reason in docs["default"]["failures"]["by_reason"]), docs["default"]["failures"]
    assert ok["failed"] == 0 and ok["completed"] == ok["server_hangups"] == ok["finished"] >= 2, ok
