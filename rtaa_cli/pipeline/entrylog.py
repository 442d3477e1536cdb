"""Sans-I/O: which Redis stream entries of one call a worker has consumed, in stream audio time, so the
call's checkpoint says exactly where a successor resumes (docs/scale-out.md "Takeover").

Audio entries cover ``[start, end)`` bytes of stream audio time (the worker timeline's positions, which
restart at 0 with each new call of the same interaction id, i.e. after an END). A final result that
covers audio up to ``final_end`` acknowledges every entry before it; the checkpoint is then "read after
``after``, drop the first ``skip`` bytes of entry ``first``", so the successor sends the provider exactly
the audio no published final covers: no final is lost and none is repeated.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

START, AUDIO, END = 0, 1, 2


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def before(entry_id: str) -> str:
    """The id just before ``entry_id``: XREAD after it returns ``entry_id`` itself."""
    ms, seq = parse_id(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0-0"


@dataclass(frozen=True)
class Checkpoint:
    after: str  # XREAD after this id
    first: str  # the first entry read then ("" if none is known yet)
    skip: int  # bytes of ``first`` already covered by a final (audio entries only)
    position: int  # stream audio time of the first byte the successor sends
    n: int  # expected ingest sequence number of ``first`` (trim detection); -1 unknown


class EntryLog:
    __slots__ = ("position", "last_id", "last_n", "_q")

    def __init__(self, position: int = 0, last_id: str = "0-0", last_n: int = -1) -> None:
        self.position = position
        self.last_id = last_id
        self.last_n = last_n
        self._q: deque[tuple[str, int, int, int, int]] = deque()  # (id, kind, start, end, n)

    def add(self, entry_id: str, kind: int, nbytes: int, n: int) -> None:
        start = self.position
        self.position += nbytes
        self._q.append((entry_id, kind, start, self.position, n))
        self.last_id = entry_id
        self.last_n = n
        if kind == END:
            self.position = 0  # what follows belongs to the next call of this id

    def __len__(self) -> int:
        return len(self._q)

    def acked(self, final_end: int) -> Checkpoint:
        """Audio up to ``final_end`` is covered by published finals (of the call before the first END)."""
        q = self._q
        while q:
            _, kind, start, end, _ = q[0]
            if (kind == AUDIO and end <= final_end) or (kind == START and start < final_end):
                q.popleft()
            else:
                break
        return self._checkpoint(final_end)

    def ended(self) -> Checkpoint:
        """The call before the first END finished (call_ended published): everything up to that END is done."""
        q = self._q
        while q:
            kind = q.popleft()[1]
            if kind == END:
                break
        return self._checkpoint(0)

    def _checkpoint(self, final_end: int) -> Checkpoint:
        if not self._q:
            return Checkpoint(self.last_id, "", 0, self.position, self.last_n + 1 if self.last_n >= 0 else -1)
        entry_id, kind, start, _, n = self._q[0]
        skip = max(0, final_end - start) if kind == AUDIO else 0
        return Checkpoint(before(entry_id), entry_id, skip, start + skip, n)
