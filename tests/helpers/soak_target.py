"""Soaks through the real CLI against the ingests of helpers/soak.py: the command, scenario and bound."""
from __future__ import annotations

import sys

from helpers.paths import HELPERS

SUPPORT = str(HELPERS / "soak.py")  # run as a script: the deliberately broken ingests

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
SOAK_TIMEOUT_S = 150  # safety net only: each soak is ~15 s

SCENARIO = """
name = "{name}"
[load]
users = {users}
spawn_rate = {users}
duration = "4s"
[mix]
{mix}
[call]
audio = "synthetic"
length = "5s"
pause = "0.3s"
wait_final = "4s"
[faults]
handshake_delay_ms = [150, 300]
result_latency_ms = {latency}
result_jitter_ms = {jitter}
# The generator shares two busy CI cores with the rest of the suite: these tests are about what the
# soak detects in the target, so only a grossly late generator may invalidate them (the invalid
# rule itself is unit-tested).
[pacing]
max_lateness_p99_ms = 150
"""
