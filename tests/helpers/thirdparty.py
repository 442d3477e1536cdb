"""The third-party pipeline of tests/thirdparty/target.py (SSE mode) on its own emulator, its ground
truth, and a soak against it: shared by the feed and black-box audio tests."""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from helpers.paths import CALL_WAV, THIRDPARTY
from helpers.soak import readline

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
SCENARIO_TEMPLATE = """
name = "thirdparty"
[load]
users = 2
spawn_rate = 2
duration = "3s"
[call]
audio = "synthetic"
length = "4s"
pause = "0.2s"
wait_final = "2s"
{feed}
[pacing]
max_lateness_p99_ms = 150
"""
SCENARIO = SCENARIO_TEMPLATE.format(feed="")  # the mapping comes from --feed-map
SSE_FEED_MAP = "text=text,is_final=event==final,seq=seq"  # the target's SSE events in rtaa's terms


def start(procs: list[subprocess.Popen], *variant: str, text_mark: bool = True) -> dict[str, str]:
    """An emulator and the target (``variant``: its flags); both go into ``procs`` for :func:`stop`."""
    emu = subprocess.Popen([*RTAA, "fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live",
                            "--text-mark" if text_mark else "--no-text-mark"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.append(emu)
    line = readline(emu, 30.0)
    assert line, "emulator did not start"
    info = orjson.loads(line)
    proc = subprocess.Popen([sys.executable, str(THIRDPARTY / "target.py"), "--deepgram", info["url"],
                             "--sse", "--rechunk-ms", "72", *variant], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(proc)
    line = readline(proc, 30.0)
    assert line, "third-party target did not start"
    urls = orjson.loads(line)
    return {**urls, "stats": info["stats"], "published": urls["sse"].split("/events/")[0] + "/published"}


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.stdin is not None:
            p.stdin.close()  # the target runs until its stdin closes
        else:
            p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def published(target: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The target's ground truth: per call, events / finals / foreign published (and audio)."""
    with urllib.request.urlopen(target["published"], timeout=10) as r:
        return orjson.loads(r.read())


def soak(target: dict[str, str], feed: str, feed_map: str, tmp_path: Path,
         *extra: str) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """`rtaa soak` (the small SCENARIO) against the target reading ``feed``; (process, report, this run's
    calls in the target's ground truth)."""
    toml = tmp_path / "thirdparty.toml"
    toml.write_text(SCENARIO)
    out = tmp_path / "thirdparty.json"
    r = subprocess.run([*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--target", target["target"],
                        "--transcripts", feed, "--feed-map", feed_map, "--provider-stats", target["stats"], *extra],
                       capture_output=True, text=True, timeout=180)
    assert out.exists(), r.stdout + r.stderr
    doc = orjson.loads(out.read_bytes())
    mine = {sid: c for sid, c in published(target).items() if sid.startswith(doc["run"]["call_prefix"])}
    assert len(mine) == doc["calls"]["started"] >= 2, (doc["calls"], r.stderr[-2000:])
    return r, doc, mine


CALL = CALL_WAV


def replay_counted(target: dict[str, str], feed: str, feed_map: str, call_sid: str, tmp_path: Path) -> tuple[dict, list]:
    """`rtaa replay` of the fixture through the target reading ``feed``: it must count exactly the
    events the target published for the call, and as many finals, each timed. (report, finals)"""
    out = tmp_path / f"{call_sid}.json"
    r = subprocess.run([*RTAA, "replay", str(CALL), "--url", target["target"], "--transcripts", feed,
                        "--feed-map", feed_map, "--speed", "3", "--wait-final", "3", "--call-sid", call_sid,
                        "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=180)
    assert out.exists(), r.stdout + r.stderr
    doc = orjson.loads(out.read_bytes())
    truth = published(target)[call_sid]
    assert truth["finals"] >= 3, truth
    assert doc["feed_messages"] == truth["events"] and doc["feed_unrecognised"] == 0, (doc["feed_messages"], truth)
    finals = [t for t in doc["transcripts"] if t["is_final"]]
    assert len(finals) == truth["finals"] and all(t["latency_ms"] is not None for t in finals), (len(finals), truth)
    return doc, finals
