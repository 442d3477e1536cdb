"""The seam between ``rtaa replay`` (no ``--url``) and the local pipeline (``rtaa serve``).

``embedded_pipeline(provider, sample_rate)`` starts the pipeline on a loopback ephemeral port and yields
where to send the call and where to read its transcripts; leaving the context stops it.

The pipeline runs in a **child process** (``python -m rtaa_cli.embedded PROVIDER RATE``), not in the
caller's: pocketsphinx decodes hold the GIL for hundreds of milliseconds, and in-process they made the
virtual caller's own frames late (p99 0.5-1.7 s), which a replay tool cannot afford. In a child the
caller's pacing is its own again.

Child protocol: once listening it prints one JSON line on stdout (``{"ingest": ws-url, "transcripts":
ws-url, "pid": n}``); its logs (JSON lines, warning and up) and anything else go to stderr, which the parent
keeps (last ``LOG_LINES`` lines, for failure reports) and never shows while the progress bar runs. The
child stops gracefully (callers closed 1001, in-flight finals flushed, like ``rtaa serve``) on SIGTERM or
SIGINT, or when its stdin reaches EOF: the parent never writes to it, so EOF means the parent is gone,
even after a SIGKILL. The parent stops it with SIGTERM, waits at most ``STOP_TIMEOUT_S``, then kills it.
The child runs in its own session, so a Ctrl-C at the terminal reaches only the parent, which then
stops the child itself.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import orjson

from rtaa_cli import eventloop
from rtaa_cli.errors import RtaaError

if TYPE_CHECKING:
    from rtaa_cli.pipeline.config import PipelineConfig

PROVIDERS = ("fake", "sphinx", "deepgram")
START_TIMEOUT_S = 60.0  # imports + model load; ~2 s on an idle machine
STOP_TIMEOUT_S = 20.0  # the pipeline's own shutdown is bounded by ~15 s (bus drain + close)
LOG_LINES = 200  # child stderr lines kept (each cut to LINE_CHARS)
LINE_CHARS = 2000
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass
class EmbeddedTarget:
    url: str  # Exotel ingest WebSocket URL
    transcripts_url: str | None  # transcript feed base (docs/transcript-feed.md), or None
    provider: str = "fake"
    pid: int | None = None  # the child process
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))  # the child's stderr, last lines
    exit_code: int | None = None  # the child's, once the context has exited (0: clean stop)


def pipeline_config(provider: str, sample_rate: int) -> PipelineConfig:
    """The embedded pipeline's configuration (one place; the child builds it from these two values)."""
    from rtaa_cli.pipeline.config import IngestConfig, PipelineConfig, ProviderConfig, WorkerConfig

    if provider not in PROVIDERS:
        raise RtaaError(f"unknown provider {provider!r} (choose one of: {', '.join(PROVIDERS)})")
    return PipelineConfig(
        host="127.0.0.1", port=0,
        # fake = the emulator with pocketsphinx, so a newcomer sees the call's real words (docs/architecture.md).
        provider=ProviderConfig(name=provider, fake_engine="sphinx", api_key=os.environ.get("DEEPGRAM_API_KEY")),
        # pocketsphinx finals can trail real time by a few seconds on a busy machine.
        worker=WorkerConfig(finalize_timeout_s=20.0 if provider != "deepgram" else 10.0),
        # One local caller, possibly replaying faster than real time: no per-connection rate limits.
        ingest=IngestConfig(max_messages_per_s=1e9, rate_burst=1e9, max_audio_speed=0.0, sample_rates=(sample_rate,)),
    )


# ------------------------------------------------------------------------------------------------ parent

@asynccontextmanager
async def embedded_pipeline(provider: str, sample_rate: int) -> AsyncIterator[EmbeddedTarget]:
    pipeline_config(provider, sample_rate)  # bad arguments fail here, before a process is started
    env = dict(os.environ)
    # The child imports the same rtaa_cli as this process (-P: not one that happens to sit in the cwd).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "rtaa_cli.embedded", provider, str(sample_rate),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, env=env)
    log: deque[str] = deque(maxlen=LOG_LINES)
    stderr_task = asyncio.ensure_future(_keep_lines(proc.stderr, log))
    try:
        target = await _wait_listening(proc, provider, log, stderr_task)
        stdout_task = asyncio.ensure_future(_keep_lines(proc.stdout, log))  # nothing expected; never block it
        try:
            yield target
        finally:
            target.exit_code = await _stop(proc)
            await _settle(stdout_task)
    finally:
        if proc.returncode is None:  # failed before listening (or cancelled): no graceful stop needed
            await _stop(proc)
        await _settle(stderr_task)


async def _wait_listening(proc: asyncio.subprocess.Process, provider: str, log: deque[str],
                          stderr_task: asyncio.Future) -> EmbeddedTarget:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
    except TimeoutError:
        await _stop(proc)
        await _settle(stderr_task)
        raise RtaaError(f"the embedded pipeline did not start within {START_TIMEOUT_S:.0f} s"
                        + _tail_hint(log)) from None
    try:
        info = orjson.loads(line)
        return EmbeddedTarget(url=info["ingest"], transcripts_url=info["transcripts"], provider=provider,
                              pid=proc.pid, log=log)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    code = await _stop(proc)
    await _settle(stderr_task)
    errors = [entry[len("error:"):].strip() for entry in log if entry.startswith("error:")]
    if errors:  # the child's own one-line user error (e.g. provider deepgram without DEEPGRAM_API_KEY)
        raise RtaaError(errors[-1], exit_code=2)
    raise RtaaError(f"the embedded pipeline exited before listening (exit code {code})" + _tail_hint(log))


def _tail_hint(log: deque[str], lines: int = 5) -> str:
    tail = [entry for entry in list(log)[-lines:] if entry.strip()]
    return (": " + " | ".join(tail)) if tail else ""


async def _keep_lines(stream: asyncio.StreamReader | None, sink: deque[str]) -> None:
    """Read ``stream`` to EOF, keeping its last lines in ``sink`` (bounded: long lines are cut)."""
    if stream is None:
        return
    partial = b""
    while chunk := await stream.read(65536):
        *lines, partial = (partial + chunk).split(b"\n")
        sink.extend(line[:LINE_CHARS].decode(errors="replace").rstrip() for line in lines)
        partial = partial[:LINE_CHARS]
    if partial:
        sink.append(partial.decode(errors="replace").rstrip())


async def _stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (and stdin EOF), wait at most STOP_TIMEOUT_S, then SIGKILL. Returns the exit code."""
    _signal(proc, signal.SIGTERM)
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        _signal(proc, signal.SIGKILL)
        await proc.wait()
    except BaseException:  # cancelled again (a second Ctrl-C): do not leave the child behind
        _signal(proc, signal.SIGKILL)
        raise
    assert proc.returncode is not None
    return proc.returncode


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    """os.kill, not proc.send_signal: Popen.send_signal polls first, which reaps a child that has just exited
    behind asyncio's child watcher (it then logs "Unknown child process pid ..." and reports 255). Only
    the watcher reaps our child, and it sets returncode when it does, so the pid cannot have been reused."""
    if proc.returncode is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


async def _settle(task: asyncio.Future, timeout_s: float = 5.0) -> None:
    """Let a pipe reader reach EOF (the child has exited); cancel it if that takes longer than ``timeout_s``."""
    try:
        await asyncio.wait_for(task, timeout_s)
    except TimeoutError:
        pass


# ------------------------------------------------------------------------------------------------- child

async def _serve(provider: str, sample_rate: int) -> int:
    from rtaa_cli.pipeline.providers import make_provider
    from rtaa_cli.pipeline.server import PipelineServer

    cfg = pipeline_config(provider, sample_rate)
    server = PipelineServer(cfg, make_provider(cfg.provider))  # deepgram without a key -> RtaaError here
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def parent_gone() -> None:  # blocks until the parent closes our stdin or dies
        # os.read, not sys.stdin: a daemon thread parked in a buffered read aborts interpreter shutdown.
        fd = sys.stdin.fileno()
        while os.read(fd, 4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=parent_gone, name="rtaa-embedded-stdin", daemon=True).start()
    await server.start()
    try:
        info = {"ingest": server.ingest_url, "transcripts": server.base_url, "pid": os.getpid()}
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.stop()
    return 0


def _child_main(argv: list[str]) -> int:
    import warnings

    from rtaa_cli import logs

    # deepgram-sdk's DeprecationWarnings are not the user's business; real failures still reach stderr.
    warnings.simplefilter("ignore", DeprecationWarning)
    logs.setup(sys.stderr, "warning")
    if len(argv) != 2 or not argv[1].isdigit():
        print("error: usage: python -m rtaa_cli.embedded PROVIDER SAMPLE_RATE", file=sys.stderr, flush=True)
        return 2
    try:
        return eventloop.run(_serve(argv[0], int(argv[1])), "asyncio")  # as rtaa serve's default
    except RtaaError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
