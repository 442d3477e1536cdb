"""Word producers for a segmented window: placeholder words (default) or pocketsphinx (real words).

Both are per-channel and pure with respect to I/O. ``feed`` receives all of the channel's audio, in order,
cut so that a window's audio has been fed before ``words(window, final)`` is asked for it; ``words``
returns ``(word, start_s, end_s, confidence)`` tuples with absolute stream times.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from rtaa_cli.emulator.segmenter import Window

Word = tuple[str, float, float, float]

PLACEHOLDER_WORDS = (
    "hello", "thanks", "for", "calling", "how", "can", "i", "help", "you", "today", "my", "account", "number",
    "is", "please", "check", "the", "balance", "order", "status", "yes", "no", "okay", "sure", "one", "moment",
)
WORD_SECONDS = 0.3


class Transcriber(Protocol):
    def feed(self, samples: np.ndarray) -> None: ...

    def words(self, window: Window, final: bool) -> list[Word]: ...

    def close(self) -> None: ...


class PlaceholderTranscriber:
    """One deterministic word per 300 ms slot of the window's speech span.

    Slots are anchored at the first voiced sample, so an interim's words are a prefix of the final's
    (only the last word's end moves), and the same audio always yields the same words.
    """

    def __init__(self, sample_rate: int, seed: int = 0) -> None:
        self.rate = sample_rate
        self.seed = seed

    def feed(self, samples: np.ndarray) -> None:
        pass

    def words(self, window: Window, final: bool) -> list[Word]:
        if window.voiced_start is None or window.voiced_end is None:
            return []
        start = window.voiced_start / self.rate
        end = window.voiced_end / self.rate
        count = max(1, int(-(-(end - start) // WORD_SECONDS)))
        first = window.voiced_start // max(1, self.rate // 100) * 7 + self.seed
        out: list[Word] = []
        for k in range(count):
            w_start = start + k * WORD_SECONDS
            w_end = min(end, w_start + WORD_SECONDS)
            if w_end - w_start < 0.01:
                break
            word = PLACEHOLDER_WORDS[(first + k) % len(PLACEHOLDER_WORDS)]
            out.append((word, round(w_start, 3), round(w_end, 3), 0.99 if final else 0.9))
        return out

    def close(self) -> None:
        pass


SPHINX_RATE = 16000
_SKIP = {"<s>", "</s>", "<sil>"}


class SphinxTranscriber:
    """pocketsphinx 5 decoding of the window's audio (model: the en-us one shipped in the wheel).

    One utterance per window: the decoder starts at the window start and ends at the final; word times
    come from the decoder's segmentation (10 ms frames) offset by the window start. Audio is resampled to
    16 kHz with soxr. Not thread-safe: the server drives each stream's transcriber from one executor thread.
    The session feeds audio exactly up to each window's end (within one 10 ms block) before asking.
    """

    def __init__(self, sample_rate: int) -> None:
        import soxr
        from pocketsphinx import Decoder

        self.rate = sample_rate
        self._decoder = Decoder(samprate=SPHINX_RATE, loglevel="FATAL")
        self._resampler = None if sample_rate == SPHINX_RATE else soxr.ResampleStream(
            sample_rate, SPHINX_RATE, 1, dtype="int16")
        self._utt_start_s = 0.0
        self._fed_s = 0.0
        self._decoder.start_utt()

    def feed(self, samples: np.ndarray) -> None:
        self._fed_s += samples.size / self.rate
        data = samples if self._resampler is None else self._resampler.resample_chunk(samples)
        if data.size:
            self._decoder.process_raw(np.ascontiguousarray(data, dtype=np.int16).tobytes(), False, False)

    def _segments(self) -> list[Word]:
        out: list[Word] = []
        for seg in self._decoder.seg():
            word = seg.word
            if word in _SKIP or word.startswith("[") or word.startswith("+"):
                continue
            word = word.split("(")[0]  # alternate pronunciations: "the(2)"
            start = round(self._utt_start_s + seg.start_frame / 100.0, 3)
            end = round(self._utt_start_s + (seg.end_frame + 1) / 100.0, 3)
            out.append((word, start, end, round(min(1.0, max(0.0, 10 ** (seg.prob / 10000.0))), 3) or 0.5))
        return out

    def words(self, window: Window, final: bool) -> list[Word]:
        if not final:
            return self._segments() if self._decoder.hyp() is not None else []
        self._decoder.end_utt()
        out = self._segments()
        self._utt_start_s = self._fed_s
        self._decoder.start_utt()
        return out

    def close(self) -> None:
        try:
            self._decoder.end_utt()
        except Exception:  # noqa: BLE001 - already ended
            pass
