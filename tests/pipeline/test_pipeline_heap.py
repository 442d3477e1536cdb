"""After calls end the worker hands glibc's free heap back to the kernel (rtaa_cli/pipeline/heap.py): the
memory soak's RSS growth was free memory glibc kept (BENCHMARKS.md). Trims are rate-limited, off the loop."""
from __future__ import annotations


import pytest
from helpers.pipeline import run, until

from rtaa_cli.pipeline.heap import HeapTrimmer, malloc_trim

pytestmark = pytest.mark.skipif(malloc_trim is None, reason="glibc's malloc_trim is not available")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_calls_ending_together_share_one_trim_per_interval() -> None:
    async def main() -> list[int]:
        heap = HeapTrimmer(0.3)
        seen = []
        heap.call_ended()  # the first call end trims at once
        seen.append(heap.trims)
        for _ in range(20):  # a burst of call ends inside the interval: one trim, later
            heap.call_ended()
        seen.append(heap.trims)
        await until(lambda: heap.trims == 2, 10, "the deferred trim")
        await heap._running
        heap.call_ended()  # right after a trim: deferred again, not a third one now
        seen.append(heap.trims)
        heap.close()  # shutdown cancels the pending trim
        seen.append(heap.trims)
        return seen

    assert run(main(), 20) == [1, 1, 2, 2]


def test_a_trim_returns_freed_heap_memory_to_the_kernel() -> None:
    """Blocks between glibc's mmap threshold and its top leave free holes that only malloc_trim returns."""
    async def main() -> tuple[int, int]:
        keep, blocks = [], [bytearray(20_000 + (i % 7) * 3000) for i in range(1500)]  # ~40 MB of heap blocks
        keep = blocks[::25]  # a few survivors pin the heap's top: free() alone cannot shrink it
        del blocks
        before = _rss_kb()
        heap = HeapTrimmer(10.0)
        heap.call_ended()
        await heap._running
        after = _rss_kb()
        assert keep
        return before, after

    before, after = run(main(), 20)
    assert before - after >= 10_000, (before, after)  # most of the ~40 MB of freed blocks went back
