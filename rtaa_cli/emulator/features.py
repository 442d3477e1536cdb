"""What handshake features add to a result's words (pure code): speakers, entities, alternatives.

Shapes follow the service's (docs/deepgram-protocol.md §3; deepgram-sdk 7.16 ``ListenV1Results*`` models); the values
are the emulator's own, deterministic, and plausible rather than measured from the service [??]:
- diarization: two speakers that take turns at gaps of at least ``TURN_GAP_S`` between words (a pause
  long enough to be a change of turn in a call), so speaker turns change at utterance boundaries;
- entities: runs of number words or digits ("one two three", "411") as ``CARDINAL`` entities with their
  digits as value;
- alternatives (models before nova-2 only): the first alternative is the words as given, each further one
  a less confident variant with one word substituted.
"""
from __future__ import annotations

from collections.abc import Sequence

from rtaa_cli.emulator.textfmt import number_runs
from rtaa_cli.emulator.transcribers import PLACEHOLDER_WORDS, Word

TURN_GAP_S = 1.0
SPEAKERS = 2


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
    """``entities[]`` of a final: each run of number words or digits (textfmt.number_runs, the same runs
    numerals and redaction see) as a ``CARDINAL``; ``start_word`` inclusive, ``end_word`` exclusive (the
    SDK's model). ``raw_value`` is the words as sent (with numerals on, the digits) [??]."""
    out: list[dict] = []
    for i, j, digits in number_runs(words):
        run = words[i:j]
        out.append({"label": "CARDINAL", "value": digits, "raw_value": " ".join(w[0] for w in run),
                    "confidence": round(sum(w[3] for w in run) / len(run), 4), "start_word": i, "end_word": j})
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
