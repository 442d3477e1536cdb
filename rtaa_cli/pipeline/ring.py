"""Fixed-capacity byte ring addressed by stream position: the replay buffer of one call (sans-I/O).

Why not a ``bytearray`` (what it replaced): appending to one and cutting its front reallocates it as it
grows, and a call's buffer (240 KB at the 15 s default) is above glibc's mmap threshold only until the
first one is freed; glibc then raises the threshold and serves the next ones from its heap, which it keeps
after the calls end (the 30-minute memory soak's growth). Here the storage is one anonymous mapping of the
capacity per call, made on the first write and written in place modulo the capacity (no copy, no
allocation per frame): pages never written cost nothing, pages behind a final are handed back to the
kernel (``MADV_DONTNEED``, so a call whose finals keep up holds only its unfinalised audio), and
:meth:`close` unmaps it at once.
"""
from __future__ import annotations

import mmap

PAGE = mmap.PAGESIZE


class ByteRing:
    """The newest ``capacity`` bytes of a stream: positions ``[start, end)`` are held, older ones dropped."""

    __slots__ = ("capacity", "start", "end", "_mem")

    def __init__(self, capacity: int, position: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 byte")
        self.capacity = capacity
        self.start = self.end = position
        self._mem: mmap.mmap | None = None

    def __len__(self) -> int:
        return self.end - self.start

    def reset(self, position: int) -> None:
        """Hold nothing, the next byte being stream position ``position``."""
        self.start = self.end = position

    def append(self, data: bytes) -> int:
        """Add ``data`` at ``end``; returns how many of the oldest bytes were dropped to make room."""
        n = len(data)
        if not n:
            return 0
        cap = self.capacity
        mem = self._mem
        if mem is None:
            mem = self._mem = mmap.mmap(-1, cap)
        end = self.end + n
        src: bytes | memoryview = data
        if n > cap:  # only the newest ``cap`` bytes can be held
            src = memoryview(data)[n - cap:]
            n = cap
        off = (end - n) % cap
        if off + n <= cap:
            mem[off:off + n] = src
        else:  # wraps around
            first = cap - off
            view = memoryview(src)
            mem[off:cap] = view[:first]
            mem[0:n - first] = view[first:]
        self.end = end
        over = end - self.start - cap
        if over > 0:
            self.start += over
            return over
        return 0

    def read(self, pos: int) -> bytes:
        """The held bytes from stream position ``pos`` (clamped to ``start``) to ``end``."""
        pos = max(pos, self.start)
        n = self.end - pos
        mem = self._mem
        if n <= 0 or mem is None:
            return b""
        cap = self.capacity
        off = pos % cap
        if off + n <= cap:
            return mem[off:off + n]
        return mem[off:cap] + mem[0:n - (cap - off)]

    def discard_to(self, pos: int) -> None:
        """Bytes before ``pos`` are no longer needed; the whole pages they filled go back to the kernel."""
        pos = min(pos, self.end)
        old = self.start
        if pos <= old:
            return
        self.start = pos
        mem = self._mem
        if mem is None or pos - old < PAGE:
            return
        cap = self.capacity
        a, b = old % cap, pos % cap
        pieces = ((a, b),) if a < b else ((a, cap), (0, b))  # a == b: the whole ring was discarded
        for lo, hi in pieces:
            lo = -(-lo // PAGE) * PAGE  # whole pages only: the partial ones at the ends hold live bytes
            hi = hi // PAGE * PAGE
            if hi > lo:
                mem.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        """Unmap the storage now (not at garbage collection); the ring then holds nothing."""
        mem, self._mem = self._mem, None
        if mem is not None:
            mem.close()
        self.start = self.end
