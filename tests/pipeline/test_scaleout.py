"""Scale-out on Redis Streams with real processes (docs/scale-out.md): one ingest, three workers, the emulator
as its own process, callers and feed readers here. Checks what the issue asks: every call gets its finals,
never two provider streams of one call open at once, a SIGKILLed worker's calls are taken over within a
measured bound with no lost and no repeated final, and a paused (SIGSTOP) worker sends nothing once resumed."""
from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers.redisdb import call_keys, delete, new_prefix, redis_url
from rtaa_cli.protocols.exotel import StreamEncoder
from helpers.scaleout import Proc, emulator, ingest, worker
from helpers.pipeline import assert_tiles, frames_of, http_get, run, speech_like
from helpers.paths import SCENARIOS

LEASE_MS = 2000


class Firehose:
    """Every feed message of every call, with the time it arrived here."""

    def __init__(self) -> None:
        self.by_call: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.ended: dict[str, asyncio.Event] = {}

    async def run(self, url: str) -> None:
        async with connect(url, proxy=None, max_size=None) as ws:
            self.open.set()
            try:
                async for raw in ws:
                    msg = orjson.loads(raw)
                    iid = msg["interaction_id"]
                    self.by_call.setdefault(iid, []).append((time.time(), msg))
                    if msg["type"] == "call_ended":
                        self.event(iid).set()
            except ConnectionClosed:
                pass

    def event(self, iid: str) -> asyncio.Event:
        return self.ended.setdefault(iid, asyncio.Event())

    def start(self, url: str) -> asyncio.Task[None]:
        self.open = asyncio.Event()
        return asyncio.get_running_loop().create_task(self.run(url))

    def finals(self, iid: str) -> list[dict[str, Any]]:
        return [m for _, m in self.by_call.get(iid, []) if m["type"] == "transcript" and m["is_final"]]


async def call(ingest_url: str, iid: str, frames: list[bytes], frame_s: float) -> None:
    async with connect(ingest_url, proxy=None, compression=None) as ws:
        enc = StreamEncoder(f"ST-{iid}", iid)
        await ws.send(enc.connected())
        await ws.send(enc.start())
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            await ws.send(enc.media(f))
            delay = t0 + (i + 1) * frame_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing like a phone line, not a synchronisation
        await ws.send(enc.stop())


def emulator_stats(emu: Proc) -> dict[str, Any]:
    return orjson.loads(http_get(emu.info["stats"])[1])


async def all_ended(hose: Firehose, iids: list[str], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            for iid in iids:
                await hose.event(iid).wait()
    except TimeoutError:
        missing = [i for i in iids if not hose.event(i).is_set()]
        raise AssertionError(f"{len(missing)} calls got no call_ended within {timeout_s} s: {missing[:5]}") from None


def check_call(hose: Firehose, iid: str, total_ms: float) -> None:
    msgs = [m for _, m in hose.by_call[iid]]
    assert [m["type"] for m in msgs].count("call_started") == 1 and msgs[-1]["type"] == "call_ended", \
        [m["type"] for m in msgs]
    seqs = [m["seq"] for m in msgs if m["type"] == "transcript"]
    assert seqs == sorted(set(seqs)), seqs  # no result twice, in order
    assert_tiles(hose.finals(iid), total_ms)  # no final lost, none repeated


DROP_REASONS = ("lease lost", "lease expired locally", "handed over (shutdown)")  # docs/scale-out.md


def check_connections(stats: dict[str, Any], workers: list[Proc], iids: list[str],
                      killed: frozenset[str] = frozenset()) -> Counter:
    """Never two provider streams of a call open at once, and every stream after a call's first is explained
    by the workers' own logs: a successor's ``call_taken_over`` after the previous owner either died (``killed``)
    or logged ``call_dropped`` with a documented reason (lease lost or expired locally, e.g. renewals starved on
    a loaded host, or handed over at SIGTERM). Returns the takeovers per call."""
    inter = stats["interactions"]
    dropped: Counter = Counter()
    taken: Counter = Counter()
    for w in workers:
        for e in w.events("call_dropped"):
            assert e["reason"].startswith(DROP_REASONS), e
            dropped[e["interaction_id"]] += 1
        for e in w.events("call_taken_over"):
            taken[e["interaction_id"]] += 1
    for iid in iids:
        assert inter[iid]["max_open"] == 1 and inter[iid]["duplicates"] == 0, (iid, inter[iid])
        if taken[iid] != dropped[iid] + (iid in killed):
            pytest.fail(f"{iid}: {taken[iid]} takeovers, {dropped[iid]} drops, killed {iid in killed}; logs:\n"
                        + "\n".join(f"{w.info.get('worker_id')} {line}" for w in workers for line in w.lines(iid)),
                        pytrace=False)
        assert 1 <= inter[iid]["connections"] <= 1 + taken[iid], (iid, inter[iid], taken[iid])
    if sum(dropped.values()):
        evidence = [{k: v for k, v in e.items() if k not in ("ts", "level", "logger", "event")}
                    for w in workers for e in w.events("leases_expired_locally")]
        reasons = Counter(e["reason"] for w in workers for e in w.events("call_dropped"))
        print(f"calls dropped by their owner {sum(dropped.values())} {dict(reasons)}; evidence {evidence}")
    return taken


@pytest.fixture
def deployment():
    """(bus url, prefix, processes list to stop); every key of the prefix is deleted afterwards."""
    prefix = new_prefix()
    procs: list[Proc] = []
    try:
        yield redis_url(), prefix, procs
    finally:
        for p in procs:
            p.stop()
        for p in procs:  # pytest shows this only for a failed test: the evidence (leases lost, takeovers)
            print(f"--- {p.what} {p.info.get('worker_id', '')} rc {p.proc.returncode}:\n{p.tail()}")
        delete(prefix)


async def start_all(deployment, workers: int, *worker_args: str, lease_ms: int = LEASE_MS) -> tuple[Proc, Proc, list[Proc]]:
    url, prefix, procs = deployment
    emu = emulator()
    procs.append(emu)
    await emu.ready()
    ing = ingest(url, prefix)
    procs.append(ing)
    ws = [worker(url, prefix, emu.info["url"], "--lease-ms", str(lease_ms), *worker_args) for _ in range(workers)]
    procs.extend(ws)
    await asyncio.gather(ing.ready(), *(w.ready() for w in ws))
    return emu, ing, ws


N_CALLS = 50


def test_three_workers_fifty_calls_one_provider_stream_each(deployment) -> None:
    url, prefix, _ = deployment

    async def main() -> None:
        emu, ing, workers = await start_all(deployment, 3)
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(3))
        iids = [f"CA-n{i:02d}" for i in range(N_CALLS)]

        async def staggered(i: int, iid: str) -> None:
            await asyncio.sleep(i * 0.02)  # calls arrive over 1 s, as from a dialer
            await call(ing.info["ingest"], iid, frames, 0.036)

        await asyncio.gather(*(staggered(i, iid) for i, iid in enumerate(iids)))
        await all_ended(hose, iids, 60)
        for iid in iids:
            check_call(hose, iid, len(frames) * 36.0)
        taken = check_connections(emulator_stats(emu), workers, iids)  # 0 takeovers unless a lease was lost
        per_worker = [w.metric("rtaa_calls_total") for w in workers]  # a successor counts the call again
        assert sum(per_worker) == N_CALLS + sum(taken.values()) and all(n > 0 for n in per_worker), per_worker
        reader.cancel()
        assert call_keys(prefix) == []
        print(f"calls per worker {per_worker}")

    run(main(), 150)


def leases(prefix: str, iids: list[str]) -> dict[str, str | None]:
    r = redis.Redis.from_url(redis_url())
    out = {}
    for iid in iids:
        v = r.get(f"{prefix}:c:{{{iid}}}:lease")
        out[iid] = v.decode().split(":")[0] if v else None
    return out


def test_sigkill_a_worker_mid_call_its_calls_are_taken_over(deployment) -> None:
    url, prefix, _ = deployment

    async def main() -> None:
        emu, ing, workers = await start_all(deployment, 3)
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(8))  # ~9.6 s of audio, paced in real time
        iids = [f"CA-k{i}" for i in range(6)]
        calls = asyncio.gather(*(call(ing.info["ingest"], iid, frames, 0.036) for iid in iids))
        await asyncio.sleep(3.0)  # mid-call: a few finals published already (pacing, not synchronisation)
        owners = leases(prefix, iids)
        ids = {w.info["worker_id"]: w for w in workers}
        assert set(owners.values()) <= set(ids), owners
        victim_id = max(ids, key=lambda wid: list(owners.values()).count(wid))
        victims = [iid for iid, wid in owners.items() if wid == victim_id]
        assert victims
        before = {iid: len(hose.finals(iid)) for iid in victims}
        assert all(n >= 1 for n in before.values()), before  # finals were flowing before the kill
        killed_at = time.time()
        ids[victim_id].signal(signal.SIGKILL)
        await calls
        await all_ended(hose, iids, 40)
        for iid in iids:
            check_call(hose, iid, len(frames) * 36.0)
        stats = emulator_stats(emu)
        taken = check_connections(stats, workers, iids, frozenset(victims))
        failover, gaps = [], []
        for iid in victims:
            conns = sorted((c for c in stats["connections"] if c["interaction"] == iid), key=lambda c: c["opened_at"])
            assert len(conns) >= 2, conns  # the victim's, then the successor's (never both open)
            failover.append(conns[1]["opened_at"] - killed_at)
            times = [t for t, m in hose.by_call[iid] if m["type"] == "transcript"]
            after = [t for t in times if t > killed_at]
            last_before = max(t for t in times if t <= killed_at)
            gaps.append(after[0] - last_before)
        print(f"victims {len(victims)}: failover s {sorted(round(f, 3) for f in failover)}, "
              f"feed gap s {sorted(round(g, 3) for g in gaps)}")
        bound = LEASE_MS / 1000 * 1.5 + 1.0  # lease + half a lease (sweep) + a provider handshake
        assert max(failover) <= bound, (failover, bound)
        alive = [w for w in workers if w.proc.poll() is None]
        assert sum(w.metric("rtaa_bus_takeovers_total") for w in alive) == sum(len(w.events("call_taken_over"))
                                                                             for w in alive)
        assert all(taken[iid] >= 1 for iid in victims), taken
        reader.cancel()
        assert call_keys(prefix) == []

    run(main(), 120)


@pytest.mark.parametrize("args, message", [
    (["--role", "worker"], "--role worker needs a shared bus: --bus redis://HOST:PORT/DB"),
    (["--bus", "http://127.0.0.1:6379"], "--bus must be memory or redis://HOST:PORT/DB"),
    (["--bus", "redis://127.0.0.1:6379/x"], "the database must be a number"),
    (["--bus", "redis://127.0.0.1:6379/0", "--bus-prefix", "a b"], "--bus-prefix must be 1-64 characters"),
    (["--bus", "redis://127.0.0.1:6379/0", "--bus-maxlen", "10"], "--bus-maxlen must be >= 100"),
    (["--bus", "redis://127.0.0.1:6379/0", "--lease-ms", "50"], "--lease-ms must be 200-60000"),
    (["--bus", "redis://127.0.0.1:1/0", "--port", "0"], "cannot reach redis at redis://127.0.0.1:1/0"),
])
def test_bad_bus_options_are_one_line_errors(args: list[str], message: str) -> None:
    import subprocess

    from helpers.scaleout import CLI, ENV

    done = subprocess.run(CLI + ["serve", *args], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


async def until_async(predicate, timeout_s: float, what: str, step_s: float = 0.05) -> float:
    """Bounded wait for a condition in another process (Redis, /stats): polled, fails loudly."""
    t0 = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(step_s)
    return time.monotonic() - t0


def test_a_paused_worker_that_lost_its_lease_sends_nothing_when_resumed(deployment) -> None:
    url, prefix, _ = deployment

    async def main() -> None:
        emu, ing, workers = await start_all(deployment, 2)
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(10))  # 12 s of audio, real time
        iids = [f"CA-p{i}" for i in range(4)]
        calls = asyncio.gather(*(call(ing.info["ingest"], iid, frames, 0.036) for iid in iids))
        await asyncio.sleep(3.0)  # mid-call (pacing)
        ids = {w.info["worker_id"]: w for w in workers}
        owners = leases(prefix, iids)
        victim_id = max(ids, key=lambda wid: list(owners.values()).count(wid))
        victim = ids[victim_id]
        victims = [iid for iid, wid in owners.items() if wid == victim_id]
        assert victims
        victim.signal(signal.SIGSTOP)
        stopped_at = time.time()
        # Its calls move to the other worker, which opens their provider streams.
        await until_async(lambda: all(w not in (None, victim_id) for w in leases(prefix, victims).values()), 10,
                          "the paused worker's calls to be taken over")

        def conns(iid: str, stats: dict) -> list[dict]:
            return sorted((c for c in stats["connections"] if c["interaction"] == iid), key=lambda c: c["opened_at"])

        await until_async(lambda: all(len(conns(i, emulator_stats(emu))) == 2 for i in victims), 10,
                          "the successors' provider streams")
        stats = emulator_stats(emu)
        old = {iid: conns(iid, stats)[0] for iid in victims}
        assert all(c["opened_at"] < stopped_at for c in old.values())
        await asyncio.sleep(1.0)  # the successors stream for a while (pacing) before the old owner wakes
        resumed_at = time.time()
        victim.signal(signal.SIGCONT)
        # The old owner must close its (idle) provider streams without sending them anything more.
        await until_async(lambda: all(conns(i, emulator_stats(emu))[0]["closed_at"] for i in victims), 10,
                          "the resumed worker to close its stale provider streams")
        await calls
        await all_ended(hose, iids, 40)
        stats = emulator_stats(emu)
        for iid in victims:
            before, after = old[iid], conns(iid, stats)[0]
            assert after["audio_bytes"] == before["audio_bytes"], (iid, before, after)  # nothing sent once resumed
            assert after["closed_at"] - resumed_at < 2.0, after
            assert len(conns(iid, stats)) == 2, conns(iid, stats)  # the resumed worker did not reopen it
        for iid in iids:
            check_call(hose, iid, len(frames) * 36.0)
        assert victim.metric("rtaa_bus_leases_lost_total") >= len(victims)
        inter = stats["interactions"]
        print(f"paused worker's calls {len(victims)}; max_open per call {[inter[i]['max_open'] for i in victims]} "
              f"(the paused worker's idle socket stays open until it resumes); stale streams closed "
              f"{[round(conns(i, stats)[0]['closed_at'] - resumed_at, 3) for i in victims]} s after SIGCONT")
        reader.cancel()
        assert call_keys(prefix) == []

    run(main(), 120)


def test_feeds_of_any_ingest_and_a_dead_ingests_calls_are_ended(deployment) -> None:
    """Transcripts reach the feeds of an ingest that did not take the call; a call whose ingest is SIGKILLed is
    ended by its worker after --bus-idle-end-s (finals flushed, call_ended, provider stream and keys freed)."""
    url, prefix, procs = deployment

    async def main() -> None:
        emu, ing_a, workers = await start_all(deployment, 1, "--bus-idle-end-s", "3")
        ing_b = ingest(url, prefix)
        procs.append(ing_b)
        await ing_b.ready()
        hose = Firehose()
        reader = hose.start(ing_b.info["transcripts"])  # the other ingest
        await hose.open.wait()
        frames = frames_of(speech_like(3))
        await call(ing_a.info["ingest"], "CA-x1", frames, 0.004)  # a whole call through A
        await all_ended(hose, ["CA-x1"], 20)
        check_call(hose, "CA-x1", len(frames) * 36.0)

        frames = frames_of(speech_like(6, off_s=0.6))
        caller = asyncio.get_running_loop().create_task(call(ing_a.info["ingest"], "CA-x2", frames, 0.036))
        await until_async(lambda: len(hose.finals("CA-x2")) >= 2, 15, "finals of the second call")
        killed_at = time.time()
        ing_a.signal(signal.SIGKILL)
        await asyncio.gather(caller, return_exceptions=True)  # its connection died with A
        await all_ended(hose, ["CA-x2"], 15)
        ended_at = hose.by_call["CA-x2"][-1][0]
        msgs = [m for _, m in hose.by_call["CA-x2"]]
        assert msgs[-1]["reason"].startswith("no audio on the bus for 3"), msgs[-1]
        finals = hose.finals("CA-x2")
        for prev, cur in zip(finals, finals[1:]):  # contiguous, no repeat, up to what A had published
            assert abs(cur["audio_start_ms"] - prev["audio_end_ms"]) <= 1.0, (prev, cur)
        stats = emulator_stats(emu)
        conns = [c for c in stats["connections"] if c["interaction"] == "CA-x2"]
        assert len(conns) == 1 and conns[0]["closed_at"] is not None and conns[0]["close_code"] == 1000, conns
        assert workers[0].metric("rtaa_bus_idle_calls_ended_total") == 1
        print(f"dead ingest's call ended {ended_at - killed_at:.2f} s after the kill (idle limit 3 s)")
        reader.cancel()
        await until_async(lambda: call_keys(prefix) == [], 5, "the call's keys to be deleted")

    run(main(), 90)


def test_redis_restart_health_says_so_callers_get_1011_and_everything_recovers(tmp_path) -> None:
    """A Redis of the test's own (AOF on, so it restarts with its data) is stopped mid-call and started again."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    assert exe, "redis-server is needed for this test"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--appendonly", "yes",
            "--appendfsync", "always", "--save", ""]
    redis_procs: list[subprocess.Popen] = []
    procs: list[Proc] = []

    def start_redis() -> None:
        redis_procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def health(p: Proc) -> tuple[int, dict]:
        status, body, _ = http_get(p.info["health"])
        return status, orjson.loads(body)

    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    async def main() -> None:
        start_redis()
        await until_async(up, 10, "redis-server to start")
        emu = emulator()
        procs.append(emu)
        await emu.ready()
        ing = ingest(url, "rtaa-restart")
        wrk = worker(url, "rtaa-restart", emu.info["url"], "--lease-ms", "1000")
        procs.extend([ing, wrk])
        await asyncio.gather(ing.ready(), wrk.ready())
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(10))
        caller = asyncio.get_running_loop().create_task(call(ing.info["ingest"], "CA-r1", frames, 0.036))
        await until_async(lambda: len(hose.finals("CA-r1")) >= 2, 15, "finals before the outage")
        redis_procs[-1].terminate()  # SIGTERM: Redis exits cleanly, its AOF holds everything it acknowledged
        redis_procs[-1].wait(10)
        down_at = time.monotonic()
        await until_async(lambda: health(ing)[0] == 503 and health(wrk)[0] == 503, 10, "both /health to be 503")
        assert "bus: redis unreachable" in health(ing)[1]["reasons"], health(ing)
        assert "bus: redis unreachable" in health(wrk)[1]["reasons"], health(wrk)
        try:
            await caller
            raise AssertionError("the caller was not closed while the bus was down")
        except ConnectionClosed as exc:
            assert (exc.rcvd.code, exc.rcvd.reason) == (1011, "pipeline unavailable (bus down)"), exc.rcvd
        start_redis()
        await until_async(lambda: health(ing)[0] == 200 and health(wrk)[0] == 200, 20, "both /health back to 200")
        outage_s = time.monotonic() - down_at
        # The interrupted call ends (its END after the resume grace reaches the restored stream) with no repeat.
        await all_ended(hose, ["CA-r1"], 30)
        finals = hose.finals("CA-r1")
        assert finals and abs(finals[0]["audio_start_ms"]) <= 1.0
        for prev, cur in zip(finals, finals[1:]):
            assert abs(cur["audio_start_ms"] - prev["audio_end_ms"]) <= 1.0, (prev, cur)
        # A new call after the restart works end to end.
        frames = frames_of(speech_like(3))
        await call(ing.info["ingest"], "CA-r2", frames, 0.004)
        await all_ended(hose, ["CA-r2"], 20)
        check_call(hose, "CA-r2", len(frames) * 36.0)
        assert ing.metric("rtaa_bus_redis_errors_total") > 0 and wrk.metric("rtaa_bus_redis_errors_total") > 0
        print(f"outage until both healthy {outage_s:.2f} s; interrupted call: {len(finals)} finals up to "
              f"{finals[-1]['audio_end_ms']:.0f} ms, reason {hose.by_call['CA-r1'][-1][1]['reason']!r}")
        reader.cancel()
        r = redis.Redis.from_url(url)
        assert [k for k in r.keys("rtaa-restart:c:*")] == []

    try:
        run(main(), 120)
    finally:
        for p in procs:
            p.stop()
        for rp in redis_procs:
            rp.kill()
            rp.wait(10)


def _emulator_with(*args: str) -> Proc:
    return Proc(["fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live", "--seed", "7", *args],
                "fake-deepgram")


def test_a_worker_falling_behind_is_reported_before_anything_is_trimmed(deployment) -> None:
    """The worker is held back (its provider handshake takes 5 s, so the call's entries pile up in Redis):
    /health says so and rtaa_bus_backlog_entries shows it while the stream is past half its MAXLEN, and
    nothing is trimmed (MAXLEN 200 = 7.2 s of frames)."""
    url, prefix, procs = deployment

    async def main() -> None:
        emu = _emulator_with("--handshake-delay-ms", "5000")
        procs.append(emu)
        await emu.ready()
        ing = ingest(url, prefix, "--bus-maxlen", "200")
        wrk = worker(url, prefix, emu.info["url"], "--bus-maxlen", "200")
        procs.extend([ing, wrk])
        await asyncio.gather(ing.ready(), wrk.ready())
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(6))
        caller = asyncio.get_running_loop().create_task(call(ing.info["ingest"], "CA-slow", frames, 0.036))

        def reported() -> bool:
            status, body, _ = http_get(wrk.info["health"])
            return status == 503 and any("holds" in r for r in orjson.loads(body)["reasons"])

        waited = await until_async(reported, 8, "the worker's /health to report its backlog")
        backlog = wrk.metric("rtaa_bus_backlog_entries")
        assert 100 < backlog <= 200, backlog
        await caller
        await all_ended(hose, ["CA-slow"], 30)
        check_call(hose, "CA-slow", len(frames) * 36.0)  # nothing lost
        assert wrk.metric("rtaa_bus_trimmed_entries_total") == 0
        await until_async(lambda: http_get(wrk.info["health"])[0] == 200, 5, "the worker to report healthy again")
        print(f"backlog reported {waited:.2f} s into the call at {backlog:.0f} of 200 entries; 0 trimmed")
        reader.cancel()

    run(main(), 90)


def test_entries_trimmed_before_a_worker_read_them_are_counted(deployment) -> None:
    """A worker paused for longer than its calls' MAXLEN covers (100 entries = 3.6 s) finds the gap in the
    entries' sequence numbers when it resumes: counted and logged, never silent; the call still ends."""
    url, prefix, procs = deployment

    async def main() -> None:
        emu = emulator()
        procs.append(emu)
        await emu.ready()
        wrk = worker(url, prefix, emu.info["url"], "--bus-maxlen", "100", "--lease-ms", "30000")
        ing2 = ingest(url, prefix, "--bus-maxlen", "100")  # the ingest's XADD MAXLEN is what trims
        procs.extend([wrk, ing2])
        await asyncio.gather(wrk.ready(), ing2.ready())
        hose = Firehose()
        reader = hose.start(ing2.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(12))
        caller = asyncio.get_running_loop().create_task(call(ing2.info["ingest"], "CA-trim", frames, 0.036))
        await until_async(lambda: len(hose.finals("CA-trim")) >= 1, 15, "a first final")
        wrk.signal(signal.SIGSTOP)
        await asyncio.sleep(7.0)  # 7 s of frames (~190 entries) arrive while it is paused
        wrk.signal(signal.SIGCONT)
        await caller
        await all_ended(hose, ["CA-trim"], 30)
        trimmed = wrk.metric("rtaa_bus_trimmed_entries_total")
        assert trimmed > 0
        assert any(b"bus_entries_trimmed" in line for line in wrk.stderr)
        print(f"{trimmed:.0f} entries trimmed while the worker was paused 7 s at MAXLEN ~100: counted and logged")
        reader.cancel()

    run(main(), 90)


def test_sigterm_of_a_worker_hands_its_calls_over_at_once(deployment) -> None:
    """A worker stopped gracefully (SIGTERM, a rolling restart) releases its leases and announces its calls again:
    the others take them at once instead of waiting for the leases to lapse (a long lease here, so a lapse could
    not come before 3/4 of it); it neither retakes them itself nor leaves a stream open; it exits 0."""
    url, prefix, _ = deployment
    lease_ms = 8000

    async def main() -> None:
        emu, ing, workers = await start_all(deployment, 2, lease_ms=lease_ms)
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(8))
        iids = [f"CA-t{i}" for i in range(4)]
        calls = asyncio.gather(*(call(ing.info["ingest"], iid, frames, 0.036) for iid in iids))
        await until_async(lambda: all(leases(prefix, iids).values()) and all(hose.finals(i) for i in iids), 15,
                          "every call owned and transcribing")
        ids = {w.info["worker_id"]: w for w in workers}
        owners = leases(prefix, iids)
        victim_id = max(ids, key=lambda wid: list(owners.values()).count(wid))
        victim = ids[victim_id]
        victims = [iid for iid, wid in owners.items() if wid == victim_id]
        stopped_at = time.time()
        victim.signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.proc.wait, 20)
        assert code == 0, victim.tail()
        await calls
        await all_ended(hose, iids, 40)
        for iid in iids:
            check_call(hose, iid, len(frames) * 36.0)
        stats = emulator_stats(emu)
        check_connections(stats, workers, iids)
        handed = [e["interaction_id"] for e in victim.events("call_dropped") if e["reason"].startswith("handed over")]
        assert sorted(handed) == sorted(victims), victim.events("call_dropped")
        assert not [e for e in victim.events("call_taken_over") if e["interaction_id"] in victims]
        handover = []
        for iid in victims:
            conns = sorted((c for c in stats["connections"] if c["interaction"] == iid), key=lambda c: c["opened_at"])
            assert len(conns) >= 2 and conns[0]["closed_at"] <= conns[1]["opened_at"], conns  # never two open
            handover.append(conns[1]["opened_at"] - stopped_at)
        print(f"SIGTERM hand-over of {len(victims)} calls: successor streams open after "
              f"{sorted(round(h, 3) for h in handover)} s (lease {lease_ms} ms)")
        assert max(handover) < 0.75 * lease_ms / 1000, handover  # released: no wait for a lease to lapse
        reader.cancel()
        assert call_keys(prefix) == []

    run(main(), 120)


def test_sigterm_of_an_ingest_waits_for_its_calls_finals_on_its_feeds(deployment) -> None:
    """An ingest stopped with calls in flight ends them (END on the bus) and keeps its feeds open until the
    workers, in other processes, have finished each call: every final and the call_ended reach its feeds."""
    url, prefix, _ = deployment

    async def main() -> None:
        emu, ing, workers = await start_all(deployment, 1)
        hose = Firehose()
        reader = hose.start(ing.info["transcripts"])
        await hose.open.wait()
        frames = frames_of(speech_like(3, off_s=0.0))  # speech up to the end: only the final flush covers it
        iids = [f"CA-i{i}" for i in range(2)]
        callers = []
        for iid in iids:
            ws = await connect(ing.info["ingest"], proxy=None, compression=None)
            enc = StreamEncoder(f"ST-{iid}", iid)
            await ws.send(enc.connected())
            await ws.send(enc.start())
            for f in frames:
                await ws.send(enc.media(f))
            callers.append(ws)
        await until_async(lambda: ing.metric("rtaa_frames_in_total") >= len(iids) * len(frames), 15,
                          "the ingest to hold every frame")
        ing.signal(signal.SIGTERM)
        for ws in callers:
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (1001, "server shutting down")
        code = await asyncio.to_thread(ing.proc.wait, 30)
        assert code == 0, ing.tail()
        await asyncio.wait_for(reader, 10)  # the ingest closed its feeds after the finals
        for iid in iids:
            msgs = [m for _, m in hose.by_call.get(iid, [])]
            assert msgs and msgs[-1]["type"] == "call_ended" and msgs[-1]["reason"] == "shutdown", \
                [m["type"] for m in msgs]
            assert_tiles(hose.finals(iid), len(frames) * 36.0, tail_ms=40.0)
        await until_async(lambda: call_keys(prefix) == [], 5, "the calls' keys to be deleted")

    run(main(), 90)


def test_the_scale_soak_scenario_runs_ingest_and_workers_on_redis(tmp_path) -> None:
    """scenarios/scale.toml as shipped (shorter calls, 2 workers, this test's Redis): `rtaa soak` starts 1 ingest
    and the workers as separate processes on the Redis bus, every call completes with no duplicate provider
    stream, and nothing of the run is left in Redis."""
    import re
    import subprocess

    from helpers.redisdb import keys
    from helpers.scaleout import CLI, ENV

    text = (SCENARIOS / "scale.toml").read_text()
    text = text.replace("[call]\n", '[call]\nlength = "3s"\n').replace("workers = 3", "workers = 2")
    text = text.replace("[scale]\n", f'[scale]\nredis = "{redis_url()}"\n')
    toml = tmp_path / "scale.toml"
    toml.write_text(text)
    out = tmp_path / "scale.json"
    done = subprocess.run(CLI + ["soak", str(toml), "--quiet", "--users", "4", "--duration", "4s", "--json", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = orjson.loads(out.read_bytes())
    description = doc["run"]["description"]
    assert "1 ingest + 2 workers on Redis" in description, description
    calls = doc["calls"]
    print(f"scale soak: {description}; verdict {doc['verdict']}, calls {calls['started']} started, "
          f"{calls['completed']} completed")
    assert doc["verdict"] == "pass", doc
    assert calls["started"] == calls["completed"] >= 4 and calls["failed"] == 0, calls
    prefix = re.search(r"prefix (\S+)\)", description).group(1)
    assert keys(prefix) == []
