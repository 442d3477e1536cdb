"""Audio watermark in the least significant bit of 16-bit PCM (sans-I/O, numpy).

Why: a pipeline that sends Deepgram no ``tag=``/``extra=`` leaves the provider no way to tell which
call a connection carries. The callers rtaa runs write a repeating code into the LSB of every sample
(about -90 dBFS); the emulator decodes it from whatever bytes each connection receives.

The code: back-to-back *packets* of :data:`PACKET_BITS` (96) samples, one bit per sample, packet
``n`` covering samples ``96 n .. 96 n + 95`` of the call's audio:

    sync (16 bits, fixed) | call id (32) | sequence n (32) | CRC-16 of id + sequence (16)

with the last 80 bits XOR-ed with a fixed pseudo-random pattern (whitening) so that constant or
simple periodic LSBs (digital silence, DC, low-level tones) can never look like a packet.

Decoding (:class:`Decoder`) is a byte stream in, any chunking (odd byte boundaries included): it
searches for the sync pattern, checks the CRC, and *locks* only on two consecutive packets
(adjacent positions, same call id, sequence + 1), so a false lock needs two 32-bit coincidences
(sync + CRC) in adjacent places. Locked, it only checks the packets at the expected positions
(cheap); a packet that fails (a dropped or replayed chunk shifted the phase, another call's audio)
sends it back to searching. Per call id found it reports packets seen, sequence numbers missing
(gaps between the first and last seen) and seen more than once (replays).

Limits: the bits must arrive unchanged. Resampling, gain, mixing, transcoding (mu-law, Opus) or
dithering destroy the mark; the decoder then finds nothing (never a wrong call). For those, the
marker also adds the robust mark of rtaa_cli/robustmark.py (call attribution only).
"""
from __future__ import annotations

import binascii
import bisect
import hashlib
from dataclasses import dataclass, field

import numpy as np

from rtaa_cli import robustmark

PACKET_BITS = 96
SYNC = 0xB4E3  # no period <= 8 (checked by the tests): periodic LSBs cannot match it
SYNC_BITS = 16
_DATA_BITS = 64  # call id + sequence
MAX_RUNS = 4096  # distinct seen-sequence ranges kept per call id (memory bound for hostile input)
MAX_CALLS = 16  # call ids tracked per stream

_SHIFTS64 = np.arange(63, -1, -1, dtype=np.uint64)
_SYNC_ARR = ((SYNC >> np.arange(15, -1, -1)) & 1).astype(np.uint8)
_WHITEN = np.random.default_rng(0x7274_6161).integers(0, 2, PACKET_BITS - SYNC_BITS, dtype=np.uint8)
_WHITEN_INT = int("".join(map(str, _WHITEN)), 2)  # the same 80 bits as an integer
_POW16_REV = (1 << np.arange(16)).astype(np.int64)  # convolve flips it: bit j of a window weighs 2^(15-j)
# Duty cycle while no mark is found (unmarked audio must stay cheap for the emulator): search every
# sample of the first FULL_SEARCH samples (from the start, and after each loss of lock), then one
# window in which a whole packet pair starts every SPARSE_PERIOD samples.
FULL_SEARCH = 16000  # 2 s at 8 kHz
SPARSE_PERIOD = 8000
_SPARSE_WINDOW = PACKET_BITS


def call_id(call_sid: str) -> int:
    """The 32-bit identifier a call's packets carry (a hash of its call_sid)."""
    return int.from_bytes(hashlib.blake2b(call_sid.encode(), digest_size=4).digest(), "big")


def call_hex(call_sid: str) -> str:
    """:func:`call_id` as the 8-digit hex the emulator reports."""
    return f"{call_id(call_sid):08x}"


def _crc(data8: bytes) -> int:
    return binascii.crc_hqx(data8, 0xFFFF)


def _crc_matrix() -> tuple[np.ndarray, np.ndarray]:
    """CRC-16 over 64 bits is affine over GF(2): crc(x) = A x + c. Vectorised checks use (A, c)."""
    c = _crc(bytes(8))
    rows = []
    for i in range(_DATA_BITS):
        v = _crc((1 << (63 - i)).to_bytes(8, "big")) ^ c
        rows.append([(v >> (15 - j)) & 1 for j in range(16)])
    return np.array(rows, dtype=np.int32), np.array([(c >> (15 - j)) & 1 for j in range(16)], dtype=np.int32)


_CRC_A, _CRC_C = _crc_matrix()


def packet_int(cid: int, seq: int) -> int:
    """Packet ``seq`` of call ``cid`` as a 96-bit integer (most significant bit first in time)."""
    data = ((cid & 0xFFFFFFFF) << 32) | (seq & 0xFFFFFFFF)
    body = ((data << 16) | _crc(data.to_bytes(8, "big"))) ^ _WHITEN_INT
    return (SYNC << 80) | body


_M96 = (1 << PACKET_BITS) - 1
_M80 = (1 << 80) - 1


def _parse(pkt: int, cid: int) -> int | None:
    """The sequence of 96-bit packet ``pkt`` if it is a valid packet of call ``cid``, else None."""
    if pkt >> 80 != SYNC:
        return None
    body = (pkt & _M80) ^ _WHITEN_INT
    data = body >> 16
    if data >> 32 != cid or _crc(data.to_bytes(8, "big")) != body & 0xFFFF:
        return None
    return data & 0xFFFFFFFF


class Marker:
    """Marks one call's audio: ``mark(pcm, sample_offset)`` for PCM starting at that sample of the
    call (frames may be any size; each call has its own marker, the audio may be shared).

    With ``robust`` (default: robustmark.DEFAULT_ON) the low-level spread-spectrum mark of :mod:`rtaa_cli.robustmark` is
    added first (it survives resampling and gain; the LSB code then carries the frame sequence)."""

    __slots__ = ("cid", "robust")

    def __init__(self, call_sid: str, robust: bool = robustmark.DEFAULT_ON, sample_rate: int = 8000) -> None:
        self.cid = call_id(call_sid)
        self.robust = robustmark.mark_period(self.cid, rate=sample_rate) if robust else None

    def bits(self, start: int, n: int) -> np.ndarray:
        first, last = start // PACKET_BITS, (start + n - 1) // PACKET_BITS
        raw = b"".join(packet_int(self.cid, s).to_bytes(12, "big") for s in range(first, last + 1))
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        off = start - first * PACKET_BITS
        return bits[off:off + n]

    def mark(self, pcm: bytes, sample_offset: int) -> bytes:
        """``pcm`` (s16le mono) with its LSBs replaced by the code at ``sample_offset``."""
        n = len(pcm) // 2
        if n == 0:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2", count=n)
        if self.robust is not None:
            samples = robustmark.add_mark(samples, self.robust, sample_offset)
        out = (samples & np.int16(-2)) | self.bits(sample_offset, n).astype(np.int16)
        return out.astype("<i2", copy=False).tobytes() + pcm[2 * n:]

    def mark_frames(self, frames: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
        out, offset = [], 0
        for f in frames:
            out.append(self.mark(f, offset))
            offset += len(f) // 2
        return out


@dataclass
class CallSeen:
    """What one stream carried of one call id: sorted, merged runs of sequence numbers."""

    packets: int = 0
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # exclusive
    overflow: bool = False

    def add(self, a: int, b: int) -> None:
        """Sequences ``a .. b-1`` arrived (once each)."""
        self.packets += b - a
        starts, ends = self.starts, self.ends
        if starts and a == ends[-1]:  # the common case: the stream continues
            ends[-1] = b
            return
        i = bisect.bisect_left(ends, a)  # first run that may touch [a, b)
        j = i
        while j < len(starts) and starts[j] <= b:
            j += 1
        if i == j:
            if len(starts) >= MAX_RUNS:
                self.overflow = True
                return
            starts.insert(i, a)
            ends.insert(i, b)
            return
        starts[i:j] = [min(a, starts[i])]
        ends[i:j] = [max(b, ends[j - 1])]

    @property
    def unique(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))

    def summary(self, cid: int) -> dict:
        unique = self.unique
        first, last = (self.starts[0], self.ends[-1] - 1) if self.starts else (None, None)
        return {"call": f"{cid:08x}", "packets": self.packets, "first": first, "last": last,
                "missing": 0 if first is None else (last - first + 1) - unique,
                "repeated": self.packets - unique,
                # the sequence runs themselves (bounded by MAX_RUNS): a soak unions a call's connections
                "runs": [[a, b] for a, b in zip(self.starts, self.ends)], "overflow": self.overflow}


def _decode(bits: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packets starting at ``pos`` (each complete in ``bits``): (valid, call id, sequence)."""
    block = bits[pos[:, None] + np.arange(PACKET_BITS)]
    sync_ok = (block[:, :SYNC_BITS] == _SYNC_ARR).all(axis=1)
    body = block[:, SYNC_BITS:] ^ _WHITEN
    data = body[:, :_DATA_BITS]
    crc_ok = (((data.astype(np.int32) @ _CRC_A) + _CRC_C) & 1 == body[:, _DATA_BITS:]).all(axis=1)
    value = (data.astype(np.uint64) << _SHIFTS64).sum(axis=1, dtype=np.uint64)
    return sync_ok & crc_ok, (value >> np.uint64(32)).astype(np.int64), (value & np.uint64(0xFFFFFFFF)).astype(np.int64)


class Decoder:
    """Streaming decoder of one connection's s16le mono audio (see the module docstring)."""

    def __init__(self, sparse: bool = True) -> None:
        # sparse=False searches every sample forever (the false-detection measurement: worst case)
        self._full = FULL_SEARCH if sparse else 1 << 62
        self._odd: bytes = b""  # a byte of a sample split across chunks
        self._bits = np.zeros(0, dtype=np.uint8)  # LSBs not consumed yet
        self._locked: int | None = None  # call id while locked
        self._next_seq = 0  # the sequence expected next while locked
        self._budget = self._full  # packet starts that may be searched before the next skip
        self._skip = 0  # samples to pass over unsearched (sparse search)
        self.calls: dict[int, CallSeen] = {}
        self.samples = 0

    # -- input
    def feed(self, data: bytes) -> None:
        if self._odd:
            data = self._odd + data
        n = len(data) // 2
        self._odd = data[2 * n:]
        if n:
            self.feed_samples(np.frombuffer(data, dtype="<i2", count=n))

    def feed_samples(self, samples: np.ndarray) -> None:
        """Already decoded int16 samples (the emulator has them)."""
        n = samples.shape[0]
        self.samples += n
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return
            samples, self._skip = samples[self._skip:], 0
        lsb = (samples & 1).astype(np.uint8)
        bits = np.concatenate((self._bits, lsb)) if self._bits.size else lsb
        self._bits = bits[self._process(bits):]

    # -- output
    def report(self) -> dict | None:
        """The call the stream carried most of (``calls`` lists every id when there were several);
        None when no packet was ever locked."""
        if not self.calls:
            return None
        cid, seen = max(self.calls.items(), key=lambda kv: kv[1].packets)
        out = seen.summary(cid)
        if len(self.calls) > 1:
            out["calls"] = {f"{c:08x}": s.packets for c, s in self.calls.items()}
        return out

    # -- internals
    def _process(self, bits: np.ndarray) -> int:
        """Consume what can be decided; returns where the unconsumed tail starts."""
        n, pos = bits.shape[0], 0
        while True:
            if self._locked is not None:
                k = (n - pos) // PACKET_BITS
                if k == 0:
                    return pos
                m = self._check_locked(bits, pos, k)
                pos += m * PACKET_BITS
                if m < k:  # phase shift, or the audio changed: search again from here
                    self._locked, self._budget = None, self._full
                continue
            if self._skip:
                step = min(self._skip, n - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    return pos
            found = self._search(bits, pos)
            if isinstance(found, tuple):
                at, cid, seq = found
                if cid not in self.calls and len(self.calls) >= MAX_CALLS:
                    pos = at + 2 * PACKET_BITS  # bounded: further call ids are ignored (hostile input)
                    continue
                self._locked = cid
                self.calls.setdefault(cid, CallSeen()).add(seq, seq + 2)
                self._next_seq = seq + 2
                pos = at + 2 * PACKET_BITS
                continue
            self._budget -= found - pos
            pos = found
            if self._budget > 0:
                return pos
            self._skip, self._budget = SPARSE_PERIOD - 3 * PACKET_BITS, _SPARSE_WINDOW

    def _check_locked(self, bits: np.ndarray, pos: int, k: int) -> int:
        """Accept the leading run of the ``k`` packets at ``pos`` that carry the locked call id;
        returns how many. Fast path: the packet is exactly the expected next one (integer compare)."""
        cid = self._locked
        assert cid is not None
        big = int.from_bytes(np.packbits(bits[pos:pos + k * PACKET_BITS]).tobytes(), "big")
        seen = self.calls[cid]
        expect = self._next_seq
        run_start, m = expect, 0
        for i in range(k):
            pkt = (big >> (PACKET_BITS * (k - 1 - i))) & _M96
            if pkt != packet_int(cid, expect):
                seq = _parse(pkt, cid)
                if seq is None:
                    break
                if expect > run_start:
                    seen.add(run_start, expect)
                run_start = expect = seq
            expect += 1
            m += 1
        if expect > run_start:
            seen.add(run_start, expect)
        self._next_seq = expect
        return m

    def _search(self, bits: np.ndarray, pos: int) -> tuple[int, int, int] | int:
        """The first locked pair starting in ``pos`` .. ``pos + budget - 1``, or where searching
        resumes (next feed, or after a sparse skip)."""
        n = bits.shape[0]
        last = min(n - 2 * PACKET_BITS, pos + self._budget - 1)  # last start whose pair is complete
        if last < pos:
            return pos
        # rolling 16-bit value at every start (one C call), then only the rare sync matches are decoded
        values = np.convolve(bits[pos:last + SYNC_BITS + PACKET_BITS], _POW16_REV, "valid")
        cand = np.flatnonzero(values == SYNC) + pos
        if cand.size:
            valid, ids, seqs = _decode(bits, cand)
            ok = {int(p): (int(i), int(s)) for p, i, s, v in zip(cand, ids, seqs, valid) if v}
            for p in sorted(ok):
                if p > last:
                    break
                nxt = ok.get(p + PACKET_BITS)
                if nxt is not None and nxt[0] == ok[p][0] and nxt[1] == ok[p][1] + 1:
                    return p, ok[p][0], ok[p][1]
        return last + 1
