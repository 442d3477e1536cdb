"""Word error rate: the one definition used by ``rtaa replay`` (sidecar transcripts) and the tests.

WER = (substitutions + deletions + insertions) / reference words, from a word-level Levenshtein
alignment of normalised text (lower case; words are runs of letters, digits and apostrophes, so
punctuation and capitalisation never count as errors). It can exceed 1.0 when the hypothesis has many
extra words. An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.

The dynamic programme keeps one row of ``len(hypothesis) + 1`` integers and is vectorised per
reference word with numpy (the in-row insertion chain is a running minimum), so a one-hour call
(~10 000 words each side) takes well under a second and O(words) memory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[0-9a-z']+")


def normalize_words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped ("Mr. John's," -> ["mr", "john's"])."""
    return [w for w in (m.strip("'") for m in _WORD.findall(text.lower())) if w]


@dataclass(frozen=True)
class WerResult:
    value: float  # (substitutions + deletions + insertions) / reference_words
    reference_words: int
    hypothesis_words: int
    errors: int  # the edit distance in words


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (unit costs)."""
    if not reference or not hypothesis:
        return len(reference) + len(hypothesis)
    ids: dict[str, int] = {}
    ref = np.array([ids.setdefault(w, len(ids)) for w in reference], dtype=np.int64)
    hyp = np.array([ids.setdefault(w, len(ids)) for w in hypothesis], dtype=np.int64)
    cols = np.arange(hyp.size + 1, dtype=np.int64)
    row = cols.copy()  # distance from the empty reference prefix: j insertions
    step = np.empty_like(row)
    for i, word in enumerate(ref, start=1):
        # Deletion (from above) and substitution/match (diagonal) first ...
        step[0] = i
        np.minimum(row[1:] + 1, row[:-1] + (hyp != word), out=step[1:])
        # ... then insertions along the row: d[j] = min_k<=j (step[k] + j - k), a running minimum.
        row = np.minimum.accumulate(step - cols) + cols
    return int(row[-1])


def wer(reference: str, hypothesis: str) -> WerResult:
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    errors = word_errors(ref, hyp)
    value = errors / len(ref) if ref else float(bool(hyp))
    return WerResult(value=value, reference_words=len(ref), hypothesis_words=len(hyp), errors=errors)
