"""What the handshake's text parameters do to a result's words (pure code, any engine).

One pass per result, in this order (the service does not document its order [??]; this one keeps each
step's documented effect visible): ``filler_words`` (without it "uh"/"um" are stripped), ``profanity_filter``
(masked with asterisks), ``numerals``/``smart_format`` (runs of number words become one word of digits:
"four one one" -> "411", "nine hundred" -> "900"), ``dictation`` (spoken "comma", "period", ... become
punctuation on the previous word), ``redact`` (number runs the option covers become ``*`` per word, as in
Deepgram's live redaction example), ``replace`` (find:replacement on whole words, last, so what a client
asks to replace is replaced whatever the earlier steps did). ``search`` is answered from the words before
all of this (the service searches the audio, not the formatted text).

Sources: Deepgram's feature pages (Filler Words, Profanity Filtering, Numerals, Smart Format, Dictation,
Redaction, Find and Replace, Search); the shapes the deepgram-sdk result models allow.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Word = tuple[str, float, float, float]  # (word, start_s, end_s, confidence), as transcribers.Word

FILLERS = frozenset({"uh", "um"})  # stripped unless filler_words=true (Deepgram: "the two most common fillers")
# A short list: the emulator's own words never include profanity; recognised words (sphinx) or a client's
# keyterms can.
PROFANITY = frozenset({"fuck", "fucking", "fucked", "shit", "bullshit", "bitch", "bastard", "asshole", "damn",
                       "crap", "dick", "piss", "cunt", "motherfucker"})

_UNITS = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9}
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
          "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000}
_MAX_NUMBER = 10 ** 15  # beyond, a run is read as several numbers (str() of a huge int is slow, then refused)
NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TEENS) | frozenset(_TENS) | frozenset(_SCALES)

DICTATION = {("comma",): ",", ("period",): ".", ("full", "stop"): ".", ("question", "mark"): "?",
             ("exclamation", "mark"): "!", ("exclamation", "point"): "!", ("colon",): ":",
             ("semicolon",): ";", ("new", "line"): "\n", ("new", "paragraph"): "\n\n"}

REDACT_RULES = ("numbers", "pci", "ssn")  # what the emulator can find; "true"/"aggressive_numbers" = numbers


def _is_number_token(text: str) -> bool:
    return text in NUMBER_WORDS or (text.isascii() and text.isdigit())


def _starts_number(text: str) -> bool:
    return text != "oh" and _is_number_token(text) and text not in _SCALES  # "oh" alone is an interjection


def number_digits(tokens: Sequence[str]) -> str:
    """The digits a run of number words is read as: digit by digit ("four one one" -> "411"), or as
    cardinals ("nine hundred" -> "900", "twenty twenty four" -> "2024"): a new number starts wherever the
    next word cannot extend the current one."""
    groups: list[str] = []
    total = current = 0
    last = ""  # kind of the previous token: "unit", "teen", "tens", "scale" ("" once a number is closed)

    def close() -> None:
        nonlocal total, current, last
        if last:
            groups.append(str(total + current))
        total = current = 0
        last = ""

    for tok in tokens:
        if total + current > _MAX_NUMBER:  # "hundred hundred ...": a new number, not an ever larger one
            close()
        if tok.isdigit():
            close()
            groups.append(tok)
        elif tok in _UNITS:
            if last in ("tens", "scale"):  # "twenty four", "nine hundred four"
                current += _UNITS[tok]
            else:
                close()
                current = _UNITS[tok]
            last = "unit"
        elif tok in _TEENS or tok in _TENS:
            if last != "scale":  # "twenty twenty" is two numbers
                close()
            current += _TEENS.get(tok) or _TENS[tok]
            last = "teen" if tok in _TEENS else "tens"
        else:  # a scale: "nine hundred", "two thousand"
            scale = _SCALES[tok]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
            last = "scale"
    close()
    return "".join(groups)


def number_runs(words: Sequence[Word]) -> list[tuple[int, int, str]]:
    """``(start, end, digits)`` for each run of number words (or digit strings), ``end`` exclusive."""
    out = []
    i, n = 0, len(words)
    while i < n:
        if not _starts_number(words[i][0]):
            i += 1
            continue
        j = i + 1
        while j < n and _is_number_token(words[j][0]):
            j += 1
        out.append((i, j, number_digits([w[0] for w in words[i:j]])))
        i = j
    return out


@dataclass(frozen=True)
class TextOptions:
    filler_words: bool = False
    profanity_filter: bool = False
    numerals: bool = False
    dictation: bool = False
    redact: frozenset[str] = frozenset()  # subset of REDACT_RULES
    replace: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()  # (find words, replacement words)


@dataclass(slots=True)
class Formatted:
    words: list[Word]
    marks: list[str]  # punctuation dictated after each word ("" for none)


def _mask(text: str) -> str:
    return "*" * len(text)


def _redact_span(digits: str, rules: frozenset[str], before: Sequence[str]) -> bool:
    n = len(digits)
    if "numbers" in rules and n >= 3:  # "any sequence of three or more consecutive numerals"
        return True
    if "ssn" in rules and n == 9:
        return True
    if "pci" in rules:
        if 13 <= n <= 19:  # card numbers
            return True
        if n in (3, 4) and any(w in ("cvv", "cvc", "code") for w in before):  # card security code [??]
            return True
    return False


def format_words(words: Sequence[Word], opts: TextOptions) -> Formatted:
    out: list[Word] = [w for w in words if opts.filler_words or w[0] not in FILLERS]
    if opts.profanity_filter:
        out = [(_mask(t), s, e, c) if t in PROFANITY else (t, s, e, c) for t, s, e, c in out]
    if opts.numerals and out:
        merged: list[Word] = []
        last = 0
        for i, j, digits in number_runs(out):
            merged.extend(out[last:i])
            run = out[i:j]
            merged.append((digits, run[0][1], run[-1][2], round(sum(w[3] for w in run) / len(run), 4)))
            last = j
        merged.extend(out[last:])
        out = merged
    marks = [""] * len(out)
    if opts.dictation and out:
        kept: list[Word] = []
        kept_marks: list[str] = []
        i = 0
        while i < len(out):
            for phrase, mark in DICTATION.items():
                k = len(phrase)
                if tuple(w[0] for w in out[i:i + k]) == phrase and kept:
                    kept_marks[-1] += mark
                    i += k
                    break
            else:
                kept.append(out[i])
                kept_marks.append("")
                i += 1
        out, marks = kept, kept_marks
    if opts.redact and out:
        for i, j, digits in number_runs(out):
            if _redact_span(digits, opts.redact, [w[0] for w in out[max(0, i - 2):i]]):
                for k in range(i, j):
                    _, s, e, c = out[k]
                    out[k] = ("*", s, e, c)
    if opts.replace and out:
        out, marks = _replace(out, marks, opts.replace)
    return Formatted(out, marks)


def _replace(words: list[Word], marks: list[str], rules) -> tuple[list[Word], list[str]]:
    res: list[Word] = []
    res_marks: list[str] = []
    i = 0
    while i < len(words):
        for find, repl in rules:
            k = len(find)
            if tuple(w[0].lower() for w in words[i:i + k]) == find:
                span = words[i:i + k]
                start, end = span[0][1], span[-1][2]
                conf = round(sum(w[3] for w in span) / k, 4)
                step = (end - start) / len(repl) if repl else 0.0
                for n, text in enumerate(repl):  # the replacement's words share the found span's time
                    res.append((text, round(start + n * step, 3), round(start + (n + 1) * step, 3), conf))
                    res_marks.append("")
                if repl and res_marks:
                    res_marks[-1] = marks[i + k - 1]
                i += k
                break
        else:
            res.append(words[i])
            res_marks.append(marks[i])
            i += 1
    return res, res_marks


def search_hits(words: Sequence[Word], queries: Sequence[str]) -> list[dict]:
    """``channel.search``: per query, its exact word matches as hits (the service matches sounds and
    also reports weak hits [??]; the emulator's words are its audio, so a hit is a match)."""
    out = []
    lowered = [w[0].lower() for w in words]
    for query in queries:
        tokens = query.lower().split()
        hits = []
        k = len(tokens)
        for i in range(len(words) - k + 1) if k else ():
            if lowered[i:i + k] == tokens:
                span = words[i:i + k]
                hits.append({"confidence": round(sum(w[3] for w in span) / k, 4), "start": span[0][1],
                             "end": span[-1][2], "snippet": " ".join(w[0] for w in span)})
        out.append({"query": query, "hits": hits})
    return out
