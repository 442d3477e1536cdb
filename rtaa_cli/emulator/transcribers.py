"""Word producers for a segmented window: placeholder words (default) or pocketsphinx (real words).

Both are per-channel and pure with respect to I/O. ``feed`` receives all of the channel's audio, in order,
cut so that a window's audio has been fed before ``words(window, final)`` is asked for it; ``words``
returns ``(word, start_s, end_s, confidence)`` tuples with absolute stream times.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from rtaa_cli import textmark
from rtaa_cli.emulator.segmenter import Window

Word = tuple[str, float, float, float]

PLACEHOLDER_WORDS = (
    "hello", "thanks", "for", "calling", "how", "can", "i", "help", "you", "today", "my", "account", "number",
    "is", "please", "check", "the", "balance", "order", "status", "yes", "no", "okay", "sure", "one", "moment",
)
WORD_SECONDS = 0.3
FILLER_WORDS = ("uh", "um")  # join the vocabulary with filler_words=true


class Transcriber(Protocol):
    # Optional class attribute ``needs_audio = False``: the transcriber ignores ``feed`` (saves a call per frame).

    def feed(self, samples: np.ndarray) -> None: ...

    def words(self, window: Window, final: bool) -> list[Word]: ...

    def close(self) -> None: ...


class PlaceholderTranscriber:
    """One deterministic word per 300 ms slot of the window's speech span.

    Slots are anchored at the first voiced sample, so (unmarked, no boosted terms) an interim's words are a
    prefix of the final's (only the last word's end moves), and the same audio always yields the same words.
    Boosted terms (keyterm, keywords) replace the words right after the mark in windows long enough for
    them; suppressed keywords and, without ``fillers``, "uh"/"um" are never chosen.
    With ``mark`` (the connection id; the emulator's default), a result's first five words are its text
    watermark (rtaa_cli/textmark.py: connection, audio end, final or not) and the rest placeholder words;
    a result with speech then has at least five words, spread over its speech span.
    """

    needs_audio = False  # words come from the window alone: the session need not feed samples

    def __init__(self, sample_rate: int, seed: int = 0, mark: int | None = None, confidence_seed: int = 0, *,
                 boosted: tuple[tuple[str, ...], ...] = (), suppressed: frozenset[str] = frozenset(),
                 fillers: bool = False) -> None:
        self.rate = sample_rate
        self.seed = seed
        self.mark = mark
        self.confidence_seed = confidence_seed
        # The handshake's vocabulary (keyterm/keywords, filler_words): what a recogniser would then hear.
        vocab = PLACEHOLDER_WORDS + (FILLER_WORDS if fillers else ())
        self.vocabulary = tuple(w for w in vocab if w not in suppressed) or PLACEHOLDER_WORDS
        self.boosted = boosted

    def confidence(self, start_sample: int, final: bool) -> float:
        """A word's confidence: deterministic per (stream seed, word start), skewed high like an ASR's
        (0.65-0.999, median ~0.96), so clients that filter by confidence see some words dropped. An interim's
        word is 0.05 less sure than the same word in the final."""
        x = (start_sample * 2654435761 + self.confidence_seed * 40503 + 12345) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 2246822519) & 0xFFFFFFFF
        x ^= x >> 13
        value = 0.999 - 0.35 * (x / 4294967296.0) ** 3
        return round(value if final else value - 0.05, 4)

    def feed(self, samples: np.ndarray) -> None:
        pass

    def words(self, window: Window, final: bool) -> list[Word]:
        if window.voiced_start is None or window.voiced_end is None:
            return []
        start = window.voiced_start / self.rate
        end = window.voiced_end / self.rate
        count = max(1, int(-(-(end - start) // WORD_SECONDS)))
        first = window.voiced_start // max(1, self.rate // 100) * 7 + self.seed
        vocab = self.vocabulary
        texts = [vocab[(first + k) % len(vocab)] for k in range(count)]
        slot = WORD_SECONDS
        head = 0
        if self.mark is not None:
            code = textmark.encode(self.mark, window.end * 1000.0 / self.rate, final)
            texts = code + texts[len(code):]
            head = len(code)
            slot = min(WORD_SECONDS, (end - start) / len(texts))
        if self.boosted:
            # A boosted term is recognised once per window with room for it, right after the mark: which
            # one depends on where the speech starts, so every term shows up over a call.
            phrase = self.boosted[(first // 7) % len(self.boosted)]
            if len(texts) - head >= len(phrase):
                texts[head:head + len(phrase)] = phrase
        out: list[Word] = []
        for k, word in enumerate(texts):
            w_start = start + k * slot
            w_end = min(end, w_start + slot)
            if self.mark is None and w_end - w_start < 0.01:
                break
            conf = self.confidence(int(round(w_start * self.rate)), final)
            out.append((word, round(w_start, 3), round(max(w_end, w_start), 3), conf))
        return out

    def close(self) -> None:
        pass


SPHINX_RATE = 16000
_SKIP = {"<s>", "</s>", "<sil>"}
_CMN_SEARCH = "rtaa-cmn"


class SphinxTranscriber:
    """pocketsphinx 5 decoding of the window's audio (model: the en-us one shipped in the wheel).

    Finals: a whole-utterance decode of the window's speech, normalised with the utterance's own cepstral
    mean (batch CMN: a features-only ``process_raw(..., full_utt=True)`` pass), then searched in 250 ms
    chunks so the GIL is released between calls. A live decode starts its CMN from a prior that takes
    seconds of speech to adapt, which garbled every stream's first utterance ("and john dashboard and holy
    shit ..."); on fixtures/audio/call.wav these finals cut the WER from 0.41 to 0.32. Silent windows are
    not decoded (no hallucinated words, no CPU).
    Interims: a live decode of the window, caught up (in chunks) only when an interim is asked for, so a
    finals-only user (the pipeline's ``sphinx`` provider) searches each window once. Once a final has
    given a cepstral mean, the next window's live decode starts from it (no warm-up), and that warm live
    decode, completed, is the window's final: same WER on call.wav (0.32) for ~2/3 of the CPU of a
    second, whole-utterance search per window (19 vs 29 s of CPU for the 27.5 s call, loaded machine).

    Audio is resampled to 16 kHz with soxr and kept for the open window only, at most ``MAX_UTTERANCE_S``
    (beyond: the oldest audio is dropped from the final's decode; the segmenter forces a final long before).
    Word times come from the decoder's segmentation (10 ms frames) offset by the window start. Not
    thread-safe: the server drives each stream's transcriber from one executor thread. The session feeds
    audio exactly up to each window's end (within one 10 ms block) before asking.
    """

    MAX_UTTERANCE_S = 60.0
    MARGIN_S = 0.3  # audio kept around the window's voiced span for the final's decode
    _CHUNK_BYTES = 2 * SPHINX_RATE // 4  # 250 ms per decoder call: the GIL is released between calls

    def __init__(self, sample_rate: int) -> None:
        import soxr
        from pocketsphinx import Decoder

        self.rate = sample_rate
        self._decoder = Decoder(samprate=SPHINX_RATE, loglevel="FATAL")
        self._lm_search = self._decoder.current_search()
        self._decoder.add_keyphrase(_CMN_SEARCH, "oh")  # only ever used for its features (see words())
        self._resampler = None if sample_rate == SPHINX_RATE else soxr.ResampleStream(
            sample_rate, SPHINX_RATE, 1, dtype="int16")
        self._utterance = bytearray()  # the open window's audio, 16 kHz int16
        self._max_bytes = int(self.MAX_UTTERANCE_S * SPHINX_RATE) * 2
        self._live_fed = 0  # bytes of _utterance already given to the live decode
        self._live = False  # a live utterance is open in the decoder
        self._primed = False  # the open live decode started from a known cepstral mean
        self._mean: str | None = None  # the last final's cepstral mean (pocketsphinx's "c0,c1,..." string)
        self._utt_start_s = 0.0
        self._fed_s = 0.0

    def feed(self, samples: np.ndarray) -> None:
        self._fed_s += samples.size / self.rate
        data = samples if self._resampler is None else self._resampler.resample_chunk(samples)
        if data.size:
            self._utterance += np.ascontiguousarray(data, dtype=np.int16).data
            excess = len(self._utterance) - self._max_bytes
            if excess > 0:
                del self._utterance[:excess]
                self._live_fed = max(0, self._live_fed - excess)
                self._utt_start_s += excess / 2 / SPHINX_RATE

    def _segments(self, offset_s: float = 0.0) -> list[Word]:
        base = self._utt_start_s + offset_s
        out: list[Word] = []
        for seg in self._decoder.seg():
            word = seg.word
            if word in _SKIP or word.startswith("[") or word.startswith("+"):
                continue
            word = word.split("(")[0]  # alternate pronunciations: "the(2)"
            start = round(base + seg.start_frame / 100.0, 3)
            end = round(base + (seg.end_frame + 1) / 100.0, 3)
            out.append((word, start, end, round(min(1.0, max(0.0, 10 ** (seg.prob / 10000.0))), 3) or 0.5))
        return out

    def _decode_chunks(self, data: memoryview) -> None:
        for off in range(0, len(data), self._CHUNK_BYTES):
            self._decoder.process_raw(data[off:off + self._CHUNK_BYTES], False, False)

    def words(self, window: Window, final: bool) -> list[Word]:
        if not final:
            if len(self._utterance) > self._live_fed:
                if not self._live:
                    self._primed = self._mean is not None
                    if self._primed:  # start from the last utterance's mean: no CMN warm-up
                        self._decoder.reinit_feat()
                        self._decoder.set_cmn(self._mean)
                    self._decoder.start_utt()
                    self._live = True
                with memoryview(self._utterance) as whole, whole[self._live_fed:] as fresh:
                    self._decode_chunks(fresh)
                self._live_fed = len(self._utterance)
            return self._segments() if self._live and self._decoder.hyp() is not None else []
        out: list[Word] = []
        if self._live:
            self._live = False
            if self._primed:  # a warm live decode of the whole window: completed, it is the final
                with memoryview(self._utterance) as whole, whole[self._live_fed:] as fresh:
                    self._decode_chunks(fresh)
                self._decoder.end_utt()
                self._mean = self._decoder.get_cmn()
                out = self._segments()
                self._utterance.clear()
                self._live_fed = 0
                self._utt_start_s = self._fed_s
                return out
            self._decoder.end_utt()  # cold (the stream's first window): decode again below
        if self._utterance and window.voiced_start is not None and window.voiced_end is not None:
            # The speech plus margins only (silence just costs decode time).
            lo = 2 * int(max(0.0, (window.voiced_start - window.start) / self.rate - self.MARGIN_S) * SPHINX_RATE)
            hi = 2 * int(((window.voiced_end - window.start) / self.rate + self.MARGIN_S) * SPHINX_RATE)
            with memoryview(self._utterance) as whole, whole[lo:hi] as speech:  # released before clear()
                # 1) The utterance's cepstral mean (batch CMN): features of the whole utterance in one call,
                #    searched by a trivial keyphrase search (cheap; the LM search would take seconds holding
                #    the GIL). A fresh front end each time: the live pass leaves its estimate behind.
                self._decoder.activate_search(_CMN_SEARCH)
                self._decoder.reinit_feat()
                self._decoder.start_utt()
                self._decoder.process_raw(speech, True, True)
                mean = self._decoder.get_cmn()
                self._decoder.end_utt()
                # 2) The LM search primed with that mean, fed in chunks: pocketsphinx holds the GIL inside each
                #    call, so one call on the whole utterance would stall the emulator's event loop for
                #    seconds. Same words as process_raw(whole, full_utt=True) (WER 0.32 vs 0.35 on call.wav).
                self._decoder.activate_search(self._lm_search)
                self._decoder.reinit_feat()
                self._decoder.set_cmn(mean)
                self._decoder.start_utt()
                self._decode_chunks(speech)
                self._decoder.end_utt()
                self._mean = mean
            out = self._segments(lo / 2 / SPHINX_RATE)
        self._utterance.clear()
        self._live_fed = 0
        self._utt_start_s = self._fed_s
        return out

    def close(self) -> None:
        if self._live:
            self._live = False
            try:
                self._decoder.end_utt()
            except Exception:  # noqa: BLE001 - nothing left to decode either way
                pass
        self._utterance.clear()
