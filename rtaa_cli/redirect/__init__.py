"""Point a pipeline that hardcodes Deepgram's production URL at ``rtaa fake-deepgram``, unedited.

Two self-contained shims (they run inside the *target's* process, which has no rtaa installed, so they
use only their runtime's standard library):

* ``python/sitecustomize.py`` -- on ``PYTHONPATH``; patches websockets (asyncio, sync and legacy
  clients: deepgram-sdk uses these) and aiohttp's ``ws_connect`` as each is imported;
* ``node/preload.cjs`` -- ``NODE_OPTIONS=--require <it>``; patches ``https.request`` (the ``ws`` package,
  which ``@deepgram/sdk`` uses, and any other client that upgrades over it) and the global WebSocket.

Both read ``RTAA_DEEPGRAM_URL`` (``ws://127.0.0.1:8765``) and rewrite WebSocket URLs whose host is in
``RTAA_DEEPGRAM_HOSTS`` (default ``api.deepgram.com``): scheme, host and port become the emulator's, path
and query stay. :func:`print_env` is what ``rtaa fake-deepgram --print-env`` prints.
"""
from __future__ import annotations

import shlex
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_DIR = HERE / "python"
NODE_PRELOAD = HERE / "node" / "preload.cjs"
RUNTIMES = ("python", "node")


def emulator_ws_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"ws://{host}:{port}"


def print_env(runtime: str, url: str) -> str:
    """POSIX shell lines (for ``eval "$(...)"``) that redirect a ``runtime`` process to ``url``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--print-env takes one of {', '.join(RUNTIMES)}, not {runtime!r}")
    lines = [f"export RTAA_DEEPGRAM_URL={shlex.quote(url)}"]
    if runtime == "python":
        lines.append(f'export PYTHONPATH={shlex.quote(str(PYTHON_DIR))}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    else:
        lines.append(f'export NODE_OPTIONS="--require {NODE_PRELOAD}${{NODE_OPTIONS:+ $NODE_OPTIONS}}"')
    return "\n".join(lines)
