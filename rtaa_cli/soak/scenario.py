"""Soak scenario files (TOML in ``scenarios/``): load, call shape, behaviour mix, faults, thresholds.

Every key is optional; the defaults below make an empty file a small steady soak. Unknown keys are
errors (a typo must not silently change a soak). See docs/soak.md for the full reference.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rtaa_cli.errors import RtaaError
from rtaa_cli.feeds.url import parse_feed_map
from rtaa_cli.soak.stats import METRICS

KINDS = ("normal", "hold", "disconnect", "second_stream", "bad_input")

# Bad inputs the bad-input scenario sends, and the close codes each may legitimately earn.
# Caller's fault -> 1003/1007/1008/1009 (docs/exotel-protocol.md "Close codes"); never 1011, never silence.
BAD_INPUTS: dict[str, tuple[int | None, ...]] = {
    "malformed_json": (1007,),
    "bad_base64": (1007,),
    "oversize": (1009,),
    "wrong_sample_rate": (1007,),
    "media_before_start": (1008,),
    # after stop the call is over: a server may ignore late frames (closing normally, or leaving the
    # close to the caller: None) or reject them as a policy violation; 1011 is never right.
    "frames_after_stop": (1000, 1001, 1008, None),
}

# Locust's and k6's forms: a bare number of seconds, or unit terms in descending order ("1h30m", "2m30s",
# "1.5s", "250ms").
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
_UNIT_SECONDS = (3600.0, 60.0, 1.0, 0.001)
_DURATION_HINT = "expected a duration like 30s, 2m30s, 1h30m or 250ms"


def parse_duration(value: Any, what: str = "duration") -> float:
    """``30`` / ``"30s"`` / ``"2m30s"`` / ``"1h30m"`` / ``"250ms"`` -> seconds."""
    if isinstance(value, bool):
        raise RtaaError(f"{what}: {_DURATION_HINT}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise RtaaError(f"{what}: must be >= 0, got {value}")
        return float(value)
    text = str(value).strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise RtaaError(f"{what}: {_DURATION_HINT}, got {value!r}")
    return sum(float(g) * unit for g, unit in zip(m.groups(), _UNIT_SECONDS) if g is not None)


def _range(value: Any, what: str) -> tuple[float, float]:
    """A duration or a [lo, hi] pair of durations."""
    if isinstance(value, list):
        if len(value) != 2:
            raise RtaaError(f"{what}: expected [min, max], got {value!r}")
        lo, hi = parse_duration(value[0], what), parse_duration(value[1], what)
        if hi < lo:
            raise RtaaError(f"{what}: max {hi:g}s is below min {lo:g}s")
        return lo, hi
    v = parse_duration(value, what)
    return v, v


@dataclass
class Faults:
    """Provider faults, applied to the local emulator (ignored, with a note, for remote targets)."""

    handshake_delay_ms: tuple[float, float] = (150.0, 300.0)  # Deepgram-like handshake (docs/deepgram-protocol.md: 130-290 ms)
    result_latency_ms: float = 150.0  # Deepgram-like result delay after the audio it covers
    result_jitter_ms: float = 100.0
    drop_after_s: float | None = None
    close_1011_after_s: float | None = None
    refuse_429_fraction: float = 0.0
    idle_timeout_s: float = 10.0

    def emulator_faults(self) -> dict[str, Any]:
        """The runtime-changeable faults (the emulator's control endpoint); ``idle_timeout_s`` is a
        start-up option of the emulator instead."""
        return {"handshake_delay_ms": tuple(self.handshake_delay_ms), "result_latency_ms": self.result_latency_ms,
                "result_jitter_ms": self.result_jitter_ms, "drop_after_s": self.drop_after_s,
                "close_1011_after_s": self.close_1011_after_s, "refuse_429_fraction": self.refuse_429_fraction}


@dataclass
class Scenario:
    name: str = "unnamed"
    description: str = ""
    # load
    users: int = 5
    spawn_rate: float = 5.0
    duration_s: float = 30.0
    processes: int = 1
    # call shape
    audio: list[str] = field(default_factory=lambda: ["fixtures/audio/call.wav"])
    call_length_s: float | None = None  # None: the whole file
    frame_ms: int = 36
    sample_rate: int = 8000
    pause_s: tuple[float, float] = (1.0, 1.0)
    wait_final_s: float = 10.0
    server_hangup: str = "fail"  # [call] server_hangup: "fail" | "ok" (a 1000 close before stop: bot hung up)
    # behaviour mix (weights) and per-behaviour parameters
    mix: dict[str, float] = field(default_factory=lambda: {"normal": 1.0})
    hold_at_s: float = 3.0
    hold_s: float = 15.0
    disconnect_at_s: tuple[float, float] = (2.0, 5.0)
    reconnect_after_s: float = 0.5
    second_stream_at_s: float = 3.0
    bad_inputs: list[str] = field(default_factory=lambda: list(BAD_INPUTS))
    oversize_bytes: int = 2 * 1024 * 1024
    # burst: every user's first call waits for a common instant (the connection race, docs/incidents.md)
    burst: bool = False
    faults: Faults = field(default_factory=Faults)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    max_lateness_p99_ms: float = 25.0
    delivery_tolerance_ms: float = 1000.0
    feed_map: str | None = None  # [feed] map / --feed-map: field mapping of a foreign feed schema
    # [[stages]] (k6's stages, Locust's LoadTestShape): (duration s, users at its end); the users ramp
    # linearly from the previous stage's count (0 before the first). Empty: [load] users for duration.
    stages: list[tuple[float, int]] = field(default_factory=list)
    # [scale]: the local target as 1 ingest + N workers, separate processes on a Redis bus (docs/scale-out.md);
    # 0 workers: one `rtaa serve` on the memory bus
    scale_workers: int = 0
    scale_lease_ms: int = 2000
    scale_redis: str = ""  # "" = REDIS_URL, else redis://127.0.0.1:6379/0
    path: str | None = None

    def with_overrides(self, *, users: int | None = None, spawn_rate: float | None = None,
                       duration: str | None = None, processes: int | None = None) -> "Scenario":
        s = replace(self)
        if self.stages and (users is not None or duration is not None):
            raise RtaaError(f"scenario {self.name!r} sets its load in [[stages]]: --users / --duration cannot "
                            "override them (edit the stages, or use a scenario without them)")
        if users is not None:
            if users < 1:
                raise RtaaError("--users must be >= 1")
            s.users = users
        if spawn_rate is not None:
            if spawn_rate <= 0:
                raise RtaaError("--spawn-rate must be > 0")
            s.spawn_rate = spawn_rate
        if duration is not None:
            s.duration_s = parse_duration(duration, "--duration")
        if processes is not None:
            if processes < 1:
                raise RtaaError("--processes must be >= 1")
            s.processes = processes
        return s

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "faults"}
        d["faults"] = dict(self.faults.__dict__)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scenario":
        d = dict(d)
        faults = Faults(**d.pop("faults"))
        for key in ("pause_s", "disconnect_at_s"):
            d[key] = tuple(d[key])
        d["stages"] = [(float(a), int(b)) for a, b in d.get("stages", [])]
        faults.handshake_delay_ms = tuple(faults.handshake_delay_ms)
        return cls(faults=faults, **d)


_SECTIONS = {
    "load": {"users", "spawn_rate", "duration", "processes"},
    "call": {"audio", "length", "frame_ms", "sample_rate", "pause", "wait_final", "server_hangup"},
    "mix": set(KINDS),
    "hold": {"at", "length"},
    "disconnect": {"at", "reconnect_after"},
    "second_stream": {"at"},
    "bad_input": {"kinds", "oversize_bytes"},
    "burst": {"enabled"},
    "faults": {"handshake_delay_ms", "result_latency_ms", "result_jitter_ms", "drop_after_s",
               "close_1011_after_s", "refuse_429_fraction", "idle_timeout_s"},
    "thresholds": set(METRICS),
    "pacing": {"max_lateness_p99_ms"},
    "delivery": {"tolerance_ms"},
    "feed": {"map"},
    "scale": {"workers", "lease_ms", "redis"},
}


def stage_boundaries(stages: list[tuple[float, int]]) -> list[float]:
    """The seconds into the run at which each stage ends."""
    out, t = [], 0.0
    for duration, _ in stages:
        t += duration
        out.append(t)
    return out


def stage_at(stages: list[tuple[float, int]], t: float) -> tuple[int, float]:
    """(users, spawn rate) for Locust at ``t`` s into the run: the current stage's target, reached at
    the rate that spreads the change over the stage (a hold: no change; after the last: its users)."""
    prev, start = 0, 0.0
    for duration, users in stages:
        if t < start + duration:
            rate = abs(users - prev) / duration if users != prev else 1.0
            return users, max(rate, 0.01)
        prev, start = users, start + duration
    return prev, 1.0


def planned_users(stages: list[tuple[float, int]], t: float) -> float:
    """The stages' user count at ``t`` (linear within a ramp): what the report draws as the plan."""
    prev, start = 0, 0.0
    for duration, users in stages:
        if t <= start + duration:
            return prev + (users - prev) * (t - start) / duration if duration > 0 else users
        prev, start = users, start + duration
    return prev


def _parse_stages(value: Any, load: dict[str, Any], where: str) -> list[tuple[float, int]]:
    if not isinstance(value, list) or not value or not all(isinstance(st, dict) for st in value):
        raise RtaaError(f"{where}: [[stages]] must be one or more tables with duration and users")
    clash = sorted({"users", "duration"} & set(load))
    if clash:
        raise RtaaError(f"{where}: [[stages]] set the load; remove load.{' and load.'.join(clash)}")
    out = []
    for i, st in enumerate(value, 1):
        _check_keys(st, {"duration", "users"}, f"{where} [[stages]] #{i}")
        if "duration" not in st or "users" not in st:
            raise RtaaError(f"{where} [[stages]] #{i}: needs duration and users")
        duration = parse_duration(st["duration"], f"stages #{i}.duration")
        if duration <= 0:
            raise RtaaError(f"{where} [[stages]] #{i}: duration must be > 0")
        out.append((duration, int(_number(st["users"], f"stages #{i}.users", 0))))
    if max(u for _, u in out) < 1:
        raise RtaaError(f"{where}: [[stages]] never have a user")
    return out


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RtaaError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _number(value: Any, what: str, lo: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RtaaError(f"{what}: expected a number, got {value!r}")
    if lo is not None and value < lo:
        raise RtaaError(f"{what}: must be >= {lo:g}, got {value}")
    return float(value)


def parse_scenario(doc: dict[str, Any], where: str = "scenario") -> Scenario:
    _check_keys(doc, {"name", "description", "stages", *_SECTIONS}, where)
    s = Scenario()
    s.name = str(doc.get("name", s.name))
    s.description = str(doc.get("description", ""))
    sec = {name: doc.get(name, {}) for name in _SECTIONS}
    for name, table in sec.items():
        if not isinstance(table, dict):
            raise RtaaError(f"{where}: [{name}] must be a table")
        _check_keys(table, _SECTIONS[name], f"{where} [{name}]")

    load = sec["load"]
    if "users" in load:
        s.users = int(_number(load["users"], "load.users", 1))
    if "spawn_rate" in load:
        s.spawn_rate = _number(load["spawn_rate"], "load.spawn_rate", 0.001)
    if "duration" in load:
        s.duration_s = parse_duration(load["duration"], "load.duration")
    if "processes" in load:
        s.processes = int(_number(load["processes"], "load.processes", 1))
    if "stages" in doc:
        s.stages = _parse_stages(doc["stages"], load, where)
        s.users, s.duration_s = max(u for _, u in s.stages), stage_boundaries(s.stages)[-1]

    call = sec["call"]
    if "audio" in call:
        audio = call["audio"]
        s.audio = [audio] if isinstance(audio, str) else list(audio)
        if not s.audio or not all(isinstance(a, str) for a in s.audio):
            raise RtaaError("call.audio: expected a path or a list of paths (or \"synthetic\")")
    if "length" in call:
        s.call_length_s = None if call["length"] == "full" else parse_duration(call["length"], "call.length")
    if "frame_ms" in call:
        s.frame_ms = int(_number(call["frame_ms"], "call.frame_ms", 1))
    if "sample_rate" in call:
        s.sample_rate = int(_number(call["sample_rate"], "call.sample_rate"))
        if s.sample_rate not in (8000, 16000, 24000):
            raise RtaaError(f"call.sample_rate: must be 8000, 16000 or 24000, got {s.sample_rate}")
    if "pause" in call:
        s.pause_s = _range(call["pause"], "call.pause")
    if "wait_final" in call:
        s.wait_final_s = parse_duration(call["wait_final"], "call.wait_final")
    if "server_hangup" in call:
        if call["server_hangup"] not in ("ok", "fail"):
            raise RtaaError(f"{where}: call.server_hangup must be \"ok\" or \"fail\", not {call['server_hangup']!r}")
        s.server_hangup = call["server_hangup"]

    if sec["mix"]:
        s.mix = {k: _number(v, f"mix.{k}", 0) for k, v in sec["mix"].items()}
        if sum(s.mix.values()) <= 0:
            raise RtaaError("mix: at least one weight must be > 0")
    if "map" in sec["feed"]:
        try:
            parse_feed_map(str(sec["feed"]["map"]), "feed.map")
        except ValueError as exc:
            raise RtaaError(str(exc)) from None
        s.feed_map = str(sec["feed"]["map"])
    if "at" in sec["hold"]:
        s.hold_at_s = parse_duration(sec["hold"]["at"], "hold.at")
    if "length" in sec["hold"]:
        s.hold_s = parse_duration(sec["hold"]["length"], "hold.length")
    if "at" in sec["disconnect"]:
        s.disconnect_at_s = _range(sec["disconnect"]["at"], "disconnect.at")
    if "reconnect_after" in sec["disconnect"]:
        s.reconnect_after_s = parse_duration(sec["disconnect"]["reconnect_after"], "disconnect.reconnect_after")
    if "at" in sec["second_stream"]:
        s.second_stream_at_s = parse_duration(sec["second_stream"]["at"], "second_stream.at")
    if "kinds" in sec["bad_input"]:
        kinds = list(sec["bad_input"]["kinds"])
        bad = [k for k in kinds if k not in BAD_INPUTS]
        if bad or not kinds:
            raise RtaaError(f"bad_input.kinds: unknown {bad}; known: {', '.join(BAD_INPUTS)}")
        s.bad_inputs = kinds
    if "oversize_bytes" in sec["bad_input"]:
        s.oversize_bytes = int(_number(sec["bad_input"]["oversize_bytes"], "bad_input.oversize_bytes", 1))
    if "enabled" in sec["burst"]:
        s.burst = bool(sec["burst"]["enabled"])
        if s.burst and s.stages:
            raise RtaaError(f"{where}: burst and [[stages]] do not mix (a burst starts every user at once)")

    f = sec["faults"]
    if "handshake_delay_ms" in f:
        lo_hi = f["handshake_delay_ms"]
        lo_hi = lo_hi if isinstance(lo_hi, list) else [lo_hi, lo_hi]
        if len(lo_hi) != 2:
            raise RtaaError("faults.handshake_delay_ms: expected [min, max] in ms")
        s.faults.handshake_delay_ms = (_number(lo_hi[0], "faults.handshake_delay_ms", 0),
                                       _number(lo_hi[1], "faults.handshake_delay_ms", 0))
    for key in ("result_latency_ms", "result_jitter_ms", "refuse_429_fraction", "idle_timeout_s"):
        if key in f:
            setattr(s.faults, key, _number(f[key], f"faults.{key}", 0))
    for key in ("drop_after_s", "close_1011_after_s"):
        if key in f:
            off = f[key] is False or (isinstance(f[key], str) and f[key].lower() == "off")
            setattr(s.faults, key, None if off else _number(f[key], f"faults.{key}", 0))
    if not 0 <= s.faults.refuse_429_fraction <= 1:
        raise RtaaError("faults.refuse_429_fraction: must be between 0 and 1")

    for name, value in sec["thresholds"].items():
        off = value is False or (isinstance(value, str) and value.lower() == "off")  # (0 == False: test identity)
        s.thresholds[name] = None if off else _number(value, f"thresholds.{name}")
    if "max_lateness_p99_ms" in sec["pacing"]:
        s.max_lateness_p99_ms = _number(sec["pacing"]["max_lateness_p99_ms"], "pacing.max_lateness_p99_ms", 0)
    if "tolerance_ms" in sec["delivery"]:
        s.delivery_tolerance_ms = _number(sec["delivery"]["tolerance_ms"], "delivery.tolerance_ms", 0)
    scale = sec["scale"]
    if "workers" in scale:
        s.scale_workers = int(_number(scale["workers"], "scale.workers", 0))
    if "lease_ms" in scale:
        s.scale_lease_ms = int(_number(scale["lease_ms"], "scale.lease_ms", 200))
    if "redis" in scale:
        s.scale_redis = str(scale["redis"])
        if not s.scale_redis.startswith(("redis://", "rediss://")):
            raise RtaaError(f"{where}: scale.redis must be a redis:// URL, not {s.scale_redis!r}")
    return s


class SmoothWeighted:
    """Deterministic weighted round-robin (nginx's smooth algorithm): picks follow the weights
    exactly over every window of sum(weights) picks and are spread out, so a short run still plays
    every behaviour of the mix."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = {k: w for k, w in weights.items() if w > 0}
        self.total = sum(self.weights.values())
        self.current = dict.fromkeys(self.weights, 0.0)

    def next(self) -> str:
        for k, w in self.weights.items():
            self.current[k] += w
        best = max(self.current, key=self.current.__getitem__)
        self.current[best] -= self.total
        return best


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    if not p.exists() and not p.suffix:
        # `rtaa soak steady` -> scenarios/steady.toml
        for candidate in (Path("scenarios") / f"{p}.toml", _repo_scenarios() / f"{p}.toml"):
            if candidate.exists():
                p = candidate
                break
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RtaaError(f"scenario file not found: {path}") from None
    except OSError as exc:
        raise RtaaError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RtaaError(f"{p}: invalid TOML: {exc}") from None
    s = parse_scenario(doc, str(p))
    s.path = str(p)
    s.audio = [resolve_audio(a, p) for a in s.audio]
    return s


def _repo_scenarios() -> Path:
    return Path(__file__).resolve().parents[2] / "scenarios"


def resolve_audio(audio: str, scenario_path: Path | None) -> str:
    """Audio paths resolve against the CWD, then the scenario's project root (parent of scenarios/)."""
    if audio == "synthetic" or Path(audio).is_absolute() or Path(audio).exists():
        return audio
    bases = [Path(__file__).resolve().parents[2]]
    if scenario_path is not None:
        bases.insert(0, scenario_path.resolve().parent.parent)
        bases.insert(0, scenario_path.resolve().parent)
    for base in bases:
        if (base / audio).exists():
            return str(base / audio)
    return audio  # the runner reports it as missing, with the path the user wrote
