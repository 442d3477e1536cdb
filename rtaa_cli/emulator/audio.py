"""Decoding of the audio a client streams to ``/v1/listen`` into int16 samples (pure code).

The binary frames of a stream are one byte stream (docs/deepgram-protocol.md §2: any chunk size is accepted): a frame
that ends inside a sample (an odd-length ``linear16`` frame, or part of a multichannel sample frame) leaves
those bytes for the next frame, so a client cutting audio by byte count (1001-byte chunks) gets the same
samples as one cutting whole samples. Bytes still left at the end of the stream are dropped.

What "undecodable" means here (the emulator closes such a stream with 1008 DATA-0000): with no
``encoding`` (containerised audio), the first frame must carry a complete RIFF/WAVE header for 16-bit PCM
(format 1 or WAVE_FORMAT_EXTENSIBLE) up to the start of the ``data`` chunk; anything else (Ogg, WebM,
garbage, a header split across frames) is undecodable. Raw encodings are always decodable.
"""
from __future__ import annotations

import struct

import numpy as np


class UndecodableAudio(Exception):
    """The payload cannot be decoded as audio in the declared encoding."""


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()
ALAW_TO_PCM16 = _alaw_table()


class AudioDecoder:
    """Turns each binary frame into int16 samples, shape ``(n,)`` for mono or ``(n, channels)``."""

    def __init__(self, encoding: str | None, sample_rate: int | None, channels: int) -> None:
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.channels = channels
        self._table = {"mulaw": MULAW_TO_PCM16, "alaw": ALAW_TO_PCM16}.get(encoding or "")
        self._frame_bytes = (1 if self._table is not None else 2) * channels
        self._need_header = encoding is None
        self._pcm16_mono = encoding == "linear16" and channels == 1
        self._carry = b""  # the bytes of a sample frame cut by the end of the previous binary frame

    @property
    def carried(self) -> int:
        """Bytes waiting for the rest of their sample frame."""
        return len(self._carry)

    def decode(self, data: bytes) -> np.ndarray:
        """The whole sample frames completed by ``data`` (possibly none)."""
        if self._pcm16_mono:  # the hot case (telephony linear16): even frames cost one check and one view
            if self._carry:
                data, self._carry = self._carry + data, b""
            if len(data) & 1:
                self._carry = bytes(data[-1:])
                return np.frombuffer(data, dtype="<i2", count=len(data) >> 1)
            return np.frombuffer(data, dtype="<i2")
        if self._need_header:
            data = self._read_wav_header(data)
        if self._carry:
            data, self._carry = self._carry + data, b""
        whole = len(data) - len(data) % self._frame_bytes
        if whole < len(data):
            self._carry = bytes(data[whole:])
        if self._table is not None:
            samples = self._table[np.frombuffer(data, dtype=np.uint8, count=whole)]
        else:
            samples = np.frombuffer(data, dtype="<i2", count=whole >> 1)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels)
        return samples

    def _read_wav_header(self, data: bytes) -> bytes:
        self._need_header = False
        if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise UndecodableAudio("no encoding given and the first frame is not a WAV (RIFF/WAVE) header")
        pos = 12
        fmt_seen = False
        while pos + 8 <= len(data):
            chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
            body = pos + 8
            if chunk_id == b"fmt ":
                if size < 16 or body + 16 > len(data):
                    break
                fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
                if fmt not in (1, 0xFFFE) or bits != 16:
                    raise UndecodableAudio(f"WAV format {fmt} with {bits}-bit samples is not 16-bit PCM")
                self.channels, self.sample_rate, fmt_seen = channels, rate, True
                self._frame_bytes = 2 * channels
            elif chunk_id == b"data":
                if not fmt_seen:
                    break
                return data[body:]
            pos = body + size + (size & 1)
        raise UndecodableAudio("WAV header incomplete in the first frame (no fmt/data chunk)")
