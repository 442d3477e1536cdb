"""`--loop auto|uvloop|asyncio` (rtaa_cli/eventloop.py): serve and fake-deepgram run on the loop asked for,
say which in their start line and /health, carry a whole call on either loop, and a missing uvloop is a
one-line usage error for `--loop uvloop` but a fallback for `auto`. Real processes on 127.0.0.1."""
from __future__ import annotations

import subprocess
import sys
import types
import urllib.request

import orjson
import pytest

from helpers.cli import assert_one_line_error
from helpers.emulator import call_audio, finals, sdk_stream
from helpers.paths import CALL_WAV
from helpers.soak import readline
from rtaa_cli import eventloop

BOUND_S = 30.0  # safety net for a child that never announces itself
NO_UVLOOP = "import sys; sys.modules['uvloop'] = None; "  # this process cannot import uvloop


def cli(*args: str, prelude: str = "") -> list[str]:
    return [sys.executable, "-c", prelude + "from rtaa_cli.cli import main; main()", *args]


def started(cmd: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = readline(proc, BOUND_S)
    if not line:
        proc.kill()
        pytest.fail(f"{cmd[3:]} did not start")
    return proc, orjson.loads(line)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    assert proc.wait(BOUND_S) == 0


@pytest.mark.parametrize("loop, prelude, expected", [
    ("uvloop", "", "uvloop"),
    ("asyncio", "", "asyncio"),
    ("auto", "", "uvloop"),             # installed here (a dependency on this platform)
    ("auto", NO_UVLOOP, "asyncio"),     # where it is not, auto falls back
])
def test_serve_runs_a_whole_call_on_the_loop_it_was_asked_for(tmp_path, loop, prelude, expected) -> None:
    proc, info = started(cli("serve", "--port", "0", "--json", "--loop", loop, prelude=prelude))
    try:
        assert info["loop"] == expected
        with urllib.request.urlopen(info["health"], timeout=BOUND_S) as resp:  # noqa: S310 - loopback
            assert orjson.loads(resp.read())["loop"] == expected
        out = tmp_path / "call.json"
        replay = subprocess.run(cli("replay", str(CALL_WAV), "--url", info["ingest"], "--transcripts",
                                    info["transcripts"], "--speed", "4", "--json", str(out), "--quiet"),
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        report = orjson.loads(out.read_bytes())
        assert report["frames_sent"] == report["frames_total"] == 765
        assert report["finals"] and report["gaps"] == 0 and report["repeated_finals"] == 0
    finally:
        stop(proc)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_fake_deepgram_streams_to_the_sdk_on_either_loop(loop) -> None:
    proc, info = started(cli("fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live", "--loop", loop))
    try:
        assert info["loop"] == loop
        emu = types.SimpleNamespace(url=info["url"], http_url=info["http"])
        messages = sdk_stream(emu, call_audio(12.0))
        assert len(finals(messages)) >= 2
    finally:
        stop(proc)


@pytest.mark.parametrize("command", ["serve", "fake-deepgram"])
def test_loop_uvloop_where_it_is_not_installed_is_one_line_and_exit_2(command) -> None:
    proc = subprocess.run(cli(command, "--port", "0", "--loop", "uvloop", prelude=NO_UVLOOP),
                          capture_output=True, text=True, timeout=BOUND_S)
    assert_one_line_error(proc, 2, "--loop uvloop", "not installed")


def test_a_bad_loop_name_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(cli("serve", "--port", "0", "--loop", "trio"), capture_output=True, text=True,
                          timeout=BOUND_S)
    assert_one_line_error(proc, 2, "--loop must be auto, uvloop or asyncio", "'trio'")


def test_the_defaults_are_asyncio_for_serve_and_uvloop_for_the_emulator() -> None:
    """As measured (BENCHMARKS.md "Event loop"): uvloop makes the emulator cheaper, the pipeline not."""
    for cmd, expected in ((cli("serve", "--port", "0", "--json"), "asyncio"),
                          (cli("fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live"), "uvloop")):
        proc, info = started(cmd)
        try:
            assert info["loop"] == expected, cmd
        finally:
            stop(proc)


def test_run_returns_the_result_and_the_loop_name_is_the_running_loops() -> None:
    async def which() -> str:
        return eventloop.running_loop_name()

    assert eventloop.run(which(), "uvloop") == "uvloop"
    assert eventloop.run(which(), "asyncio") == "asyncio"
