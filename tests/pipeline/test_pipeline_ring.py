"""The replay buffer's ring (rtaa_cli/pipeline/ring.py) and the call timeline on top of it, driven directly:
wrap-around, the bound, reads from any position, and its memory (pages handed back behind a final, the
mapping gone at close), read from the kernel's own accounting in /proc/self/smaps."""
from __future__ import annotations

import ctypes
import random

from rtaa_cli.pipeline.ring import PAGE, ByteRing
from rtaa_cli.pipeline.timeline import CallTimeline


def _stream(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_ring_holds_exactly_the_newest_capacity_bytes_across_every_wrap() -> None:
    data = _stream(50_000)
    ring = ByteRing(1000)
    pos = 0
    dropped = 0
    sizes = [1, 7, 576, 999, 1000, 3, 1500, 250]  # shorter, equal to and longer than the capacity
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        i += 1
        chunk = data[pos:pos + n]
        dropped += ring.append(chunk)
        pos += len(chunk)
        assert (ring.start, ring.end) == (max(0, pos - 1000), pos)
        assert dropped == ring.start  # every byte given up is reported once
        assert ring.read(ring.start) == data[ring.start:pos]
        for at in (ring.start + 1, pos - 577, pos - 1, pos):  # any position, clamped to what is held
            assert ring.read(at) == data[max(at, ring.start):pos]
    assert ring.read(0) == data[-1000:]  # older than the ring: from the oldest byte held


def test_discard_moves_the_start_and_never_past_the_end() -> None:
    data = _stream(5000, seed=2)
    ring = ByteRing(3000)
    ring.append(data[:2500])
    ring.discard_to(1200)
    assert (ring.start, len(ring)) == (1200, 1300) and ring.read(0) == data[1200:2500]
    ring.discard_to(100)  # an older position never moves it back
    assert ring.start == 1200
    ring.append(data[2500:])  # wraps: holds 1200..5000 minus what the bound drops
    assert ring.start == 2000 and ring.read(0) == data[2000:5000]
    ring.discard_to(10**9)
    assert (ring.start, ring.end, ring.read(0)) == (5000, 5000, b"")
    ring.reset(12_345)  # a call resumed at a stream position from another worker
    ring.append(b"ab")
    assert (ring.start, ring.end, ring.read(12_345)) == (12_345, 12_347, b"ab")


def _rss_kb(ring: ByteRing) -> int | None:
    """Resident kB of the ring's mapping (None when no mapping holds its address any more)."""
    addr = ctypes.addressof(ctypes.c_char.from_buffer(ring._mem)) if ring._mem is not None else _rss_kb.last
    _rss_kb.last = addr
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    return None


_rss_kb.last = 0


def test_pages_behind_a_final_go_back_to_the_kernel_and_close_unmaps() -> None:
    cap = 64 * PAGE
    ring = ByteRing(cap)
    assert ring._mem is None  # nothing mapped before the first write
    ring.append(b"\x01" * (cap // 2))
    half = _rss_kb(ring)
    assert half is not None and half >= cap // 2 // 1024  # written pages are resident
    ring.discard_to(ring.end - 100)  # a final covered all but the last 100 bytes
    after = _rss_kb(ring)
    assert after is not None and after <= half - (cap // 2 - 2 * PAGE) // 1024, (half, after)
    assert ring.read(0) == b"\x01" * 100  # the live bytes survived next to the released pages
    ring.append(b"\x02" * cap)  # a full ring after the release: rewritten pages hold the new bytes
    assert ring.read(0) == b"\x02" * cap
    ring.close()
    assert ring._mem is None and len(ring) == 0 and ring.read(0) == b""
    assert _rss_kb(ring) is None  # the mapping is gone from the process


def test_timeline_replay_is_the_ring_and_its_latency_window_wraps() -> None:
    tl = CallTimeline(8000, replay_limit_s=1.0, latency_window=8)  # 16000 bytes of replay
    frames = [bytes([i]) * 576 for i in range(100)]
    for i, f in enumerate(frames):
        assert tl.append(f, received_at=float(i)) == 576 * (i + 1)
    start, audio = tl.unfinalized()
    assert start == 57600 - 16000 and audio == b"".join(frames)[start:]  # exactly the bound, no slack
    assert tl.trimmed_bytes == start
    assert tl.since(57600 - 576) == frames[-1]
    # latency window of 8 frames, wrapped many times: the frame holding a position, oldest excluded
    ms = lambda pos: pos / 16.0  # noqa: E731
    assert tl.received_at(ms(576 * 99 + 10)) == 99.0
    assert tl.received_at(ms(576 * 94 + 10)) == 94.0
    assert tl.received_at(ms(576 * 92 + 10)) is None  # older than the 8 frames kept
    assert tl.received_at(ms(57600 + 100)) is None  # not received yet
    tl.on_final(ms(57600 - 1000))
    assert tl.unfinalized() == (57600 - 1000, b"".join(frames)[-1000:])
    tl.close()
    assert tl.unfinalized()[1] == b""
