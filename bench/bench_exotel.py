"""Per-frame cost of the Exotel codec on the ingest's hot path, against a naive baseline in the same run.

Baseline: ``json.loads`` + ``base64.b64decode`` (what a naive forwarder does, docs/architecture.md). rtaa:
``rtaa_cli.protocols.exotel.parse_event`` (orjson + strict binascii + validation of every field) and the
caller side ``StreamEncoder.media``. Prints microseconds per frame and the ratio to the baseline.

    python bench/bench_exotel.py [--frames 20000]
"""
from __future__ import annotations

import argparse
import base64
import json
import time

from rtaa_cli.protocols.exotel import StreamEncoder, build_media, parse_event

PCM = bytes(range(256)) * 2 + bytes(64)  # 576 B: 36 ms at 8 kHz


def per_frame_us(fn, frames: list, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for f in frames:
            fn(f)
        best = min(best, time.perf_counter() - t)
    return best / len(frames) * 1e6


def naive_parse(text: str) -> bytes:
    msg = json.loads(text)
    return base64.b64decode(msg["media"]["payload"])


def naive_build(pcm: bytes, seq=[0]) -> str:  # noqa: B006 - a counter, on purpose
    seq[0] += 1
    return json.dumps({"event": "media", "sequence_number": str(seq[0]), "stream_sid": "ST",
                       "media": {"chunk": str(seq[0]), "timestamp": str(seq[0] * 36),
                                 "payload": base64.b64encode(pcm).decode()}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=20000)
    args = parser.parse_args()
    texts = [build_media("ST" + "0" * 32, k + 2, k + 1, 36 * (k + 1), PCM) for k in range(args.frames)]
    pcms = [PCM] * args.frames

    base_parse = per_frame_us(naive_parse, texts)
    rtaa_parse = per_frame_us(parse_event, texts)
    base_build = per_frame_us(naive_build, pcms)
    enc = StreamEncoder("ST" + "0" * 32, "CA1")
    rtaa_build = per_frame_us(enc.media, pcms)
    print(f"parse media frame : naive {base_parse:6.2f} us   rtaa {rtaa_parse:6.2f} us   ratio {rtaa_parse / base_parse:.2f}x")
    print(f"build media frame : naive {base_build:6.2f} us   rtaa {rtaa_build:6.2f} us   ratio {rtaa_build / base_build:.2f}x")


if __name__ == "__main__":
    main()
