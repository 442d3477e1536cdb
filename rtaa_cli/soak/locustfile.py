"""Locust user for ``rtaa soak``: each user plays paced calls, one after another.

Importing this module imports Locust, which monkey-patches the process for gevent: only the soak
runner (its own process) and Locust worker processes import it -- never the CLI at start-up, never
pytest.

Configuration arrives as one plain dict (:func:`configure`): set directly by the in-process runner,
or sent by the master to every worker as the ``rtaa_config`` message before spawning. Each finished
call goes back as an ``rtaa_call`` message (the call's :class:`~rtaa_cli.soak.stats.CallRecord`, built
from the caller core's result),
each call start as ``rtaa_started``, and the master's ``rtaa_drain`` gets each worker's counts back as
``rtaa_drained`` (the end of the run waits for every worker's): Locust's own messaging, so ``--processes N`` and workers on
other hosts aggregate at the master exactly like a single process.

Run it through ``rtaa soak`` (and ``rtaa soak --worker`` on other hosts), which wires the messages;
the plain ``locust`` CLI does not send the configuration.
"""
from __future__ import annotations

from rtaa_cli.soak import patched  # noqa: F401  (first: Locust's gevent monkey-patching)

import random
import time
from typing import Any

from locust import User, task
from locust.exception import StopUser

from rtaa_cli import robustmark
from rtaa_cli.call.gevent_driver import CallSpec, new_call_sid, run_call
from rtaa_cli.errors import RtaaError
from rtaa_cli.feeds.url import parse_feed_map
from rtaa_cli.soak.audioset import call_frames
from rtaa_cli.soak.scenario import Scenario, SmoothWeighted, resolve_audio
from rtaa_cli.soak.stats import CallRecord

MSG_CONFIG = "rtaa_config"
MSG_CALL = "rtaa_call"
MSG_STARTED = "rtaa_started"
# The master's end-of-run handshake: "drain?" -> each worker answers with its own counts. Messages from
# one worker arrive in order, so once its answer is in, every call it started or finished is too.
MSG_DRAIN = "rtaa_drain"
MSG_DRAINED = "rtaa_drained"
# A worker that cannot play the scenario (its audio is missing on this host) says why, once; the master
# stops the run as invalid with that reason and the worker exits 1 with it (never a traceback per call).
MSG_WORKER_ERROR = "rtaa_worker_error"

_config: dict[str, Any] | None = None
_bad_counter = -1
_counts = {"started": 0, "reported": 0}  # this process's calls
_scenario: Scenario | None = None
worker_error: str | None = None  # why this worker cannot play the scenario (None: it can)


def configure(config: dict[str, Any]) -> None:
    """``config``: ``{"scenario": Scenario.to_dict(), "url", "transcripts_url", "headers",
    "call_prefix", "burst_at", "stop_new_calls_at"}``."""
    global _config, _scenario
    _config = config
    _scenario = Scenario.from_dict(config["scenario"])


def on_config_message(environment: Any, msg: Any, **_: Any) -> None:
    global worker_error
    configure(msg.data)
    environment.stop_timeout = msg.data.get("stop_timeout")  # stages: ramp-downs let calls finish
    assert _scenario is not None
    # as on the master: the worker's working directory, then its installed project root (docs/soak.md)
    _scenario.audio = [resolve_audio(audio, None) for audio in _scenario.audio]
    try:  # decode the audio now (cached for the calls): a missing file is one error, not one per call
        for audio in _scenario.audio:
            call_frames(audio, _scenario.sample_rate, _scenario.frame_ms, _scenario.call_length_s)
    except RtaaError as exc:
        worker_error = f"cannot play the scenario on this worker: {exc} (audio paths must exist on every worker host)"
        runner = environment.runner
        runner.send_message(MSG_WORKER_ERROR, {"client": runner.client_id, "error": worker_error})


def on_drain_message(environment: Any, msg: Any, **_: Any) -> None:
    runner = environment.runner
    runner.send_message(MSG_DRAINED, {"client": runner.client_id, **_counts})


class RtaaCaller(User):
    """One virtual caller: plays a call, pauses, plays the next, until the run stops."""

    def wait_time(self) -> float:
        lo, hi = _scenario.pause_s if _scenario else (1.0, 1.0)
        return random.uniform(lo, hi)

    def on_start(self) -> None:
        self._rng = random.Random()
        self._first = True

    @task
    def call(self) -> None:
        if worker_error is not None:
            raise StopUser()  # reported to the master once (MSG_WORKER_ERROR); no call is played
        if _config is None or _scenario is None:
            time.sleep(0.1)  # the master's config message is still on its way
            return
        cfg, sc = _config, _scenario
        stop_at = cfg.get("stop_new_calls_at")
        if stop_at is not None and time.time() >= stop_at:
            raise StopUser()  # the run's duration is over: no new calls, in-flight ones finish
        kind = self._pick_kind(sc)
        audio = self._rng.choice(sc.audio)
        frames = call_frames(audio, sc.sample_rate, sc.frame_ms, sc.call_length_s)
        spec = CallSpec(
            url=cfg["url"], call_sid=new_call_sid(cfg["call_prefix"]), frames=frames,
            frame_ms=sc.frame_ms, sample_rate=sc.sample_rate, kind=kind,
            transcripts_url=cfg.get("transcripts_url"), feed_mapping=parse_feed_map(sc.feed_map), headers=dict(cfg.get("headers") or {}),
            hold_at_s=sc.hold_at_s, hold_s=sc.hold_s,
            disconnect_at_s=self._rng.uniform(*sc.disconnect_at_s), reconnect_after_s=sc.reconnect_after_s,
            second_stream_at_s=sc.second_stream_at_s, wait_final_s=sc.wait_final_s,
            server_hangup_ok=sc.server_hangup == "ok",
            oversize_bytes=sc.oversize_bytes,
            start_at=cfg.get("burst_at") if self._first else None, watermark=bool(cfg.get("watermark", True)),
            robust_mark=bool(cfg.get("robust_mark", robustmark.DEFAULT_ON)),
        )
        self._first = False
        runner = self.environment.runner
        _counts["started"] += 1
        runner.send_message(MSG_STARTED, 1)
        try:
            record = CallRecord.from_result(run_call(spec))
        except Exception as exc:  # noqa: BLE001 - a generator bug must be counted, not lose the call
            record = CallRecord(call_sid=spec.call_sid, kind=kind, started_at=time.time(), ended_at=time.time(),
                                failure=f"load generator error: {type(exc).__name__}: {exc}")
        _counts["reported"] += 1
        runner.send_message(MSG_CALL, record.to_dict())
        # Locust's own statistics (web UI / CSV users): one "request" per call.
        self.environment.events.request.fire(
            request_type="CALL", name=kind, response_time=(record.ended_at - record.started_at) * 1000.0,
            response_length=record.audio_bytes_sent, exception=RuntimeError(record.failure) if record.failure else None,
            context={},
        )

    def _pick_kind(self, sc: Scenario) -> str:
        kind = _mix_picker(sc).next()
        if kind == "bad_input":  # round-robin, so even a short run covers every bad input
            global _bad_counter
            _bad_counter += 1
            kind = "bad:" + sc.bad_inputs[_bad_counter % len(sc.bad_inputs)]
        return kind


_picker: SmoothWeighted | None = None


def _mix_picker(sc: Scenario) -> SmoothWeighted:
    global _picker
    if _picker is None or _picker.weights != {k: w for k, w in sc.mix.items() if w > 0}:
        _picker = SmoothWeighted(sc.mix)
    return _picker
