"""Sans-I/O: which Redis stream entries of one call a worker has consumed, in stream audio time, so the
call's checkpoint says exactly where a successor resumes (docs/scale-out.md "Takeover").

Audio entries cover ``[start, end)`` bytes of stream audio time (the worker timeline's positions, which
restart at 0 with each new call of the same interaction id, i.e. after an END). A final result that
covers audio up to ``final_end`` acknowledges every entry before it; the checkpoint is then "read after
``after``, drop the first ``skip`` bytes of entry ``first``", so the successor sends the provider exactly
the audio no published final covers: no final is lost and none is repeated.

Each START names the ingest process it came from (its origin): from there on, entries of any other
origin are a superseded ingest's (docs/scale-out.md "Several ingests") and are skipped, not logged. The
checkpoint keeps the origin in effect where the successor resumes, so it skips the same entries.
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
    origin: bytes  # the ingest whose entries count at ``after`` (b"": not known, every entry counts)


class EntryLog:
    __slots__ = ("position", "last_id", "last_n", "origin", "_origin_at_head", "_q")

    def __init__(self, position: int = 0, last_id: str = "0-0", last_n: int = -1, origin: bytes = b"") -> None:
        self.position = position
        self.last_id = last_id
        self.last_n = last_n
        self.origin = origin  # the ingest whose entries count now (set by each START)
        self._origin_at_head = origin  # ... and just before the oldest queued entry
        self._q: deque[tuple[str, int, int, int, int, bytes]] = deque()  # (id, kind, start, end, n, origin)

    def counts(self, kind: int, origin: bytes) -> bool:
        """Whether an entry belongs to the call: a START always (it makes its ingest the current one),
        anything else only from the current ingest."""
        return kind == START or not self.origin or origin == self.origin

    def add(self, entry_id: str, kind: int, nbytes: int, n: int, origin: bytes = b"") -> None:
        start = self.position
        self.position += nbytes
        if kind == START:
            self.origin = origin
        self._q.append((entry_id, kind, start, self.position, n, self.origin))
        self.last_id = entry_id
        self.last_n = n
        if kind == END:
            self.position = 0  # what follows belongs to the next call of this id

    def skip(self, entry_id: str) -> None:
        """An entry that does not count (:meth:`counts`): read past it, nothing else."""
        self.last_id = entry_id

    def __len__(self) -> int:
        return len(self._q)

    def acked(self, final_end: int) -> Checkpoint:
        """Audio up to ``final_end`` is covered by published finals (of the call before the first END)."""
        q = self._q
        while q:
            _, kind, start, end, _, origin = q[0]
            if (kind == AUDIO and end <= final_end) or (kind == START and start < final_end):
                q.popleft()
                self._origin_at_head = origin
            else:
                break
        return self._checkpoint(final_end)

    def ended(self) -> Checkpoint:
        """The call before the first END finished (call_ended published): everything up to that END is done."""
        q = self._q
        while q:
            _, kind, _, _, _, self._origin_at_head = q.popleft()
            if kind == END:
                break
        return self._checkpoint(0)

    def _checkpoint(self, final_end: int) -> Checkpoint:
        if not self._q:
            return Checkpoint(self.last_id, "", 0, self.position, self.last_n + 1 if self.last_n >= 0 else -1,
                              self.origin)
        entry_id, kind, start, _, n, _ = self._q[0]
        skip = max(0, final_end - start) if kind == AUDIO else 0
        return Checkpoint(before(entry_id), entry_id, skip, start + skip, n, self._origin_at_head)
