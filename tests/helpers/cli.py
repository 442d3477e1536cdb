"""The real console script in a subprocess, and the one-line error contract of the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RTAA = str(Path(sys.executable).with_name("rtaa"))


def rtaa(*args: str, env_drop: tuple[str, ...] = (), timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    for name in ("RTAA_DEBUG", *env_drop):
        env.pop(name, None)
    return subprocess.run([RTAA, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
