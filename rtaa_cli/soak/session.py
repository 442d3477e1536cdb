"""The Locust side of a soak: Locust as a library (``Environment`` + ``LocalRunner``, or a ``MasterRunner``
with ``--processes N`` local worker processes or workers on other hosts), the messages by which the
callers' records reach :class:`SoakStats`, and the worker process (``python -m rtaa_cli.soak.session
worker HOST PORT``).

Importing this module imports Locust (gevent monkey-patching): ``rtaa soak`` imports it lazily.
"""
from __future__ import annotations

from rtaa_cli.soak import patched  # noqa: F401  (first: Locust's gevent monkey-patching)

import gc
import signal
import subprocess
import sys
import time
from typing import Any

import gevent
import gevent.event
import locust.runners
from locust.env import Environment
from rich.console import Console

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak import locustfile
from rtaa_cli.soak.csvexport import CallCsv
from rtaa_cli.soak.scenario import Scenario
from rtaa_cli.soak.shape import StagesShape
from rtaa_cli.soak.stats import CallRecord, SoakStats
from rtaa_cli.soak.target import stop_processes

WORKER_HEARTBEAT_LIVENESS_S = 10  # missed 1 s heartbeats before Locust counts a worker lost (its default: 3)
WORKERS_JOIN_TIMEOUT_S = 60.0


def tune_gc() -> None:
    """Keep garbage-collection pauses out of the pacing: everything alive at start-up (modules,
    audio frames) is frozen out of the collector, and young-generation collections run every 50k
    allocations instead of 700 (a full collection, which scans every live call object, then comes
    every ~10M allocations: minutes apart at full load, so cycles are still reclaimed and memory
    stays bounded over an hour-long soak)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


class Interrupt:
    """Ctrl-C / SIGTERM end the run early but still produce the report (verdict: invalid)."""

    def __init__(self) -> None:
        self.event = gevent.event.Event()
        self._handlers = [gevent.signal_handler(sig, self.event.set) for sig in (signal.SIGINT, signal.SIGTERM)]

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True when interrupted."""
        return self.event.wait(timeout)

    def is_set(self) -> bool:
        return self.event.is_set()

    def cancel(self) -> None:
        for h in self._handlers:
            h.cancel()


class Session:
    """One run's Locust runner and, distributed, its worker processes."""

    def __init__(self, sc: Scenario, stop_timeout: float | None, *, expect_workers: int = 0,
                 bind_host: str = "127.0.0.1", port: int = 0) -> None:
        self.scenario, self.stop_timeout, self.expect_workers = sc, stop_timeout, expect_workers
        self.bind_host = bind_host
        self.env = Environment(user_classes=[locustfile.RtaaCaller], catch_exceptions=True,
                               shape_class=StagesShape(sc.stages) if sc.stages else None, stop_timeout=stop_timeout)
        self.distributed = expect_workers > 0
        self.runner: Any
        if self.distributed:  # port 0: Locust binds any free port (its RPC server reports which)
            # Locust drops a worker after 3 missed 1 s heartbeats and stops the test when the last one goes:
            # a worker starved of CPU for 3 s (a busy 2-core CI host) would silently end the run. Lost workers
            # are still reported (the run is then invalid), after a more tolerant wait.
            locust.runners.HEARTBEAT_LIVENESS = WORKER_HEARTBEAT_LIVENESS_S
            self.runner = self.env.create_master_runner(bind_host, port)
        else:
            self.runner = self.env.create_local_runner()
        self.workers: list[subprocess.Popen] = []
        self.drained_by: dict[str, dict[str, int]] = {}  # worker id -> its counts at its last drain answer
        self.worker_errors: list[str] = []  # a worker that cannot play the scenario: the run stops, invalid
        self._lost_reported = False
        self._drain_asked_at: float | None = None

    def join_workers(self, spawn_local: bool, console: Console) -> None:
        """Distributed: start the local worker processes (or wait for remote ones) until every one is
        connected; the run's clock starts after (a slow start must not eat the run)."""
        if not self.distributed:
            return
        port = self.runner.server.port
        if spawn_local:
            for _ in range(self.expect_workers):
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "rtaa_cli.soak.session", "worker", "127.0.0.1", str(port)],
                    stdout=subprocess.DEVNULL))
        else:
            console.print(f"waiting for {self.expect_workers} worker(s) on {self.bind_host}:{port}",
                          highlight=False, soft_wrap=True)
        deadline = time.monotonic() + WORKERS_JOIN_TIMEOUT_S
        while len(self.runner.clients.ready) < self.expect_workers:
            if time.monotonic() > deadline:
                raise RtaaError(f"only {len(self.runner.clients.ready)} of {self.expect_workers} Locust workers connected")
            if any(w.poll() is not None for w in self.workers):
                raise RtaaError("a Locust worker process exited before the run started")
            gevent.sleep(0.1)  # Locust has no "worker joined" event to wait on

    def feed(self, stats: SoakStats, calls_csv: CallCsv | None) -> None:
        """The callers' messages (from this process's users or from workers) into ``stats``."""
        def on_call(environment: Any, msg: Any, **kw: Any) -> None:
            rec = CallRecord.from_dict(msg.data)
            stats.add(rec)
            if calls_csv is not None:
                calls_csv.add(rec)

        r = self.runner
        r.register_message(locustfile.MSG_CALL, on_call)
        r.register_message(locustfile.MSG_STARTED, lambda environment, msg, **kw: stats.call_started())
        r.register_message(locustfile.MSG_DRAINED,
                           lambda environment, msg, **kw: self.drained_by.__setitem__(msg.data["client"], msg.data))
        r.register_message(locustfile.MSG_WORKER_ERROR, lambda environment, msg, **kw: self.worker_errors.append(
            f"Locust worker {msg.data['client']}: {msg.data['error']}"))

    def configure(self, config: dict[str, Any]) -> None:
        """The callers' configuration (rtaa_cli/soak/locustfile.py): to every worker, or to this process."""
        if self.distributed:
            self.runner.send_message(locustfile.MSG_CONFIG, config)
        else:
            locustfile.configure(config)

    def start(self) -> None:
        sc = self.scenario
        if sc.stages:
            self.runner.start_shape()  # Locust's LoadTestShape drives the user count (rtaa_cli/soak/shape.py)
        else:
            self.runner.start(sc.users, spawn_rate=sc.spawn_rate)

    @property
    def user_count(self) -> int:
        return int(self.runner.user_count)

    def lost_workers(self) -> str | None:
        """Once, when workers went missing: why the run is invalid."""
        if not self.distributed or self._lost_reported or not self.runner.clients.missing:
            return None
        self._lost_reported = True
        return (f"{len(self.runner.clients.missing)} Locust worker(s) sent no heartbeat for "
                f"{WORKER_HEARTBEAT_LIVENESS_S} s during the run (starved of CPU or cut off): their calls are "
                "missing; give the load generator more CPU (fewer users per process, more --processes/hosts)")

    def drained(self, now: float) -> tuple[bool, str | None]:
        """Once the run has every record it was told of: have all calls been reported? Distributed, a
        stalled worker's calls are not counted yet: done only once every worker has answered that all its
        calls are reported (asked again each time), or after the liveness wait, with why the run is invalid."""
        if not self.distributed:
            return True, None
        done = [d for d in self.drained_by.values() if d["started"] == d["reported"]]
        if len(done) >= self.expect_workers:
            return True, None
        if self._drain_asked_at is None:
            self._drain_asked_at = now
        elif now - self._drain_asked_at > WORKER_HEARTBEAT_LIVENESS_S:
            return True, (f"{self.expect_workers - len(done)} of {self.expect_workers} Locust worker(s) did not "
                          f"confirm the end of their calls within {WORKER_HEARTBEAT_LIVENESS_S} s: their calls "
                          "may be missing from this report")
        self.runner.send_message(locustfile.MSG_DRAIN, None)
        return False, None

    def stop(self) -> None:
        """Every call is reported (or the run ended early): stop the users now."""
        self.env.stop_timeout = None
        self.runner.quit()

    @property
    def cpu_warning(self) -> bool:
        """Locust saw the load generator (this process or a worker) short of CPU."""
        return bool(getattr(self.runner, "cpu_warning_emitted", False) or
                    getattr(self.runner, "worker_cpu_warning_emitted", False))

    def close(self) -> None:
        """Stop the local worker processes."""
        stop_processes(self.workers, timeout=10)


def worker_main(master_host: str, master_port: int) -> None:
    """A Locust worker process: users get their config from the master's ``rtaa_config`` message."""
    env = Environment(user_classes=[locustfile.RtaaCaller], catch_exceptions=True)
    runner = env.create_worker_runner(master_host, master_port)
    runner.register_message(locustfile.MSG_CONFIG, locustfile.on_config_message)
    runner.register_message(locustfile.MSG_DRAIN, locustfile.on_drain_message)
    tune_gc()
    runner.greenlet.join()
    if locustfile.worker_error is not None:  # the master has it too (and stopped the run as invalid)
        raise RtaaError(locustfile.worker_error, exit_code=1)


if __name__ == "__main__":  # python -m rtaa_cli.soak.session worker HOST PORT
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        try:
            worker_main(sys.argv[2], int(sys.argv[3]))
        except RtaaError as exc:
            sys.exit(f"error: {exc}")
    else:
        sys.exit("usage: python -m rtaa_cli.soak.session worker MASTER_HOST MASTER_PORT")
