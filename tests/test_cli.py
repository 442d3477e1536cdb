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
