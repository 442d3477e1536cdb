"""Audio files -> the PCM Exotel streams: 16-bit signed little-endian mono at 8/16/24 kHz.

``load_audio`` reads any file libsndfile reads (WAV, FLAC, OGG/Vorbis, ... in any sample format),
downmixes to mono (mean of the channels), resamples with soxr (high quality) and converts to int16
with clipping (never wrap-around). It streams the file in blocks, so memory is the output PCM
(57.6 MB for the 60-minute maximum at 8 kHz), not the decoded source.

``frames`` cuts PCM into equal frames of ``frame_ms``. **The last partial frame is zero-padded**
to a whole frame, because Exotel sends fixed-size chunks; ``frame_padding`` says how many bytes
of silence that added (at most one frame minus one sample).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from rtaa_cli.errors import RtaaError
from rtaa_cli.protocols.exotel import DEFAULT_SAMPLE_RATE, SAMPLE_RATES

DEFAULT_FRAME_MS = 36  # observed in production (docs/incidents.md); Exotel documents 100 ms
BYTES_PER_SAMPLE = 2  # s16le mono
MAX_DURATION_S = 3600  # Exotel streams last at most 60 minutes
_BLOCK_FRAMES = 1 << 16  # source frames decoded at a time


@dataclass(frozen=True)
class PcmAudio:
    pcm: bytes  # s16le mono at sample_rate
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_format: str  # e.g. "WAV PCM_16", "FLAC PCM_24"

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000.0 / (self.sample_rate * BYTES_PER_SAMPLE)


def _float_to_s16le(samples: np.ndarray) -> bytes:
    # Scale by 32768 so int16 sources round-trip exactly; clip instead of letting overflow wrap.
    scaled = np.rint(samples * 32768.0)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype("<i2").tobytes()


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE) -> PcmAudio:
    """Read ``path`` and return it as s16le mono PCM at ``sample_rate``.

    Raises :class:`RtaaError` (one line) for a missing, unreadable, unsupported, empty or too long
    file, or an unsupported ``sample_rate``.
    """
    if sample_rate not in SAMPLE_RATES:
        raise RtaaError(f"unsupported sample rate {sample_rate}: use one of {', '.join(map(str, SAMPLE_RATES))}")
    name = os.fspath(path)
    if not os.path.exists(name):
        raise RtaaError(f"{name}: no such file")
    if os.path.isdir(name):
        raise RtaaError(f"{name}: is a directory, not an audio file")
    try:
        info = soundfile.info(name)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise RtaaError(f"{name}: not a readable audio file ({_first_line(exc)})") from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise RtaaError(f"{name}: contains no audio")
    if info.frames / info.samplerate > MAX_DURATION_S:
        raise RtaaError(f"{name}: {info.frames / info.samplerate / 60:.0f} min long; an Exotel stream lasts at most 60 min")

    out = bytearray()
    resampler = None if info.samplerate == sample_rate else soxr.ResampleStream(
        info.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
    try:
        for block in soundfile.blocks(name, blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=False)
            out += _float_to_s16le(mono)
        if resampler is not None:
            out += _float_to_s16le(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise RtaaError(f"{name}: cannot decode audio ({_first_line(exc)})") from None
    if not out:
        raise RtaaError(f"{name}: contains no audio")
    return PcmAudio(bytes(out), sample_rate, info.samplerate, info.channels, f"{info.format} {info.subtype}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def frame_bytes(sample_rate: int, frame_ms: int) -> int:
    """Bytes per frame; the frame must hold a whole number of samples."""
    if frame_ms <= 0:
        raise RtaaError(f"frame duration must be > 0 ms, got {frame_ms}")
    samples, remainder = divmod(sample_rate * frame_ms, 1000)
    if remainder:
        raise RtaaError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return samples * BYTES_PER_SAMPLE


def frame_padding(pcm_len: int, sample_rate: int, frame_ms: int = DEFAULT_FRAME_MS) -> int:
    """Zero bytes ``frames`` appends to complete the last frame."""
    size = frame_bytes(sample_rate, frame_ms)
    return -pcm_len % size


def frames(pcm: bytes, sample_rate: int, frame_ms: int = DEFAULT_FRAME_MS) -> list[bytes]:
    """Cut ``pcm`` into frames of ``frame_ms`` (576 B at 8 kHz/36 ms), zero-padding the last one."""
    size = frame_bytes(sample_rate, frame_ms)
    if len(pcm) % BYTES_PER_SAMPLE:
        raise RtaaError(f"PCM length {len(pcm)} is not a whole number of 16-bit samples")
    out = [pcm[i:i + size] for i in range(0, len(pcm), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + bytes(size - len(out[-1]))
    return out
