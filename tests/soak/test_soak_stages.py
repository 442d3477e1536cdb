"""Load stages (`[[stages]]`, k6's stages on Locust's LoadTestShape): the rules (sans-I/O), the
scenario file's errors, and a real soak whose user count follows the stages: it ramps up, holds,
ramps down without cutting a call, and the report carries the stages and the users over time."""
from __future__ import annotations

import csv
import subprocess

import orjson
import pytest

from rtaa_cli.errors import RtaaError
from rtaa_cli.soak.scenario import parse_scenario, planned_users, stage_at, stage_boundaries
from helpers.soak_target import RTAA, SOAK_TIMEOUT_S

STAGES = [(4.0, 3), (4.0, 3), (6.0, 1)]  # ramp 0 -> 3 in 4 s, hold 3 for 4 s, ramp down to 1 in 6 s


def test_stage_rules() -> None:
    assert stage_boundaries(STAGES) == [4.0, 8.0, 14.0]
    assert stage_at(STAGES, 0.0) == (3, 0.75)  # Locust: reach 3 users at 0.75/s, i.e. over the stage
    assert stage_at(STAGES, 5.0) == (3, 1.0)  # a hold: no change
    assert stage_at(STAGES, 9.0) == (1, pytest.approx(2 / 6))
    assert stage_at(STAGES, 99.0) == (1, 1.0)  # after the last stage: its users (the run's clock ends it)
    assert planned_users(STAGES, 2.0) == 1.5 and planned_users(STAGES, 6.0) == 3 and planned_users(STAGES, 11.0) == 2


def test_a_scenario_with_stages_sets_users_and_duration_and_refuses_what_clashes() -> None:
    doc = {"stages": [{"duration": "1m", "users": 10}, {"duration": "30s", "users": 50}, {"duration": "1m", "users": 0}]}
    sc = parse_scenario(doc)
    assert sc.stages == [(60.0, 10), (30.0, 50), (60.0, 0)] and sc.users == 50 and sc.duration_s == 150.0
    with pytest.raises(RtaaError, match="--users / --duration cannot override"):
        sc.with_overrides(users=5)
    with pytest.raises(RtaaError, match="remove load.users"):
        parse_scenario({**doc, "load": {"users": 3}})
    with pytest.raises(RtaaError, match="needs duration and users"):
        parse_scenario({"stages": [{"duration": "10s"}]})
    with pytest.raises(RtaaError, match="unknown key"):
        parse_scenario({"stages": [{"duration": "10s", "users": 2, "target": 3}]})
    with pytest.raises(RtaaError, match="duration must be > 0"):
        parse_scenario({"stages": [{"duration": 0, "users": 2}]})
    with pytest.raises(RtaaError, match="never have a user"):
        parse_scenario({"stages": [{"duration": "5s", "users": 0}]})
    with pytest.raises(RtaaError, match="burst and"):
        parse_scenario({**doc, "burst": {"enabled": True}})


def test_a_soak_follows_its_stages_and_a_ramp_down_cuts_no_call(tmp_path) -> None:
    toml = tmp_path / "stages.toml"
    toml.write_text('name = "stages"\n' + "".join(
        f'[[stages]]\nduration = "{d:g}s"\nusers = {u}\n' for d, u in STAGES) +
        '[call]\naudio = ["fixtures/audio/call.wav"]\nlength = "1s"\npause = ["0.2s", "0.3s"]\nwait_final = "5s"\n'
        # the load shape is under test, not the generator's pacing on a busy CI host
        '[pacing]\nmax_lateness_p99_ms = 150\n')
    out, prefix = tmp_path / "run.json", tmp_path / "run"
    proc = subprocess.run([*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--csv", str(prefix),
                           "--html", str(tmp_path / "run.html")],
                          capture_output=True, text=True, timeout=SOAK_TIMEOUT_S)
    assert out.exists(), proc.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    assert proc.returncode == 0 and doc["verdict"] == "pass", (doc["verdict"], doc.get("invalid_reasons"))
    assert doc["run"]["stages"] == [{"end_s": 4.0, "users": 3}, {"end_s": 8.0, "users": 3}, {"end_s": 14.0, "users": 1}]
    assert doc["calls"]["failed"] == 0 and doc["calls"]["unfinished"] == 0  # the ramp-down let calls finish
    tl = doc["timeline"]
    users = dict(zip(tl["t"], tl["users"]))
    assert users[0.0] <= 2 and max(u for u in tl["users"] if u is not None) == 3  # ramped up, never above plan
    with open(f"{prefix}_calls.csv", newline="") as f:
        started = [float(row["started_at"]) for row in csv.DictReader(f)]
    t0 = min(started)  # the first user's first call: the run's start
    hold = sum(5.0 <= t - t0 < 8.0 for t in started)  # 3 users, ~1.3 s a call each: ~7 calls
    tail = sum(11.0 <= t - t0 < 14.0 for t in started)  # ramping 1.5 -> 1 users (3 users: as many as in hold)
    assert 2 * tail <= hold, (hold, tail, sorted(t - t0 for t in started))  # measured: 6 vs 2
    html = (tmp_path / "run.html").read_text()
    assert "stage 2 end: 3 users" in html and "planned users" in html
