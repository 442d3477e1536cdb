"""The system a soak calls: its URLs (:class:`Target`), the small HTTP client the run talks to them with,
and the default local target (``rtaa serve`` + ``rtaa fake-deepgram`` as subprocesses) with its lifecycle.

The process waits use gevent (a soak runs under Locust's patching); the HTTP helpers are plain urllib,
which that patching makes cooperative.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Iterator, Sequence
from urllib.parse import urlencode, urlsplit

import gevent
import orjson

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.scenario import Faults, Scenario

READY_TIMEOUT_S = 30.0


@dataclass
class Target:
    url: str  # ingest WebSocket
    transcripts_url: str | None = None  # feed base: <...>/v1/transcripts
    health_url: str | None = None
    metrics_url: str | None = None
    provider_stats_url: str | None = None  # emulator GET /stats
    provider_control_url: str | None = None  # emulator POST /control/faults
    exclusive_provider: bool = False  # the emulator serves only this run (local target)
    description: str = ""


# ------------------------------------------------------------------------------- HTTP helpers

def http_get_json(url: str, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with _no_proxy().open(req, timeout=timeout) as resp:
        return orjson.loads(resp.read())


def scrape(url: str | None) -> str | None:
    """A Prometheus text page (the target's /metrics); None when there is none or it does not answer."""
    if not url:
        return None
    try:
        with _no_proxy().open(url, timeout=5.0) as resp:
            return resp.read().decode("utf-8", "replace")
    except OSError:
        return None


def post_faults(url: str, faults: dict[str, Any], timeout: float = 5.0) -> Any:
    """POST the emulator's ``/control/faults`` (changes travel as query parameters: its HTTP parser
    takes no request body)."""
    params = {}
    for name, value in faults.items():
        if value is None:
            params[name] = "none"
        elif isinstance(value, (tuple, list)):
            params[name] = ",".join(f"{v:g}" for v in value)
        else:
            params[name] = f"{value:g}"
    req = urllib.request.Request(url + "?" + urlencode(params), data=b"", method="POST")
    with _no_proxy().open(req, timeout=timeout) as resp:
        data = resp.read()
        return orjson.loads(data) if data else None


def apply_faults(target: Target, faults: Faults) -> list[str]:
    """Put the scenario's provider timing and faults on the target's emulator when this run owns it;
    returns the report's notes (why they were not applied)."""
    if not (target.provider_control_url and target.exclusive_provider):
        return ["provider faults/timing not applied: no emulator control endpoint owned by this run"]
    try:
        post_faults(target.provider_control_url, faults.emulator_faults())
    except (OSError, ValueError) as exc:
        raise RtaaError(f"cannot apply faults at {target.provider_control_url}: {exc}") from None
    return []


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_http(url: str, proc: subprocess.Popen | None, what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RtaaError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with _no_proxy().open(url, timeout=2.0) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        gevent.sleep(0.1)  # polling a starting subprocess: there is no event to wait on
    raise RtaaError(f"{what} not ready at {url} after {timeout:g} s ({last})")


def check_reachable(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RtaaError(f"--target must be a ws:// or wss:// URL, got {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5.0).close()
    except OSError as exc:
        raise RtaaError(f"target {url} is unreachable: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------ local target

def _rtaa_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rtaa_cli.cli import main; main()", *args]


def _start_json(cmd: list[str], env: dict[str, str], what: str,
                log: IO[bytes] | None = None) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start ``cmd`` (bound to port 0) and read the JSON line in which it announces its URLs: no
    port is guessed, so nothing can race for it. Its stdout is drained afterwards (a full pipe
    would block it)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL)
    line = b""
    with gevent.Timeout(READY_TIMEOUT_S, False):
        line = proc.stdout.readline()
    if not line:
        proc.kill()
        code = proc.wait(timeout=5)
        raise RtaaError(f"{what} did not start (exit code {code}); run it alone to see why")
    gevent.spawn(_drain, proc.stdout)
    try:
        return proc, orjson.loads(line)
    except orjson.JSONDecodeError:
        proc.kill()
        raise RtaaError(f"{what} printed an unexpected first line: {line[:200]!r}") from None


def _drain(stream: IO[bytes]) -> None:
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass


@contextmanager
def local_target(scenario: Scenario, serve_args: list[str] | None = None,
                 log: IO[bytes] | None = None) -> Iterator[Target]:
    """The default target: a Deepgram emulator (``rtaa fake-deepgram``, Deepgram-like timing and the
    scenario's faults) and ``rtaa serve --provider deepgram`` pointed at it, as subprocesses that
    this context stops (SIGTERM, bounded wait, then kill). Separate processes keep asyncio out of
    the gevent-patched load generator and the generator's CPU out of the pipeline's."""
    env = dict(os.environ, DEEPGRAM_API_KEY=os.environ.get("DEEPGRAM_API_KEY", "soak-local-key"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    procs: list[subprocess.Popen] = []
    prefix = bus_url = ""
    try:
        emu, emu_info = _start_json(
            _rtaa_cmd("fake-deepgram", "--host", "127.0.0.1", "--port", "0", "--json", "--quiet", "--no-live",
                      "--idle-timeout", f"{scenario.faults.idle_timeout_s:g}"),
            env, "the emulator (rtaa fake-deepgram)", log)
        procs.append(emu)
        provider = ("--provider", "deepgram", "--deepgram-url", emu_info["url"])
        description = "local rtaa serve + emulator"
        if scenario.scale_workers:
            # Scale-out (docs/scale-out.md): 1 ingest + N workers as separate processes on one Redis, under a
            # key prefix of this run's own (deleted at the end).
            bus_url = scenario.scale_redis or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
            prefix = f"rtaa-soak-{os.urandom(4).hex()}"
            bus = ("--bus", bus_url, "--bus-prefix", prefix, "--lease-ms", str(scenario.scale_lease_ms))
            serve, info = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--port", "0", "--json", *bus,
                                                "--role", "ingest", *(serve_args or [])),
                                      env, "the local ingest (rtaa serve --role ingest)", log)
            procs.append(serve)
            for i in range(scenario.scale_workers):
                wrk, _ = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--json", *bus, "--role", "worker",
                                               *provider, *(serve_args or [])),
                                     env, f"local worker {i + 1} (rtaa serve --role worker)", log)
                procs.append(wrk)
            description = (f"local 1 ingest + {scenario.scale_workers} workers on Redis {bus_url} (prefix {prefix})"
                           " + emulator")
        else:
            serve, info = _start_json(_rtaa_cmd("serve", "--host", "127.0.0.1", "--port", "0", "--json", *provider,
                                                *(serve_args or [])),
                                      env, "the local pipeline (rtaa serve)", log)
            procs.append(serve)
        _wait_http(info["health"], serve, "the local pipeline (rtaa serve)")
        yield Target(url=info["ingest"], transcripts_url=info["transcripts"], health_url=info["health"],
                     metrics_url=info["metrics"], provider_stats_url=emu_info["stats"],
                     provider_control_url=emu_info["control"], exclusive_provider=True,
                     description=description)
    finally:
        stop_processes(procs[::-1], timeout=15)
        if prefix:
            _delete_keys(bus_url, prefix)


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float) -> None:
    """SIGTERM every one still running, then wait for each up to ``timeout``; kill what is left."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _delete_keys(url: str, prefix: str) -> None:
    """What a scale run leaves in Redis once its processes stopped (the feed, announcements; calls clean up
    after themselves): a soak must not leave its keys behind."""
    import redis

    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        for key in r.scan_iter(match=prefix + ":*", count=1000):
            r.delete(key)
        r.close()
    except (redis.RedisError, OSError):
        pass  # Redis is gone: nothing of the run can be left in it either
