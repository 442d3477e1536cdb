"""The text watermark: words that say which emulator result they are (sans-I/O, docs/soak.md).

The emulator's segmenter engine (``rtaa fake-deepgram``, on by default) starts every result with text
with five *mark words* encoding the connection it was sent on, the audio end of the result (on that
connection's audio clock, 10 ms units) and whether it is final, with a 17-bit check. Any pipeline that
passes the text through, in any schema, lets rtaa match each piece of text on any feed to the exact
result that produced it: latency and delivery without audio offsets in the feed, results published
twice, and results on the wrong call's feed.

Mark words are pseudo-words of two consonant-vowel syllables (64 syllables: 4,096 words, 12 bits
each), so case, punctuation and spacing changes do not matter (:func:`decode` normalises) and English
words rarely look like one; five in a row must also pass the check (2^-17 for random mark-like words).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

CONSONANTS = "bdfgklmnprstvzhj"  # 16
VOWELS = "aiou"  # 4: 64 syllables, 4,096 two-syllable words
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
WORDS = tuple(a + b for a in SYLLABLES for b in SYLLABLES)
_INDEX = {w: i for i, w in enumerate(WORDS)}
MARK_WORDS = 5  # 60 bits
CONN_BITS, END_BITS, CHECK_BITS = 20, 22, 17
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Mark:
    connection: int  # the emulator's connection id (mod 2^20)
    audio_end_ms: int  # the result's end on that connection's audio clock (10 ms resolution)
    is_final: bool


def _check(payload: int) -> int:
    return zlib.crc32(payload.to_bytes(6, "big")) & ((1 << CHECK_BITS) - 1)


def encode(connection: int, audio_end_ms: float, is_final: bool) -> list[str]:
    """The five mark words of one result."""
    end_cs = min(int(round(audio_end_ms / 10.0)), (1 << END_BITS) - 1)
    payload = ((connection % (1 << CONN_BITS)) << (END_BITS + 1)) | (end_cs << 1) | int(is_final)
    value = (payload << CHECK_BITS) | _check(payload)
    return [WORDS[(value >> (12 * (MARK_WORDS - 1 - k))) & 0xFFF] for k in range(MARK_WORDS)]


def decode(text: str) -> list[Mark]:
    """Every mark in ``text`` (several when a pipeline joins results), in order."""
    words = _WORD.findall(text.lower())
    out: list[Mark] = []
    i = 0
    while i + MARK_WORDS <= len(words):
        codes = [_INDEX.get(w) for w in words[i:i + MARK_WORDS]]
        if None not in codes:
            value = 0
            for c in codes:
                value = (value << 12) | c
            payload, check = value >> CHECK_BITS, value & ((1 << CHECK_BITS) - 1)
            if _check(payload) == check:
                out.append(Mark(payload >> (END_BITS + 1), ((payload >> 1) & ((1 << END_BITS) - 1)) * 10,
                                bool(payload & 1)))
                i += MARK_WORDS
                continue
        i += 1
    return out
