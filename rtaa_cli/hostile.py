"""Hostile Exotel callers: a seeded network fuzz of an ingest, with the documented outcome of each case.

Sans-I/O part: :func:`cases` yields :class:`Case` s, each one connection's messages (a prefix of valid
or tolerated messages, then one poison message) and the close codes the ingest may answer with
(docs/serve.md "Caller input and close codes"). After the poison the case sends a **sentinel** (a
binary frame, always 1003): a poison the ingest accepted is seen as the sentinel's close, never as a
silent pass. The I/O shell :func:`attack` plays cases against a URL and returns an :class:`Outcome`.
Used by tests/pipeline/test_pipeline_fuzz.py (10^4 messages in CI) and bench/bench_fuzz.py (10^5).
"""
from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rtaa_cli.protocols.exotel import StreamEncoder

SENTINEL = b"\x00sentinel"
SENTINEL_REASON = "binary frames are not Exotel messages"
ACCEPTED = "accepted"  # the outcome name of a poison the ingest tolerated (the sentinel closed it)
FRAME = b"\x01\x00" * 288  # 36 ms at 8 kHz


@dataclass
class Case:
    kind: str
    messages: list[str | bytes]  # bytes: a text frame that is not UTF-8 (SENTINEL, sent last, is binary)
    expect: frozenset[str]  # outcome names: "1007", "1008", ..., ACCEPTED, "dropped"
    drop: bool = False  # abort the TCP connection after the messages instead of waiting for a close


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()


def _noise(rng: random.Random, enc: StreamEncoder, n: int) -> list[str]:
    """Valid or tolerated messages after a start: media, dtmf, mark, unknown events."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            out.append(enc.media(FRAME))
        elif r < 0.65:
            out.append(enc.dtmf(rng.choice("0123456789*#")))
        elif r < 0.8:
            out.append(enc.mark(f"m{rng.randrange(1000)}"))
        else:
            out.append(_json({"event": rng.choice(["clear", "future_event", "x" * rng.randrange(1, 40)]),
                              "stream_sid": enc.stream_sid, "n": rng.randrange(1 << 62)}))
    return out


def _mutate(rng: random.Random, text: str) -> str:
    op = rng.randrange(4)
    if op == 0:  # truncated
        return text[: rng.randrange(1, len(text))]
    if op == 1:  # one character replaced by anything (ASCII, Latin-1, astral, control)
        i = rng.randrange(len(text))
        ch = chr(rng.choice([rng.randrange(32, 127), rng.randrange(128, 256), 0x1F600, 0, 10]))
        return text[:i] + ch + text[i + 1:]
    obj = orjson.loads(text)
    media = obj["media"]
    if op == 2:  # a field of the wrong type
        media[rng.choice(list(media))] = rng.choice([None, 1e308, -1, [], {}, True, "x" * 300])
    else:  # a field missing
        media.pop(rng.choice(list(media)))
    return _json(obj)


# kind -> (expected outcomes, weight); the weights keep ~10^4 messages to a few hundred connections
_KINDS: dict[str, tuple[frozenset[str], float]] = {
    "malformed_json": (frozenset({"1007"}), 1.0),
    "bad_base64": (frozenset({"1007"}), 1.0),
    "odd_length_audio": (frozenset({"1007"}), 1.0),
    "media_before_start": (frozenset({"1008"}), 1.0),
    "binary_frame": (frozenset({"1003"}), 1.0),
    "bad_sample_rate": (frozenset({"1007"}), 1.0),
    "duplicate_start": (frozenset({"1008"}), 1.0),
    "media_after_stop": (frozenset({"1008"}), 1.0),
    "invalid_utf8": (frozenset({"1007"}), 1.0),
    "long_interaction_id": (frozenset({"1007"}), 0.5),
    "garbage_only": (frozenset({"1003"}), 0.5),
    "oversize": (frozenset({"1009"}), 0.1),
    "rate_flood": (frozenset({"1008"}), 0.1),
    "empty_payload": (frozenset({ACCEPTED}), 0.5),  # counted and dropped, never forwarded, never closed
    "mutated": (frozenset({"1007", ACCEPTED}), 4.0),  # may stay valid (e.g. a base64 letter changed)
    "dropped": (frozenset({"dropped"}), 0.5),  # TCP abort mid-call: the call must end by itself
}
KINDS = tuple(_KINDS)


def cases(seed: int, n: int, *, rate_flood: int = 450, oversize_bytes: int = 300_000,
          garbage_limit: int = 50) -> Iterator[Case]:
    """``n`` seeded cases (the same seed gives the same messages). ``rate_flood`` must exceed the
    ingest's message burst, ``oversize_bytes`` its ``--max-message-bytes``."""
    rng = random.Random(seed)
    weights = [_KINDS[k][1] for k in KINDS]
    for i in range(n):
        kind = rng.choices(KINDS, weights)[0]
        enc = StreamEncoder(f"FZS-{seed}-{i}", f"FZ-{seed}-{i}")
        head: list[str | bytes] = [enc.connected(), enc.start()]
        body = _noise(rng, enc, rng.randrange(0, 20))
        msgs: list[str | bytes]
        if kind == "malformed_json":
            msgs = head + body + [enc.media(FRAME)[: rng.randrange(1, 60)]]
        elif kind == "bad_base64":
            msgs = head + body + [enc.media_b64("!!!not*base64!!!", 12)]
        elif kind == "odd_length_audio":
            msgs = head + body + [enc.media_b64(base64.b64encode(b"\x01\x02\x03").decode(), 3)]
        elif kind == "media_before_start":
            msgs = [enc.connected(), enc.media(FRAME)]
        elif kind == "binary_frame":
            msgs = head + body  # the sentinel itself is the poison
        elif kind == "bad_sample_rate":
            bad = StreamEncoder(enc.stream_sid, enc.call_sid, sample_rate=rng.choice([11025, 44100, 7999]))
            msgs = [enc.connected(), bad.start()]
        elif kind == "duplicate_start":
            msgs = head + body + [enc.start()]
        elif kind == "media_after_stop":
            msgs = head + body + [enc.stop(), enc.media(FRAME)]
        elif kind == "invalid_utf8":
            msgs = head + body + [b'{"event": "media", "x": "\xff\xfe\xfd"}']
        elif kind == "long_interaction_id":
            msgs = [enc.connected(), StreamEncoder(enc.stream_sid, "C" * rng.randrange(129, 2000)).start()]
        elif kind == "garbage_only":
            msgs = [_json({"event": f"junk{k}"}) for k in range(garbage_limit)]
        elif kind == "oversize":
            msgs = head + [enc.media(b"\x00" * oversize_bytes)]
        elif kind == "rate_flood":
            msgs = head + [_json({"event": "future_event", "k": k}) for k in range(rate_flood)]
        elif kind == "empty_payload":
            msgs = head + body + [enc.media_b64("", 0)]
        elif kind == "mutated":
            msgs = head + body + [_mutate(rng, enc.media(FRAME))]
        else:  # dropped
            msgs = head + body + [enc.media(FRAME)]
        yield Case(kind, msgs, _KINDS[kind][0], drop=kind == "dropped")


def valid_cases(n: int, messages_each: int) -> Iterator[Case]:
    """Well-behaved connections (start, media, stop; the sentinel ends them): a baseline for the fuzz."""
    for i in range(n):
        enc = StreamEncoder(f"OKS-{i}", f"OK-{i}")
        msgs: list[str | bytes] = [enc.connected(), enc.start()]
        msgs += [enc.media(FRAME) for _ in range(max(0, messages_each - 3))] + [enc.stop()]
        yield Case("valid", msgs, frozenset({ACCEPTED}))


@dataclass
class Outcome:
    connections: int = 0
    messages: int = 0
    by_outcome: Counter = field(default_factory=Counter)  # outcome name -> connections
    by_kind: dict[str, Counter] = field(default_factory=dict)
    unexpected: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, outcome, reason): a sample
    unexpected_count: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"connections": self.connections, "messages": self.messages, "seconds": round(self.seconds, 3),
                "by_outcome": dict(self.by_outcome), "by_kind": {k: dict(v) for k, v in self.by_kind.items()},
                "unexpected_count": self.unexpected_count, "unexpected": self.unexpected}


async def _play(url: str, case: Case, close_timeout_s: float) -> tuple[str, str, int]:
    """(outcome, reason, messages sent). A server that neither closes nor answers is a ``hang``."""
    sent = 0
    ws = await connect(url, proxy=None, compression=None, max_size=None, open_timeout=10)
    try:
        for m in case.messages + ([] if case.drop else [SENTINEL]):
            # bytes are sent as text frames (invalid UTF-8), except the sentinel (a binary frame)
            await ws.send(m, text=(m is not SENTINEL) if isinstance(m, bytes) else None)
            sent += 1
        if case.drop:
            ws.transport.abort()
            return "dropped", "", sent
    except ConnectionClosed:
        pass  # closed by the server before the last message: its close frame says why
    try:
        async with asyncio.timeout(close_timeout_s):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    except TimeoutError:
        ws.transport.abort()
        return "hang", f"no close within {close_timeout_s} s", sent
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        return "no_close_frame", "", sent
    if rcvd.code == 1003 and rcvd.reason == SENTINEL_REASON and case.kind != "binary_frame":
        return ACCEPTED, "", sent
    return str(rcvd.code), rcvd.reason, sent


async def attack(url: str, case_list: list[Case], *, concurrency: int = 16,
                 close_timeout_s: float = 10.0) -> Outcome:
    """Play every case against ``url``, ``concurrency`` connections at a time."""
    out = Outcome()
    queue = iter(case_list)
    t0 = time.perf_counter()

    async def one_worker() -> None:
        for case in queue:
            try:
                name, reason, sent = await _play(url, case, close_timeout_s)
            except (OSError, TimeoutError, InvalidHandshake) as exc:  # the handshake itself failed
                name, reason, sent = "handshake_failed", str(exc)[:120], 0
            out.connections += 1
            out.messages += sent
            out.by_outcome[name] += 1
            out.by_kind.setdefault(case.kind, Counter())[name] += 1
            if name not in case.expect:
                out.unexpected_count += 1
                if len(out.unexpected) < 20:
                    out.unexpected.append((case.kind, name, reason))

    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - t0
    return out
