"""Scale-out on Redis Streams with real processes (docs/scale-out.md): one ingest, three workers, the emulator
as its own process, callers and feed readers here. Checks what the issue asks: every call gets its finals,
never two provider streams of one call open at once, a SIGKILLed worker's calls are taken over within a
measured bound with no lost and no repeated final, and a paused (SIGSTOP) worker sends nothing once resumed."""
from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from redis_support import call_keys, delete, new_prefix, redis_url
from rtaa_cli.exotel import StreamEncoder
from scaleout_support import Proc, emulator, ingest, worker
from test_pipeline_support import assert_tiles, frames_of, http_get, run, speech_like

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
        delete(prefix)


async def start_all(deployment, workers: int, *worker_args: str) -> tuple[Proc, Proc, list[Proc]]:
    url, prefix, procs = deployment
    emu = emulator()
    procs.append(emu)
    await emu.ready()
    ing = ingest(url, prefix)
    procs.append(ing)
    ws = [worker(url, prefix, emu.info["url"], "--lease-ms", str(LEASE_MS), *worker_args) for _ in range(workers)]
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
        stats = emulator_stats(emu)["interactions"]
        overlapping = {iid: stats[iid] for iid in iids if stats[iid]["max_open"] != 1 or stats[iid]["duplicates"]}
        assert overlapping == {}
        assert all(stats[iid]["connections"] == 1 for iid in iids)
        per_worker = [w.metric("rtaa_calls_total") for w in workers]
        assert sum(per_worker) == N_CALLS and all(n > 0 for n in per_worker), per_worker  # shared out
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
        inter = stats["interactions"]
        assert all(inter[iid]["max_open"] == 1 and inter[iid]["duplicates"] == 0 for iid in iids), \
            {iid: inter[iid] for iid in iids}
        failover, gaps = [], []
        for iid in victims:
            conns = sorted((c for c in stats["connections"] if c["interaction"] == iid), key=lambda c: c["opened_at"])
            assert len(conns) == 2, conns  # the victim's, then the successor's (never both open)
            failover.append(conns[1]["opened_at"] - killed_at)
            times = [t for t, m in hose.by_call[iid] if m["type"] == "transcript"]
            after = [t for t in times if t > killed_at]
            last_before = max(t for t in times if t <= killed_at)
            gaps.append(after[0] - last_before)
        print(f"victims {len(victims)}: failover s {sorted(round(f, 3) for f in failover)}, "
              f"feed gap s {sorted(round(g, 3) for g in gaps)}")
        bound = LEASE_MS / 1000 * 1.5 + 1.0  # lease + half a lease (sweep) + a provider handshake
        assert max(failover) <= bound, (failover, bound)
        assert sum(w.metric("rtaa_bus_takeovers_total") for w in workers if w.proc.poll() is None) == len(victims)
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

    from scaleout_support import CLI, ENV

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
