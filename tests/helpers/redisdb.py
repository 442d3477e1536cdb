"""Real Redis for the bus tests: REDIS_URL if set, else 127.0.0.1:6379, else a ``redis-server`` started here
(on a free loopback port, stopped at exit). Every test uses its own key prefix and deletes its keys."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
import uuid

import redis

_started: list[subprocess.Popen] = []
_url: str | None = None


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_url() -> str:
    global _url
    if _url is not None:
        return _url
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not _reachable(url):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(f"no Redis at {url} and no redis-server to start (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _started.append(proc)
        atexit.register(proc.kill)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _reachable(url):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    _url = url
    return url


def new_prefix() -> str:
    return "rtaa-test-" + uuid.uuid4().hex[:10]


def keys(prefix: str) -> list[str]:
    r = redis.Redis.from_url(redis_url())
    return sorted(k.decode() for k in r.scan_iter(match=prefix + ":*", count=1000))


def call_keys(prefix: str) -> list[str]:
    """What a call leaves behind (nothing, once it ended): its stream, lease, fence, checkpoint, registry entry."""
    left = [k for k in keys(prefix) if k.startswith(prefix + ":c:")]
    r = redis.Redis.from_url(redis_url())
    return left + [f"{prefix}:calls={m.decode()}" for m in r.zrange(prefix + ":calls", 0, -1)]


def delete(prefix: str) -> None:
    r = redis.Redis.from_url(redis_url())
    for k in r.scan_iter(match=prefix + ":*", count=1000):
        r.delete(k)
