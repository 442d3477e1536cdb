"""The audio a soak's callers play: files through :mod:`rtaa_cli.audio` (the one loader and framer),
trimmed or looped to the call length, cut once per process and shared by every virtual caller;
or ``synthetic``: speech-like bursts generated in Python (no fixtures needed, deterministic).
"""
from __future__ import annotations

import functools

import numpy as np

from rtaa_cli.audio import frames, load_audio

SYNTHETIC = "synthetic"


def synthetic_pcm(seconds: float, sample_rate: int = 8000) -> bytes:
    """Voiced bursts (1.8 s) and pauses (0.7 s), always *ending inside a burst* of >= 2 s, so the
    last words of a call are only finalized if the target finalizes on stop.

    The bursts are a 140 Hz harmonic series with a slowly varying envelope: loud enough for any
    energy VAD, never silent inside a burst (no accidental endpoints).
    """
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    voiced = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 6))
    envelope = 0.7 + 0.3 * np.sin(2 * np.pi * 3.0 * t)
    signal = 0.25 * voiced * envelope
    period, burst = 2.5, 1.8
    mask = (t % period) < burst
    tail = t >= (seconds - 2.2)  # the call ends mid-burst
    signal = np.where(mask | tail, signal, 0.0)
    pcm = np.clip(np.rint(signal * 32767.0), -32768, 32767).astype("<i2")
    return pcm.tobytes()


@functools.lru_cache(maxsize=16)
def call_frames(audio: str, sample_rate: int, frame_ms: int, length_s: float | None) -> tuple[bytes, ...]:
    """Frames for one call (cached: every virtual caller of a process shares the same bytes)."""
    if audio == SYNTHETIC:
        pcm = synthetic_pcm(length_s or 20.0, sample_rate)
    else:
        pcm = load_audio(audio, sample_rate).pcm
        if length_s is not None:
            want = int(length_s * sample_rate) * 2
            if want > len(pcm):  # loop the file to reach the call length
                pcm = pcm * (want // len(pcm) + 1)
            pcm = pcm[:want]
    return tuple(frames(pcm, sample_rate, frame_ms))
