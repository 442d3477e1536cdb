"""The WER definition (rtaa_cli/wer.py) and a WER bound on fixtures/audio/call.wav through the emulator's
sphinx engine."""
from __future__ import annotations

import asyncio
import random
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import orjson
import pytest
import soundfile as sf
import websockets

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.wer import normalize_words, wer, word_errors
from helpers.paths import FIXTURES

BOUND_S = 150.0  # safety net only: decoding the 27 s call takes ~20-40 s on a loaded 2-core machine


def _levenshtein(a: list[str], b: list[str]) -> int:
    """Textbook O(n*m) oracle for the vectorised version."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_normalisation_ignores_case_and_punctuation_but_keeps_contractions() -> None:
    assert normalize_words("Mr. John's dog, 'quoted' -- OK?") == ["mr", "john's", "dog", "quoted", "ok"]
    assert normalize_words("  \n") == []


@pytest.mark.parametrize("ref,hyp,errors,value", [
    ("a b c d", "a b c d", 0, 0.0),
    ("a b c d", "a x c d", 1, 0.25),  # substitution
    ("a b c d", "a c d", 1, 0.25),  # deletion
    ("a b c d", "a b b c d", 1, 0.25),  # insertion
    ("a b", "x y z w", 4, 2.0),  # can exceed 1
    ("Hello, World.", "hello world", 0, 0.0),
    ("", "", 0, 0.0),
    ("", "extra", 1, 1.0),
    ("a b", "", 2, 1.0),
])
def test_wer_counts_edits(ref: str, hyp: str, errors: int, value: float) -> None:
    r = wer(ref, hyp)
    assert (r.errors, r.value) == (errors, pytest.approx(value))
    assert (r.reference_words, r.hypothesis_words) == (len(normalize_words(ref)), len(normalize_words(hyp)))


def test_vectorised_distance_matches_the_textbook_one() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        assert word_errors(a, b) == _levenshtein(a, b), (a, b)


async def _stream(url: str, pcm: bytes, rate: int) -> list[dict]:
    """Stream ``pcm`` in 36 ms frames to the sphinx emulator as the fake provider does (interims on)."""
    frame = rate * 36 // 1000 * 2
    async with websockets.connect(
            f"{url}/v1/listen?model=nova-3&encoding=linear16&sample_rate={rate}&interim_results=true"
            "&endpointing=300", additional_headers={"Authorization": "Token k"}) as ws:
        for off in range(0, len(pcm), frame):
            await ws.send(pcm[off:off + frame])
        await ws.send('{"type":"CloseStream"}')
        messages = [orjson.loads(m) async for m in ws]  # ends at the emulator's close (1000)
        assert ws.close_code == 1000
    return [m for m in messages if m.get("type") == "Results" and m["is_final"]]


def _emulator_finals(pcm: bytes, rate: int) -> list[dict]:
    """The finals of ``pcm`` streamed through a sphinx emulator of this process."""
    async def run() -> list[dict]:
        async with Emulator(EmulatorConfig(engine="sphinx")) as emu:
            return await _stream(emu.url, pcm, rate)

    return asyncio.run(asyncio.wait_for(run(), BOUND_S))


def _one_lsb_copies(audio: np.ndarray, copies: int, flips: int = 50) -> list[np.ndarray]:
    """``audio`` plus copies that differ from it by +-1 LSB at ``flips`` random samples (fixed seed)."""
    rng = np.random.default_rng(1)
    out = [audio]
    for _ in range(copies):
        a = audio.astype(np.int32)
        idx = rng.integers(0, a.size, flips)
        a[idx] += rng.choice([-1, 1], flips)
        out.append(np.clip(a, -32768, 32767).astype(np.int16))
    return out


@pytest.mark.skipif(not (FIXTURES / "call.wav").exists(), reason="fixtures/audio/call.wav missing")
def test_sphinx_engine_finals_meet_a_wer_bound_on_the_call() -> None:
    """Finals from a whole-utterance decode: WER 0.32 on call.wav; the old finals (end of the live decode,
    whose CMN had not warmed up: "and john dashboard and holy shit ...") scored 0.41. Bound: 0.36.

    One decode's WER is chaotic: flipping 50 of the call's 220,000 samples by one LSB moves it between
    0.324 and 0.380 (2 of 8 copies), and so do a CPU's different floating-point paths (a CI machine scored
    0.380 on the unmodified call). So the bound applies to the mean WER over the call and five such
    copies: the engine's accuracy, not one draw of its noise."""
    audio, rate = sf.read(FIXTURES / "call.wav", dtype="int16")
    copies = _one_lsb_copies(audio, 5)
    reference = (FIXTURES / "call.txt").read_text()
    results = []
    # One emulator per process, two processes (one per core): decodes in one process share its GIL.
    with ProcessPoolExecutor(2) as pool:
        all_finals = list(pool.map(_emulator_finals, [a.tobytes() for a in copies], [rate] * len(copies)))
    for finals in all_finals:
        hypothesis = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals)
        results.append(wer(reference, hypothesis))
        assert results[-1].hypothesis_words > 50, hypothesis
    values = [round(r.value, 3) for r in results]
    mean = sum(r.value for r in results) / len(results)
    assert mean <= 0.36, f"mean WER {mean:.3f} over {values}"


@pytest.mark.skipif(not (FIXTURES / "call.wav").exists(), reason="fixtures/audio/call.wav missing")
def test_the_audio_watermark_leaves_the_sphinx_wer_unchanged() -> None:
    """The callers' LSB watermark (rtaa_cli/watermark.py, one LSB of every sample) on call.wav, three
    different calls' marks: the same mean bound as the unmarked call above, and each mark inside the
    engine's own 1-LSB noise (0.324-0.380). Measured on this machine: unmarked call + two 1-LSB copies
    0.324 / 0.324 / 0.338, marked 0.324 / 0.324 / 0.338."""
    from rtaa_cli.watermark import Marker

    audio, rate = sf.read(FIXTURES / "call.wav", dtype="int16")
    marked = [Marker(f"CAwer{i}").mark(audio.tobytes(), 0) for i in range(3)]
    assert all(m != audio.tobytes() for m in marked)
    reference = (FIXTURES / "call.txt").read_text()
    with ProcessPoolExecutor(2) as pool:
        all_finals = list(pool.map(_emulator_finals, marked, [rate] * len(marked)))
    values = [wer(reference, " ".join(m["channel"]["alternatives"][0]["transcript"] for m in f)).value
              for f in all_finals]
    assert sum(values) / len(values) <= 0.36 and max(values) <= 0.380, values
