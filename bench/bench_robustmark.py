"""The robust call mark (rtaa_cli/robustmark.py): detection after resampling/gain/re-chunking, false
attributions on unmarked audio, and its cost.

1. Detection: the fixtures' speech (fixtures/audio/call.wav, hold.wav) and the soak's synthetic audio,
   marked as rtaa's callers mark it (robust mark + LSB code) for a fresh call id each trial, a window of
   W seconds from a random offset (a connection that carries part of a call), then transformed as a
   target might: unchanged, soxr to 16 kHz, a plain linear-interpolation 2x upsampler, a windowed-sinc
   polyphase 2x upsampler, gain +6 / -6 dB, soxr 16 kHz with -6 dB, mu-law round trip; always re-chunked
   at random sizes. Counts right, wrong (another call id: a false attribution) and none.
2. Null: >= 10^6 36 ms frames of unmarked audio through the detector with its real thresholds, as
   connections of 10-60 s: the fixtures' speech at random gains with white noise added, noise alone,
   digital silence, DC, tones, the synthetic bursts, LSB-marked-only speech; a quarter at 16 kHz
   (the resampling path). Prints the decisions (false attributions, must be 0) and the sync z-score
   distribution over every analysis (what Z_SYNC is chosen against).
3. Cost per 36 ms frame: the detector (8 kHz marked, 8 kHz unmarked, 16 kHz unmarked) and the marker
   (LSB code alone vs with the robust mark), and the emulator's stream core (Session) per frame with the
   robust detector and without it, same run (ratio).
4. (--wer N) The sphinx WER of call.wav unmarked, with the LSB code alone, and with both marks.

    python bench/bench_robustmark.py                     # 10^6 null frames, 200 trials per cell
    python bench/bench_robustmark.py --frames 100000 --trials 50
    python bench/bench_robustmark.py --skip detection,null,cost --wer 8   # sphinx WER with and without
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import soxr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtaa_cli import robustmark  # noqa: E402
from rtaa_cli.audio import load_audio  # noqa: E402
from rtaa_cli.emulator.audio import MULAW_TO_PCM16  # noqa: E402
from rtaa_cli.soak.audioset import synthetic_pcm  # noqa: E402
from rtaa_cli.watermark import Marker, call_id  # noqa: E402


class DetectorOff:
    """The emulator's robust-mark detector, switched off (bench only: the emulator has no switch for it)."""

    def __init__(self, rate: int) -> None:
        pass

    def feed_samples(self, samples) -> None:
        pass

    def report(self, final: bool = True) -> None:
        return None


FRAME = 288  # samples in a 36 ms frame at 8 kHz
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "audio")


def speech() -> list[np.ndarray]:
    return [np.frombuffer(load_audio(p, 8000).pcm, dtype="<i2") for p in sorted(glob.glob(os.path.join(FIXTURES, "*.wav")))]


def _s16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def linear2x(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    y = np.empty(2 * x.shape[0])
    y[0::2] = x
    y[1::2] = np.concatenate(((x[:-1] + x[1:]) / 2, x[-1:]))
    return y


def linear2x_delayed(x: np.ndarray) -> np.ndarray:
    """The other common linear 2x: each input sample lands on the odd output, the even one between
    (a half-sample delay at 8 kHz, as tests/thirdparty/target.py --resampler linear does)."""
    x = x.astype(np.float64)
    y = np.empty(2 * x.shape[0])
    y[1::2] = x
    y[0::2] = np.concatenate((x[:1], (x[:-1] + x[1:]) / 2))
    return y


_TAPS = 32
_SINC = np.sinc(np.arange(-_TAPS + 0.5, _TAPS + 0.5) / 1.0) * np.hamming(2 * _TAPS)  # half-sample phase


def polyphase2x(x: np.ndarray) -> np.ndarray:
    """2x upsampling with a 64-tap Hamming-windowed sinc for the odd phase (a plain polyphase resampler)."""
    x = x.astype(np.float64)
    odd = np.convolve(x, _SINC / _SINC.sum(), "full")[_TAPS:_TAPS + x.shape[0]]
    y = np.empty(2 * x.shape[0])
    y[0::2], y[1::2] = x, odd
    return y


def _mulaw(x: np.ndarray) -> np.ndarray:
    """int16 -> mu-law byte -> int16 (G.711 via the emulator's table: nearest code)."""
    table = MULAW_TO_PCM16.astype(np.int32)
    order = np.argsort(table)
    srt = table[order]
    i = np.clip(np.searchsorted(srt, x.astype(np.int32)), 1, 255)
    pick = np.where(np.abs(srt[i] - x) < np.abs(srt[i - 1] - x), i, i - 1)
    return table[order[pick]].astype(np.int16)


TRANSFORMS = {
    "unchanged": (8000, lambda x: x),
    "soxr 16 kHz": (16000, lambda x: _s16(soxr.resample(x.astype(np.float32), 8000, 16000))),
    "linear 16 kHz": (16000, lambda x: _s16(linear2x(x))),
    "linear 16k, delayed": (16000, lambda x: _s16(linear2x_delayed(x))),
    "polyphase 16 kHz": (16000, lambda x: _s16(polyphase2x(x))),
    "gain +6 dB": (8000, lambda x: _s16(x * 2.0)),
    "gain -6 dB": (8000, lambda x: _s16(x * 0.5)),
    "soxr 16 kHz, -6 dB": (16000, lambda x: _s16(soxr.resample(x.astype(np.float32), 8000, 16000) * 0.5)),
    "mu-law": (8000, _mulaw),
}


def feed(det: robustmark.Detector, x: np.ndarray, rng: np.random.Generator) -> None:
    i = 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 1200))
        det.feed_samples(x[i:i + n])
        i += n


def detection(trials: int, windows: tuple[float, ...], seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    sources = {"speech": speech(), "synthetic": [np.frombuffer(synthetic_pcm(60.0), dtype="<i2")]}
    print(f"detection: {trials} trials per cell (random call id, window offset and chunking); right / wrong / none, "
          "median seconds of audio to the decision")
    print(f"{'source':>9} | {'transform':>20} | " + " | ".join(f"{w:>4g} s window    " for w in windows))
    for sname, clips in sources.items():
        for tname, (rate, fn) in TRANSFORMS.items():
            cells = []
            for w in windows:
                right = wrong = none = 0
                found = []
                for t in range(trials):
                    clip = clips[t % len(clips)]
                    sid = f"CAdet{seed}-{sname}-{tname}-{w}-{t}"
                    start = int(rng.integers(0, max(1, clip.shape[0] - int(w * 8000))))
                    # the call's audio from its first sample (the mark's phase), then the window of it
                    pcm = clip.tobytes()  # marked frame by frame, as callers do (a gate follows each frame)
                    marked = b"".join(Marker(sid, robust=True).mark_frames(
                        [pcm[i:i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]))
                    x = np.frombuffer(marked, dtype="<i2")[start:start + int(w * 8000)]
                    y = fn(x)
                    det = robustmark.Detector(rate)
                    feed(det, y, rng)
                    r = det.report()
                    if r is None:
                        none += 1
                    elif r["call"] == f"{call_id(sid):08x}":
                        right += 1
                        found.append(r["found_after_s"])
                    else:
                        wrong += 1
                med = f"{np.median(found):.1f}" if found else "-"
                cells.append(f"{right:>3}/{wrong}/{none:<3} {med:>4} s")
            print(f"{sname:>9} | {tname:>20} | " + " | ".join(cells), flush=True)


def null_sources(rng: np.random.Generator):
    clips = speech()
    syn = np.frombuffer(synthetic_pcm(60.0), dtype="<i2")
    while True:
        for i, s in enumerate(clips):
            gain = rng.uniform(0.3, 2.0)
            noise = rng.normal(0, rng.choice([0.5, 3.0, 30.0, 100.0]), s.shape[0])
            yield f"speech{i}+noise", _s16(s * gain + noise)
        yield "speech LSB-only", np.frombuffer(Marker(f"CAlsb{rng.integers(1 << 30)}", robust=False).mark(
            clips[0].tobytes(), 0), dtype="<i2")
        for level in (1.0, 30.0, 300.0, 3000.0):
            yield f"noise{level:g}", _s16(rng.normal(0, level, 8000 * 30))
        yield "silence", np.zeros(8000 * 20, dtype=np.int16)
        yield "dc", np.full(8000 * 20, int(rng.integers(-500, 500)), dtype=np.int16)
        t = np.arange(8000 * 20) / 8000
        yield "tones", _s16(3000 * np.sin(2 * np.pi * rng.uniform(100, 3900) * t) + 1000 * np.sin(2 * np.pi * 1953.125 * t))
        yield "synthetic", syn


def null(frames: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    done = decisions = conns = 0
    zs: list[float] = []
    by_kind: dict[str, int] = {}
    gen = null_sources(rng)
    t0 = time.perf_counter()
    while done < frames:
        name, block = next(gen)
        # a connection of 10-60 s: the block looped to that length (long unmarked connections)
        seconds = float(rng.uniform(10, 60))
        x = np.resize(block, int(seconds * 8000))
        rate = 8000
        if rng.random() < 0.25:
            rate, x = 16000, _s16(soxr.resample(x.astype(np.float32), 8000, 16000))
        n = min(int(seconds * 8000) // FRAME, frames - done)
        det = robustmark.Detector(rate)
        det.trace = zs
        step = FRAME * rate // 8000
        for k in range(n):
            det.feed_samples(x[k * step:(k + 1) * step])
        decisions += det.report() is not None
        conns += 1
        by_kind[name] = by_kind.get(name, 0) + n
        done += n
    z = np.array(zs)
    return {"frames": done, "connections": conns, "decisions": decisions, "analyses": z.size,
            "z_max": float(z.max()), "z_p50": float(np.median(z)), "z_p999": float(np.quantile(z, 0.999)),
            "over_5": int((z > 5).sum()), "over_6": int((z > 6).sum()),
            "seconds": time.perf_counter() - t0, "by_kind": by_kind}


def cost(seconds: int = 60) -> None:
    rng = np.random.default_rng(2)
    x = _s16(rng.normal(0, 2000, 8000 * seconds))
    marked = np.frombuffer(Marker("CAcost", robust=True).mark(x.tobytes(), 0), dtype="<i2")
    x16 = _s16(soxr.resample(x.astype(np.float32), 8000, 16000))
    for name, rate, y in (("8 kHz marked", 8000, marked), ("8 kHz unmarked", 8000, x), ("16 kHz unmarked", 16000, x16)):
        step = FRAME * rate // 8000
        det = robustmark.Detector(rate)
        t0 = time.perf_counter()
        for k in range(y.shape[0] // step):
            det.feed_samples(y[k * step:(k + 1) * step])
        det.report()
        us = (time.perf_counter() - t0) / (y.shape[0] // step) * 1e6
        print(f"detector cost per 36 ms frame, {name}: {us:.1f} us")
    pcm = x.tobytes()
    frames = [pcm[i:i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2)]
    for robust in (False, True):
        m = Marker("CAcost", robust=robust)
        t0 = time.perf_counter()
        m.mark_frames(frames)
        us = (time.perf_counter() - t0) / len(frames) * 1e6
        print(f"marker cost per 36 ms frame, {'LSB code + robust mark' if robust else 'LSB code alone'}: {us:.1f} us")


def session_cost(streams: int = 40, seconds: float = 20.0, rounds: int = 5) -> None:
    """CPU (process time) of the emulator's sans-I/O stream core (Session: decoding, LSB decoder,
    segmenter, results) per 36 ms frame, with the robust detector and without it (swapped out), in
    alternating rounds of the same run; the minimum per variant (least disturbed by other work)."""
    from urllib.parse import parse_qsl

    from rtaa_cli.emulator import session as session_mod
    from rtaa_cli.emulator.params import parse_listen_params
    from rtaa_cli.emulator.transcribers import PlaceholderTranscriber

    real = session_mod.RobustMarkDetector

    clip = speech()[0]
    audio = {"unmarked 8 kHz": (8000, np.resize(clip, int(seconds * 8000))),
             "marked 8 kHz (both marks)": (8000, np.frombuffer(Marker("CAsess", robust=True).mark(
                 np.resize(clip, int(seconds * 8000)).tobytes(), 0), dtype="<i2")),
             "marked 8 kHz (LSB code only, the default)": (8000, np.frombuffer(Marker("CAsess", robust=False).mark(
                 np.resize(clip, int(seconds * 8000)).tobytes(), 0), dtype="<i2")),
             "unmarked 16 kHz": (16000, _s16(soxr.resample(np.resize(clip, int(seconds * 8000)).astype(np.float32),
                                                           8000, 16000)))}
    for name, (rate, x) in audio.items():
        params = parse_listen_params(parse_qsl(f"model=nova-3&encoding=linear16&sample_rate={rate}&interim_results=true"
                                               "&endpointing=300"))
        step = FRAME * rate // 8000
        frames = [x[i:i + step].tobytes() for i in range(0, x.shape[0] - step + 1, step)]
        best = {"with": float("inf"), "without": float("inf")}
        for _ in range(rounds):
            for variant in ("with", "without"):
                session_mod.RobustMarkDetector = real if variant == "with" else DetectorOff
                sessions = [session_mod.Session(params, request_id="r", created="c", now=0.0, idle_timeout_s=1e9,
                                                delay_s=lambda: 0.0,
                                                transcriber_factory=lambda r: PlaceholderTranscriber(r))
                            for _ in range(streams)]
                t0 = time.process_time()
                for k, f in enumerate(frames):
                    for sess in sessions:
                        sess.receive_audio(f, k * 0.036)
                        sess.data_to_send()
                for sess in sessions:
                    if sess.robust_mark is not None:
                        sess.robust_mark.report(final=True)
                best[variant] = min(best[variant], (time.process_time() - t0) / (len(frames) * streams) * 1e6)
        session_mod.RobustMarkDetector = real
        print(f"emulator session CPU per 36 ms frame, {name}: {best['with']:.1f} us with the robust detector, "
              f"{best['without']:.1f} us without (ratio {best['with'] / best['without']:.2f}; at 500 real-time "
              f"streams: {best['with'] * 500 / 36e3 * 100:.0f} % vs {best['without'] * 500 / 36e3 * 100:.0f} % of a core)",
              flush=True)


def _finals_wer(pcm: bytes) -> float:
    """WER of call.wav's reference against the finals of ``pcm`` through a sphinx emulator (one process)."""
    import asyncio

    import orjson
    import websockets

    from rtaa_cli.emulator import Emulator, EmulatorConfig
    from rtaa_cli.wer import wer

    async def run() -> list[dict]:
        async with Emulator(EmulatorConfig(engine="sphinx")) as emu:
            async with websockets.connect(f"{emu.url}/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000"
                                          "&interim_results=true&endpointing=300",
                                          additional_headers={"Authorization": "Token k"}) as ws:
                for off in range(0, len(pcm), 576):
                    await ws.send(pcm[off:off + 576])
                await ws.send('{"type":"CloseStream"}')
                messages = [orjson.loads(x) async for x in ws]
                return [m for m in messages if m.get("type") == "Results" and m["is_final"]]

    finals = asyncio.run(run())
    reference = open(os.path.join(FIXTURES, "call.txt")).read()
    return wer(reference, " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals)).value


def wer_with_and_without(copies: int, robust_only: bool = False) -> None:
    """Sphinx WER of call.wav: unmarked (and copies with 50 samples moved by 1 LSB: the engine's own noise),
    LSB code alone, LSB code + robust mark (a different call id per copy)."""
    from concurrent.futures import ProcessPoolExecutor

    audio = np.frombuffer(load_audio(os.path.join(FIXTURES, "call.wav"), 8000).pcm, dtype="<i2")
    rng = np.random.default_rng(1)
    conditions: dict[str, list[bytes]] = {"unmarked (+ 1-LSB copies)": [audio.tobytes()]}
    for _ in range(copies - 1):
        a = audio.astype(np.int32)
        idx = rng.integers(0, a.size, 50)
        a[idx] += rng.choice([-1, 1], 50)
        conditions["unmarked (+ 1-LSB copies)"].append(_s16(a).tobytes())
    if not robust_only:
        conditions["LSB code alone"] = [Marker(f"CAwer{i}", robust=False).mark(audio.tobytes(), 0) for i in range(copies)]
    else:
        conditions.clear()
    frames = [audio[i:i + FRAME].tobytes() for i in range(0, audio.shape[0], FRAME)]  # marked as callers do
    gate = "" if robustmark.GATE_DB is None else f", gated {robustmark.GATE_DB:g} dB below each frame"
    conditions[f"LSB code + robust mark ({robustmark.LEVEL_DBFS:g} dBFS{gate})"] = [
        b"".join(Marker(f"CAwer{i}", robust=True).mark_frames(frames)) for i in range(copies)]
    with ProcessPoolExecutor(2) as pool:
        for name, pcms in conditions.items():
            values = list(pool.map(_finals_wer, pcms))
            print(f"sphinx WER, {name}: mean {np.mean(values):.3f}, min {min(values):.3f}, max {max(values):.3f} "
                  f"({', '.join(f'{v:.3f}' for v in values)})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: detection,null,cost,session")
    ap.add_argument("--wer", type=int, default=0, help="also the sphinx WER of call.wav, N copies per condition (slow)")
    ap.add_argument("--wer-robust-only", action="store_true", help="with --wer: only the robust-mark condition")
    ap.add_argument("--level", type=float, help="the mark's level in dBFS (default robustmark.LEVEL_DBFS)")
    ap.add_argument("--gate", type=float, help="keep each frame's mark this many dB below the frame (robustmark.GATE_DB)")
    args = ap.parse_args()
    if args.level is not None:
        robustmark.LEVEL_DBFS = args.level
    if args.gate is not None:
        robustmark.GATE_DB = args.gate
    skip = set(args.skip.split(","))
    print(f"robust mark: {robustmark.LEVEL_DBFS:g} dBFS, period {robustmark.PERIOD}, Z_SYNC {robustmark.Z_SYNC:g}, "
          f"Z_DATA {robustmark.Z_DATA:g}")
    if "detection" not in skip:
        detection(args.trials, (2.0, 4.0, 8.0, 20.0))
    if "null" not in skip:
        r = null(args.frames)
        print(f"unmarked audio: {r['frames']} frames of 36 ms ({r['frames'] * FRAME / 8000 / 3600:.1f} h) in "
              f"{r['connections']} connections, {r['seconds']:.0f} s: false attributions = {r['decisions']}")
        print(f"  sync z over {r['analyses']} analyses: median {r['z_p50']:.2f}, p99.9 {r['z_p999']:.2f}, max "
              f"{r['z_max']:.2f} (> 5: {r['over_5']}, > 6: {r['over_6']}); threshold {robustmark.Z_SYNC:g}")
        print("  by source (frames): " + ", ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items())))
    if "cost" not in skip:
        cost()
    if "session" not in skip:
        session_cost()
    if args.wer:
        wer_with_and_without(args.wer, args.wer_robust_only)


if __name__ == "__main__":
    main()
