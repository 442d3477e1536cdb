"""Black-box soak of a third-party pipeline (tests/thirdparty/target.py: untagged Deepgram connections,
72 ms re-chunking, transcripts to a Redis stream per call in its own schema) through the real CLI:
``rtaa soak --target ... --transcripts redis://...{call_sid} --feed-map ... --provider-stats ...``.
Asserts the measured figures (calls, finals delivered, feed messages counted, provider connections
attributed to their calls by the audio watermark), and that without the mapping every message is
counted as not understood instead of vanishing."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import orjson
import pytest
import redis

from helpers.paths import THIRDPARTY
from helpers.soak import readline
from helpers.thirdparty import SCENARIO_TEMPLATE as SCENARIO

RTAA = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
FEED_MAP = "text=text,is_final=type==final,seq=seq"
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answers at {REDIS}: {exc}")
    prefix = f"rtaa-test:{uuid.uuid4().hex[:10]}:"
    emu = subprocess.Popen([*RTAA, "fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    target = None
    try:
        line = readline(emu, 30.0)
        assert line, "emulator did not start"
        info = orjson.loads(line)
        target = subprocess.Popen([sys.executable, str(THIRDPARTY / "target.py"), "--deepgram", info["url"],
                                   "--redis", REDIS, "--prefix", prefix, "--rechunk-ms", "72"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = readline(target, 30.0)
        assert line, "third-party target did not start"
        yield {"target": orjson.loads(line)["target"], "stats": info["stats"], "prefix": prefix,
               "tmp": tmp_path_factory.mktemp("thirdparty")}
    finally:
        for proc in (target, emu):
            if proc is not None:
                proc.terminate() if proc is emu else proc.stdin.close()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def _soak(setup, name: str, *extra: str) -> tuple[int, dict, str]:
    toml = setup["tmp"] / f"{name}.toml"
    toml.write_text(SCENARIO.format(feed=f'[feed]\nmap = "{FEED_MAP}"' if name == "mapped" else ""))
    out = setup["tmp"] / f"{name}.json"
    feed = f"{REDIS.rstrip('/')}?stream={setup['prefix']}{{call_sid}}"
    proc = subprocess.run([*RTAA, "soak", str(toml), "--quiet", "--json", str(out), "--target", setup["target"],
                           "--transcripts", feed, "--provider-stats", setup["stats"], *extra],
                          capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stdout + proc.stderr
    return proc.returncode, orjson.loads(out.read_bytes()), proc.stdout + proc.stderr


def test_soak_against_a_foreign_redis_feed_with_a_mapping(setup) -> None:
    """The soak's calls complete over the untagged, re-chunked target, and the target really wrote
    finals in its own schema to one stream per soak call (ground truth read back from Redis).
    The soak report does not aggregate the per-call feed counts yet (the lead's report): see
    tests/feeds/test_feed_redis.py for the counts themselves."""
    code, doc, output = _soak(setup, "mapped")
    calls = doc["calls"]
    assert calls["completed"] == calls["started"] >= 2 and calls["failed"] == 0, (calls, output[-2000:])
    assert doc["failures"]["by_reason"] == {}, doc["failures"]
    # no tag, 72 ms re-chunking: every provider connection is attributed to its call by the watermark
    prov = doc["provider"]
    assert prov["unattributed_connections"] == 0 and prov["attributed_by_tag"] == 0, prov
    assert prov["attributed_by_watermark"] == prov["connections"] >= calls["started"], prov
    assert prov["calls_reached"] == prov["calls_with_audio"] == calls["started"], prov
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["unattributed_connections"]["status"] == "pass" and rows["duplicates"]["value"] == 0, rows
    client = redis.Redis.from_url(REDIS)
    keys = [k.decode() for k in client.scan_iter(match=setup["prefix"] + doc["run"]["call_prefix"] + "*")]
    assert len(keys) == calls["started"], keys  # one stream per call, named by the soak's call SIDs
    for key in keys:
        entries = client.xrange(key)
        types = {fields[b"type"] for _id, fields in entries}
        assert b"final" in types and all(set(f) == {b"seq", b"type", b"text", b"confidence", b"timestamp_ms"}
                                         for _i, f in entries), entries[:3]
    client.close()
