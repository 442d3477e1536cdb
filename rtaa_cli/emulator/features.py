"""What handshake features add to a result's words (pure code): speakers, entities, alternatives.

Shapes follow the service's (docs/deepgram-protocol.md §3; deepgram-sdk 7.16 ``ListenV1Results*`` models); the values
are the emulator's own, deterministic, and plausible rather than measured from the service [??]:
- diarization: two speakers that take turns at gaps of at least ``TURN_GAP_S`` between words (a pause
  long enough to be a change of turn in a call), so speaker turns change at utterance boundaries;
- entities: runs of digit words ("one two three") as ``CARDINAL`` entities with their digits as value;
- alternatives (models before nova-2 only): the first alternative is the words as given, each further one
  a less confident variant with one word substituted.
"""
from __future__ import annotations

from collections.abc import Sequence

from rtaa_cli.emulator.transcribers import PLACEHOLDER_WORDS, Word

TURN_GAP_S = 1.0
SPEAKERS = 2

_DIGITS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9"}


class Diarizer:
    """One channel's speaker turns. Finals commit the turn state; interims are labelled from it without
    changing it, so an interim's speakers are those its final will have."""

    __slots__ = ("speaker", "last_end")

    def __init__(self) -> None:
        self.speaker = 0
        self.last_end: float | None = None  # end of the last final word

    def speakers(self, words: Sequence[Word], final: bool) -> list[int]:
        speaker, last = self.speaker, self.last_end
        out = []
        for _, start, end, _ in words:
            if last is not None and start - last >= TURN_GAP_S:
                speaker = (speaker + 1) % SPEAKERS
            out.append(speaker)
            last = end
        if final and words:
            self.speaker, self.last_end = speaker, last
        return out


def find_entities(words: Sequence[Word]) -> list[dict]:
    """``entities[]`` of a final: ``start_word`` inclusive, ``end_word`` exclusive (the SDK's model)."""
    out: list[dict] = []
    i, n = 0, len(words)
    while i < n:
        if words[i][0] not in _DIGITS:
            i += 1
            continue
        j = i
        while j < n and words[j][0] in _DIGITS:
            j += 1
        run = words[i:j]
        out.append({"label": "CARDINAL", "value": "".join(_DIGITS[w[0]] for w in run),
                    "raw_value": " ".join(w[0] for w in run),
                    "confidence": round(sum(w[3] for w in run) / len(run), 4), "start_word": i, "end_word": j})
        i = j
    return out


def alternative_words(words: Sequence[Word], count: int) -> list[list[Word]]:
    """``count`` alternatives of ``words``, best first: alternative k has its confidences scaled by
    ``1 - 0.1 k`` and its k-th word from the end replaced by another placeholder word."""
    out = [list(words)]
    for k in range(1, count):
        alt = [(w, s, e, round(c * (1 - 0.1 * k), 4)) for w, s, e, c in words]
        if alt:
            idx = max(0, len(alt) - k)
            w, s, e, c = alt[idx]
            other = PLACEHOLDER_WORDS[(PLACEHOLDER_WORDS.index(w) + k) % len(PLACEHOLDER_WORDS)] \
                if w in PLACEHOLDER_WORDS else PLACEHOLDER_WORDS[k % len(PLACEHOLDER_WORDS)]
            alt[idx] = (other, s, e, c)
        out.append(alt)
    return out
