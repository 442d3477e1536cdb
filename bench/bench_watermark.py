"""False detections of the LSB watermark decoder on unmarked audio, and its cost per frame.

Feeds the decoder (rtaa_cli.watermark.Decoder) unmarked 8 kHz s16le audio in 36 ms frames: the fixture
speech (fixtures/audio/*.wav, each pass at a different gain so the LSBs differ), white noise at several
levels (down to +-1 LSB), and digital silence / DC. Counts locked call ids (false attributions: must be
0). Then the cost per frame of
marked audio (locked) and unmarked audio (searching).

    python bench/bench_watermark.py                   # 10^6 frames (~2.8 h of audio per kind mix)
    python bench/bench_watermark.py --frames 100000
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtaa_cli.audio import load_audio  # noqa: E402
from rtaa_cli.watermark import Decoder, Marker  # noqa: E402

FRAME = 288  # samples in a 36 ms frame at 8 kHz
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "audio")


def sources(rng: np.random.Generator):
    """Endless unmarked sources, (name, int16 block) pairs, cycling through every kind."""
    speech = [np.frombuffer(load_audio(p, 8000).pcm, dtype="<i2").astype(np.float64)
              for p in sorted(glob.glob(os.path.join(FIXTURES, "*.wav")))]
    while True:
        for i, s in enumerate(speech):
            gain = rng.uniform(0.3, 1.5)
            yield f"speech{i}", np.clip(np.rint(s * gain), -32768, 32767).astype(np.int16)
        for level in (1.0, 3.0, 100.0, 3000.0):
            yield f"noise{level:g}", np.clip(np.rint(rng.normal(0, level, 8000 * 60)), -32768, 32767).astype(np.int16)
        yield "silence", np.zeros(8000 * 30, dtype=np.int16)
        yield "dc", np.full(8000 * 30, int(rng.integers(-500, 500)), dtype=np.int16)


def false_detections(frames: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    done, locks, by_kind = 0, 0, {}
    gen = sources(rng)
    t0 = time.perf_counter()
    while done < frames:
        name, block = next(gen)
        n = min(block.shape[0] // FRAME, frames - done)
        dec = Decoder(sparse=False)  # every position searched: the worst case
        data = block[:n * FRAME].tobytes()
        for k in range(n):
            dec.feed(data[k * FRAME * 2:(k + 1) * FRAME * 2])
        locks += len(dec.calls)
        by_kind[name] = by_kind.get(name, 0) + n
        done += n
    return {"frames": done, "samples": done * FRAME, "false_locks": locks,
            "seconds": time.perf_counter() - t0, "by_kind": by_kind}


def cost_per_frame(marked: bool, sparse: bool = True, seconds: int = 60) -> float:
    rng = np.random.default_rng(2)
    pcm = np.clip(np.rint(rng.normal(0, 2000, 8000 * seconds)), -32768, 32767).astype("<i2").tobytes()
    frames = [pcm[i:i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2)]
    if marked:
        frames = Marker("CAbench").mark_frames(frames)
    dec = Decoder(sparse)
    t0 = time.perf_counter()
    for f in frames:
        dec.feed(f)
    return (time.perf_counter() - t0) / len(frames) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    args = ap.parse_args()
    r = false_detections(args.frames)
    print(f"unmarked audio: {r['frames']} frames of 36 ms ({r['samples']} samples, {r['samples'] / 8000 / 3600:.1f} h) "
          f"in {r['seconds']:.0f} s: false attributions (locked call ids) = {r['false_locks']}")
    print("  by source (frames): " + ", ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items())))
    print(f"decoder cost per 36 ms frame: marked (locked) {cost_per_frame(True):.1f} us, "
          f"unmarked (searching, as the emulator does: sparse after 2 s) {cost_per_frame(False):.1f} us, "
          f"unmarked (searching every sample) {cost_per_frame(False, sparse=False):.1f} us")


if __name__ == "__main__":
    main()
