"""A low-level spread-spectrum audio mark that survives resampling and gain (sans-I/O, numpy + soxr).

Why: the LSB code (rtaa_cli/watermark.py) needs the samples unchanged; a pipeline that resamples to
16 kHz or changes the gain before the provider destroys it. This second mark, added beside it, still
tells the emulator which call a connection carries (attribution with no tag). It carries no sequence
numbers: no per-frame loss or replay accounting, only the call and how much audio it took to find it.

The mark: a periodic signal of :data:`PERIOD` samples (0.512 s at the caller's 8 kHz), the sum of
:data:`COMPONENTS` fixed pseudo-noise (+-1) sequences, each cyclically shifted: component 0 by 0 (the
sync), components 1..4 by 12 bits each of ``call id (32) | CRC-16 of it (16)`` (cyclic code-shift
keying). Its level is :data:`LEVEL_DBFS` RMS (-54 dBFS: about 30 dB below the speech of the fixtures),
white over the caller's band. Sample ``n`` of the call's audio gets ``mark[n mod PERIOD]``.

Detection (:class:`Detector`): the received stream is resampled to 8 kHz (soxr) when it arrives at
another rate, pre-emphasised (first difference: speech has most of its energy low, the mark is white),
weighted per 256-sample block by the inverse of the block's energy (loud speech counts little, pauses
much: that also makes it gain-invariant), and folded modulo PERIOD into one accumulator: coherent
integration over the whole connection, whatever its chunking or offset. From time to time the
accumulator is correlated (FFT) with each component: the sync's peak gives the phase, each data
component's peak relative to it 12 bits, and the word must pass its CRC. A decision needs the sync's
peak z-score above :data:`Z_SYNC` (chosen from the measured null distribution, docs/soak.md "Robust mark")
and every data peak above :data:`Z_DATA`. The id is reported like the LSB code's (8 hex digits).
"""
from __future__ import annotations

import binascii
import math

import numpy as np

RATE = 8000  # the caller's rate the mark is defined at
PERIOD = 4096
COMPONENTS = 5  # sync + 4 data components
SHIFT_BITS = 12  # log2(PERIOD): bits per data component
LEVEL_DBFS = -54.0
# Whether rtaa's callers add it by default (--robust-mark/--no-robust-mark; --no-watermark turns both
# marks off): see docs/soak.md "Robust mark" for the measured WER that decides it.
DEFAULT_ON = False
GATE_DB: float | None = None  # if set, a frame's mark stays this many dB below the frame's own level
BLOCK = 256  # samples per weighting block (PERIOD is a multiple)
Z_SYNC = 7.0  # the sync peak's z-score needed (the null's maximum over 10^6 frames is far below)
Z_DATA = 4.5  # each data component's peak z-score needed
FLOOR = 1.0  # least block energy (per sample, LSB^2) a weight divides by: digital silence
FIRST_ANALYSIS = RATE  # samples folded before the first decision attempt (1 s), then every ...
ANALYSIS_PERIOD = RATE  # ... 1 s, growing to MAX_ANALYSIS_PERIOD (unmarked streams stay cheap)
MAX_ANALYSIS_PERIOD = 8 * RATE
BATCH = 2048  # received samples buffered before processing (per-frame overhead stays tiny)

_PN = np.random.default_rng(0x726D_6B32).integers(0, 2, (COMPONENTS, PERIOD)).astype(np.float64) * 2.0 - 1.0
# the detector's templates: each component pre-emphasised (circularly), as FFT conjugates, with norms
_PRE = _PN - np.roll(_PN, 1, axis=1)
_TPL_CONJ = np.conj(np.fft.rfft(_PRE, axis=1))
_TPL_NORM = np.linalg.norm(_PRE, axis=1)


def _crc(cid: int) -> int:
    return binascii.crc_hqx((cid & 0xFFFFFFFF).to_bytes(4, "big"), 0xFFFF)


def shifts(cid: int) -> list[int]:
    """The cyclic shift of each component for call id ``cid`` (sync first: 0)."""
    word = ((cid & 0xFFFFFFFF) << 16) | _crc(cid)
    return [0] + [(word >> (SHIFT_BITS * (3 - i))) & (PERIOD - 1) for i in range(4)]


def mark_period(cid: int, level_dbfs: float | None = None, rate: int = RATE) -> np.ndarray | None:
    """One period of call ``cid``'s mark at ``rate`` (float64 samples, added to s16 audio): the 8 kHz
    mark, band-limited-interpolated for a caller at a multiple of 8 kHz (the emulator resamples any
    stream to 8 kHz); None at other rates (no robust mark)."""
    if rate <= 0 or rate % RATE:
        return None
    amp = 32768.0 * 10.0 ** ((LEVEL_DBFS if level_dbfs is None else level_dbfs) / 20.0) / math.sqrt(COMPONENTS)
    base = amp * sum(np.roll(_PN[i], s) for i, s in enumerate(shifts(cid)))
    k = rate // RATE
    if k == 1:
        return base
    spec = np.fft.rfft(base)
    spec[-1] *= 0.5  # the 4 kHz bin is split between +-4 kHz in the longer spectrum
    wide = np.zeros(PERIOD * k // 2 + 1, dtype=complex)
    wide[:spec.shape[0]] = spec
    return np.fft.irfft(wide, n=PERIOD * k) * k


def add_mark(samples: np.ndarray, period: np.ndarray, sample_offset: int) -> np.ndarray:
    """int16 ``samples`` (starting at ``sample_offset`` of the call) with the mark added (clipped)."""
    n, p = samples.shape[0], period.shape[0]
    start = sample_offset % p
    if start + n <= p:  # the common case: a frame inside one period
        m = period[start:start + n]
    else:
        m = np.resize(np.roll(period, -start), n)
    if GATE_DB is not None:  # never louder than the frame itself less GATE_DB: silence stays silent
        rms = math.sqrt(float(np.dot(samples.astype(np.float64), samples)) / n) if n else 0.0
        mark_rms = 32768.0 * 10.0 ** (LEVEL_DBFS / 20.0)
        g = min(1.0, rms / (mark_rms * 10.0 ** (GATE_DB / 20.0)))
        m = m * g
    return np.clip(np.rint(samples + m), -32768, 32767).astype(np.int16)


def _wrap_add(acc: np.ndarray, at: int, x: np.ndarray) -> None:
    """``acc[(at + i) % len(acc)] += x[i]`` (the fold), with slices instead of an index per sample."""
    p = acc.shape[0]
    head = min(p - at, x.shape[0])
    acc[at:at + head] += x[:head]
    rest = x[head:]
    if rest.shape[0]:
        whole = rest.shape[0] // p * p
        if whole:
            acc += rest[:whole].reshape(-1, p).sum(axis=0)
        acc[:rest.shape[0] - whole] += rest[whole:]


class Detector:
    """Streaming detector of one connection's audio (int16 mono at ``rate``); see the module docstring."""

    def __init__(self, rate: int = RATE, z_sync: float = Z_SYNC, z_data: float = Z_DATA) -> None:
        self.rate = rate
        self._resampler = None
        if rate != RATE:
            import soxr  # a dependency of rtaa; only streams at another rate need it

            self._resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32", quality="LQ")  # the mark is robust: cheap
        self.z_sync, self.z_data = z_sync, z_data
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._prev = 0.0  # last sample (pre-emphasis across batches)
        self._tail = np.zeros(0)  # pre-emphasised samples short of a whole block
        self._acc = np.zeros(PERIOD)
        self._block = 0  # blocks folded (position in the accumulator: block mod PERIOD/BLOCK)
        self._next_analysis = FIRST_ANALYSIS
        self._interval = ANALYSIS_PERIOD
        self.samples = 0  # received samples (at ``rate``)
        self.folded = 0  # samples folded (at 8 kHz)
        self.call: int | None = None
        self.z: float | None = None  # the sync z-score of the decision (or the best so far)
        self.found_after_s: float | None = None  # seconds of audio (8 kHz) folded when decided
        self.analyses = 0
        self._analysed_at = 0  # samples folded at the last analysis
        self.trace: list[float] | None = None  # a list here gets every analysis' sync z (the null measurement)

    def feed_samples(self, samples: np.ndarray) -> None:
        self.samples += samples.shape[0]
        if self.call is not None:
            return  # decided: nothing more to learn (the id of a connection does not change)
        self._pending.append(samples)
        self._pending_n += samples.shape[0]
        if self._pending_n >= BATCH:
            self._process()

    def report(self, final: bool = True) -> dict | None:
        """``{"call", "z", "found_after_s"}`` once decided, else None. ``final`` (the stream ended):
        one last attempt on all it received; otherwise (a live stream's stats) no extra work."""
        if final and self.call is None and (self._pending_n or self.folded > self._analysed_at):
            self._process(final=True)
        if self.call is None:
            return None
        return {"call": f"{self.call:08x}", "z": round(float(self.z or 0.0), 2), "found_after_s": self.found_after_s}

    # -- internals
    def _process(self, final: bool = False) -> None:
        if self._pending:
            x = np.concatenate(self._pending).astype(np.float32)
            self._pending, self._pending_n = [], 0
            if self._resampler is not None:
                x = self._resampler.resample_chunk(x, last=False)
            self._fold(x.astype(np.float64))
        if self.folded >= self._next_analysis or (final and self.folded > self._analysed_at):
            self._analyse()
            self._next_analysis = self.folded + self._interval
            self._interval = min(MAX_ANALYSIS_PERIOD, self._interval * 2)

    def _fold(self, x: np.ndarray) -> None:
        if not x.size:
            return
        y = np.empty_like(x)
        y[0] = x[0] - self._prev
        y[1:] = x[1:] - x[:-1]
        self._prev = x[-1]
        if self._tail.size:
            y = np.concatenate((self._tail, y))
        nb = y.shape[0] // BLOCK
        self._tail = y[nb * BLOCK:]
        if not nb:
            return
        blocks = y[:nb * BLOCK].reshape(nb, BLOCK)
        w = 1.0 / np.maximum(np.einsum("ij,ij->i", blocks, blocks) / BLOCK, FLOOR)
        _wrap_add(self._acc, (self._block * BLOCK) % PERIOD, (blocks * w[:, None]).ravel())
        self._block += nb
        self.folded += nb * BLOCK

    def _analyse(self) -> None:
        self.analyses += 1
        self._analysed_at = self.folded
        spec = np.fft.rfft(self._acc)
        # whiten (phase transform): narrowband interference (tones, voiced harmonics) weighs no more
        # than any other bin, and the mark is white
        mag = np.abs(spec)
        if not mag.any():
            return
        spec = spec / np.maximum(mag, mag.max() * 1e-9)
        norm = float(np.linalg.norm(np.fft.irfft(spec, n=PERIOD)))
        scale = math.sqrt(PERIOD) / norm
        sync = np.fft.irfft(spec * _TPL_CONJ[0], n=PERIOD) * (scale / _TPL_NORM[0])
        phase = int(np.argmax(sync))
        z0 = float(sync[phase])
        if self.trace is not None:
            self.trace.append(z0)
        self.z = z0 if self.z is None else max(self.z, z0)
        if z0 < self.z_sync:
            return
        corr = np.fft.irfft(spec[None, :] * _TPL_CONJ[1:], n=PERIOD, axis=1) * (scale / _TPL_NORM[1:, None])
        peaks = np.argmax(corr, axis=1)
        if (corr[np.arange(COMPONENTS - 1), peaks] < self.z_data).any():
            return
        # shifts relative to the sync at sub-sample precision: a target's fractional delay (a linear
        # resampler delays by half a sample) moves every peak alike, and a half-sample peak is two lags
        at0 = phase + _subsample(sync, phase)
        word = 0
        for c, p in zip(corr, peaks):
            word = (word << SHIFT_BITS) | (int(round(int(p) + _subsample(c, int(p)) - at0)) % PERIOD)
        cid, crc = word >> 16, word & 0xFFFF
        if _crc(cid) != crc:
            return
        self.call, self.z, self.found_after_s = cid, z0, round(self.folded / RATE, 3)


def _subsample(c: np.ndarray, k: int) -> float:
    """The peak's offset from lag ``k`` (-0.5 .. 0.5), from the parabola through its neighbours."""
    y0, y1, y2 = c[k - 1], c[k], c[(k + 1) % c.shape[0]]
    den = y0 - 2.0 * y1 + y2
    return 0.0 if den >= 0 else float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
