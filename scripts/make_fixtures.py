#!/usr/bin/env python3
"""Regenerate fixtures/audio/ from public-domain LibriVox speech (not run by CI; outputs are committed).

Source: the five LibriVox clips of *Sense and Sensibility* (16 kHz, with transcripts and forced
alignments) in the pocketsphinx 5.1.1 source distribution, ``test/data/librivox/``. Pass
``--sdist DIR`` for an unpacked sdist; otherwise ``/tmp/psdist/pocketsphinx-5.1.1`` is used if it
exists, else the sdist is fetched with ``pip download --no-binary :all: --no-deps pocketsphinx==5.1.1``.

Writes:
  call.wav        8 kHz mono s16: the five clips, 0.7 s of silence between them (~25 s)
  call.txt        full transcript, one clip per line
  call.json       per-segment start/end seconds, speech start/end and word times, text
  hold.wav        8 kHz mono s16: clip 1, 12.5 s of silence (a hold), clip 2
  hold.json       same sidecar format as call.json
  stereo_44k.wav  44.1 kHz stereo 32-bit float (clip 2 left, clip 2 at -6 dB delayed 5 ms right):
                  exercises downmix, resampling and float conversion
  SOURCES.md      origin and licence
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import soundfile
import soxr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rtaa_cli.audio import load_audio  # noqa: E402  (the same soxr conversion replay uses)

RATE = 8000
GAP_S = 0.7
HOLD_S = 12.5
DEFAULT_SDIST = "/tmp/psdist/pocketsphinx-5.1.1"
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "audio")


def find_sdist(given: str | None) -> str:
    if given:
        return given
    if os.path.isdir(DEFAULT_SDIST):
        return DEFAULT_SDIST
    tmp = tempfile.mkdtemp(prefix="psdist-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    "pocketsphinx==5.1.1", "-d", tmp], check=True)
    with tarfile.open(glob.glob(os.path.join(tmp, "pocketsphinx-5.1.1.tar.gz"))[0]) as tar:
        tar.extractall(tmp, filter="data")
    return os.path.join(tmp, "pocketsphinx-5.1.1")


def load_clips(sdist: str) -> list[dict]:
    base = os.path.join(sdist, "test", "data", "librivox")
    with open(os.path.join(base, "fileids")) as f:
        ids = [line.strip() for line in f if line.strip()]
    clips = []
    for clip_id in ids:
        stem = os.path.join(base, clip_id)
        pcm = np.frombuffer(load_audio(stem + ".wav", RATE).pcm, dtype="<i2")
        with open(stem + ".txt") as f:
            text = " ".join(f.read().split())
        with open(stem + ".json") as f:
            align = json.loads(f.readline())  # first line: the utterance with word alignments
        words = [{"word": w["t"].split("(")[0], "start": w["b"], "end": round(w["b"] + w["d"], 3)}
                 for w in align["w"] if not w["t"].startswith("<")]
        clips.append({"id": clip_id, "pcm": pcm, "text": text, "words": words})
    return clips


def assemble(clips: list[dict], gaps: list[float]) -> tuple[np.ndarray, list[dict]]:
    parts, segments, t = [], [], 0.0
    for i, clip in enumerate(clips):
        duration = len(clip["pcm"]) / RATE
        segments.append({
            "source": clip["id"],
            "start": round(t, 3),
            "end": round(t + duration, 3),
            "speech_start": round(t + clip["words"][0]["start"], 3),
            "speech_end": round(t + clip["words"][-1]["end"], 3),
            "text": clip["text"],
            "words": [{**w, "start": round(t + w["start"], 3), "end": round(t + w["end"], 3)} for w in clip["words"]],
        })
        parts.append(clip["pcm"])
        t += duration
        if i < len(gaps):
            parts.append(np.zeros(int(round(gaps[i] * RATE)), dtype="<i2"))
            t += gaps[i]
    return np.concatenate(parts), segments


def write_sidecar(path: str, wav_name: str, audio: np.ndarray, segments: list[dict]) -> None:
    doc = {"audio": wav_name, "sample_rate": RATE, "duration": round(len(audio) / RATE, 3), "segments": segments}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="unpacked pocketsphinx-5.1.1 sdist")
    args = parser.parse_args()
    clips = load_clips(find_sdist(args.sdist))
    os.makedirs(OUT, exist_ok=True)

    call, segments = assemble(clips, [GAP_S] * (len(clips) - 1))
    soundfile.write(os.path.join(OUT, "call.wav"), call, RATE, subtype="PCM_16")
    with open(os.path.join(OUT, "call.txt"), "w") as f:
        f.write("\n".join(c["text"] for c in clips) + "\n")
    write_sidecar(os.path.join(OUT, "call.json"), "call.wav", call, segments)

    hold, hold_segments = assemble(clips[:2], [HOLD_S])
    soundfile.write(os.path.join(OUT, "hold.wav"), hold, RATE, subtype="PCM_16")
    write_sidecar(os.path.join(OUT, "hold.json"), "hold.wav", hold, hold_segments)

    speech = clips[1]["pcm"].astype(np.float32) / 32768.0
    left = soxr.resample(speech, RATE, 44100, quality="HQ")
    delay = int(0.005 * 44100)
    right = np.concatenate([np.zeros(delay, np.float32), left[:-delay]]) * 0.5
    soundfile.write(os.path.join(OUT, "stereo_44k.wav"), np.stack([left, right], axis=1), 44100, subtype="FLOAT")

    with open(os.path.join(OUT, "SOURCES.md"), "w") as f:
        f.write(SOURCES)
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):>9}  fixtures/audio/{name}")


SOURCES = """# Audio fixtures: sources and licence

Regenerate with `python scripts/make_fixtures.py` (needs the pocketsphinx 5.1.1 sdist; see the script).

| file | what |
|---|---|
| `call.wav` | 8 kHz mono 16-bit, ~25 s: the five clips below in order, 0.7 s of digital silence between them, resampled 16 kHz -> 8 kHz with soxr (HQ). |
| `call.txt` | its transcript, one clip per line (verbatim from the source, including the reader's "a amiable"). |
| `call.json` | per segment: `start`/`end` (clip bounds, seconds in call.wav), `speech_start`/`speech_end` and `words[]` (from the source's forced alignment, shifted), `text`. |
| `hold.wav` / `hold.json` | 8 kHz mono 16-bit: clip 0870, 12.5 s of digital silence (a hold), clip 0880. |
| `stereo_44k.wav` | 44.1 kHz stereo 32-bit float, clip 0880: left as is, right at -6 dB delayed 5 ms. For the conversion path (downmix, resample, float -> int16). |

## Origin

Jane Austen, *Sense and Sensibility*, chapter 1, read for LibriVox
(`sense_and_sensibility_01_austen_64kb`, segments 0870, 0880, 0890, 0920, 0930), as shipped in the
pocketsphinx 5.1.1 source distribution (`test/data/librivox/*.wav`, `*.txt`, `*.json`;
https://pypi.org/project/pocketsphinx/5.1.1/, https://github.com/cmusphinx/pocketsphinx).

## Licence

LibriVox recordings are in the public domain (https://librivox.org/pages/public-domain/), as is the
text. The forced alignments come from pocketsphinx's test data (BSD-2-Clause-style licence,
see the sdist's LICENSE); the derived files here are offered under the same public-domain status
as the recordings where applicable.
"""

if __name__ == "__main__":
    main()
