"""The CLI shell: --version, -h on every command, and the exit code of an internal error."""
from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from rtaa_cli import __version__, cli


def _rtaa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rtaa_cli", *args], capture_output=True, text=True, timeout=60)


def test_version_flag_prints_the_package_version() -> None:
    proc = _rtaa("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"rtaa {__version__}"


@pytest.mark.parametrize("args", [("-h",), ("replay", "-h"), ("soak", "-h"), ("serve", "-h")])
def test_short_help_works_everywhere(args: tuple[str, ...]) -> None:
    proc = _rtaa(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_internal_error_exits_3_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = typer.Typer()

    @broken.command()
    def boom() -> None:
        raise RuntimeError("kaput")

    @broken.command()
    def other() -> None:  # two commands, so typer keeps the sub-command name
        pass

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setattr(cli, "_register_commands", lambda: None)
    monkeypatch.setattr(sys, "argv", ["rtaa", "boom"])
    monkeypatch.delenv("RTAA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err


# Every option from the environment (RTAA_<COMMAND>_<OPTION>) and from a TOML config file. A bad sample
# rate is refused before anything starts, so the error line shows which source the value came from.
def _run_in(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("RTAA_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rtaa_cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=full)


def test_every_option_reads_its_environment_variable(tmp_path) -> None:
    proc = _run_in(tmp_path, "replay", "x.wav", env={"RTAA_REPLAY_SAMPLE_RATE": "11025"})
    assert proc.returncode == 2 and "--sample-rate 11025" in proc.stderr, proc.stderr
    assert "RTAA_SOAK_USERS" in _run_in(tmp_path, "soak", "--help").stdout


def test_config_file_precedence_cli_over_env_over_file(tmp_path) -> None:
    (tmp_path / "rtaa.toml").write_text("[replay]\nsample-rate = 22050\n")
    assert "--sample-rate 22050" in _run_in(tmp_path, "replay", "x.wav").stderr
    assert "--sample-rate 11025" in _run_in(tmp_path, "replay", "x.wav", env={"RTAA_REPLAY_SAMPLE_RATE": "11025"}).stderr
    assert "--sample-rate 12345" in _run_in(tmp_path, "replay", "x.wav", "--sample-rate", "12345",
                                            env={"RTAA_REPLAY_SAMPLE_RATE": "11025"}).stderr
    other = tmp_path / "other.toml"
    other.write_text("[replay]\nsample_rate = 44100\n")
    assert "--sample-rate 44100" in _run_in(tmp_path, "--config", str(other), "replay", "x.wav").stderr


@pytest.mark.parametrize("text,message", [
    ("[replay]\nframe_mss = 1\n", "[replay] frame_mss: no such option of `rtaa replay`"),
    ("[nope]\n", "[nope]: no such command"),
    ("[replay\n", "rtaa.toml"),
])
def test_config_file_errors_name_the_bad_key(tmp_path, text: str, message: str) -> None:
    (tmp_path / "rtaa.toml").write_text(text)
    proc = _run_in(tmp_path, "replay", "x.wav")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_missing_explicit_config_is_an_error(tmp_path) -> None:
    proc = _run_in(tmp_path, "--config", "absent.toml", "replay", "x.wav")
    assert proc.returncode == 2 and "absent.toml: no such file" in proc.stderr
