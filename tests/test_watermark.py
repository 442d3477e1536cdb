"""The LSB watermark (rtaa_cli/watermark.py): what survives (any chunking, odd byte boundaries,
dropped and replayed chunks, re-chunking), what never decodes (constant / periodic LSBs), the exact
per-stream counts, and the false-attribution rate on >= 10^6 frames of unmarked audio (0)."""
from __future__ import annotations

import glob

import numpy as np
import pytest

from rtaa_cli.audio import load_audio
from rtaa_cli.watermark import PACKET_BITS, SYNC, Decoder, Marker, call_hex
from helpers.paths import FIXTURES

FRAME = 288  # 36 ms at 8 kHz
PER_FRAME = FRAME // PACKET_BITS


def _speech(seconds: float = 20.0) -> bytes:
    pcm = load_audio(FIXTURES / "call.wav", 8000).pcm
    want = int(seconds * 8000) // FRAME * FRAME * 2  # whole frames
    return (pcm * (want // len(pcm) + 1))[:want]


def _frames(pcm: bytes, size: int = FRAME * 2) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def _feed(dec: Decoder, data: bytes, sizes: list[int]) -> None:
    i = j = 0
    while i < len(data):
        dec.feed(data[i:i + sizes[j % len(sizes)]])
        i += sizes[j % len(sizes)]
        j += 1


def test_mark_changes_only_the_lsb() -> None:
    pcm = _speech(2.0)
    marked = b"".join(Marker("CA1", robust=False).mark_frames(_frames(pcm)))  # the LSB code alone
    a, b = np.frombuffer(pcm, "<i2").astype(np.int32), np.frombuffer(marked, "<i2").astype(np.int32)
    assert len(marked) == len(pcm) and np.abs(a - b).max() == 1 and ((a >> 1) == (b >> 1)).all()


@pytest.mark.parametrize("sizes", [[576], [1152], [7], [1, 2, 3, 500, 1001], [4096]])
def test_any_chunking_decodes_every_packet(sizes) -> None:
    pcm = _speech()
    data = b"".join(Marker("CAchunks").mark_frames(_frames(pcm)))
    dec = Decoder()
    _feed(dec, data, sizes)
    packets = len(pcm) // 2 // PACKET_BITS
    assert dec.report() == {"call": call_hex("CAchunks"), "packets": packets, "first": 0, "last": packets - 1,
                            "missing": 0, "repeated": 0, "runs": [[0, packets]], "overflow": False}


def test_drops_and_replays_are_counted_exactly() -> None:
    frames = Marker("CAdrops").mark_frames(_frames(_speech()))
    dropped = [k for k in range(len(frames)) if k % 10 == 3]
    sent = [f for k, f in enumerate(frames) if k % 10 != 3] + frames[100:120]  # then a replay of 20 frames
    dec = Decoder()
    _feed(dec, b"".join(sent), [1000])  # re-chunked on top
    refilled = sum(1 for k in dropped if 100 <= k < 120)  # the replay brings two dropped frames back
    r = dec.report()
    assert r["missing"] == (len(dropped) - refilled) * PER_FRAME
    assert r["repeated"] == (20 - refilled) * PER_FRAME
    assert r["packets"] == (len(sent)) * PER_FRAME


def test_a_phase_shifting_drop_costs_only_the_packet_it_cut() -> None:
    frames = Marker("CAshift").mark_frames(_frames(_speech()))
    sent = [f[:-2] if k % 10 == 3 else f for k, f in enumerate(frames)]  # one sample lost every 10th frame
    dec = Decoder()
    for f in sent:
        dec.feed(f)
    cut = sum(1 for k in range(len(frames)) if k % 10 == 3)
    r = dec.report()
    assert r["call"] == call_hex("CAshift") and r["missing"] == cut and r["repeated"] == 0


def test_two_calls_on_one_stream_are_both_reported() -> None:
    a = b"".join(Marker("CAa").mark_frames(_frames(_speech(5.0))))
    b = b"".join(Marker("CAb").mark_frames(_frames(_speech(2.0))))
    dec = Decoder()
    _feed(dec, a + b, [576])
    r = dec.report()
    assert r["call"] == call_hex("CAa") and set(r["calls"]) == {call_hex("CAa"), call_hex("CAb")}


@pytest.mark.parametrize("period", range(1, 17))
def test_periodic_lsbs_never_match_the_sync(period) -> None:
    """Digital silence (0), all ones, DC, square waves: any LSB pattern of period <= 16 either never
    contains the sync word or, if the sync happens to fit, never passes the whitened CRC twice."""
    rng = np.random.default_rng(period)
    for _ in range(20):
        pattern = rng.integers(0, 2, period)
        bits = np.tile(pattern, 4000 // period + 2)[:4000]
        dec = Decoder(sparse=False)
        dec.feed_samples(bits.astype(np.int16) * 3 - 1)  # odd/even values: LSB = pattern
        assert dec.report() is None
    sync = [(SYNC >> (15 - j)) & 1 for j in range(16)]
    for p in range(1, 9):  # the sync word itself has no period <= 8
        assert any(sync[j] != sync[j + p] for j in range(16 - p)), p


@pytest.mark.parametrize("value", [0, -1, 1, 32767, -32768, 1234])
def test_constant_audio_never_decodes(value) -> None:
    dec = Decoder(sparse=False)
    dec.feed(np.full(80000, value, dtype="<i2").tobytes())
    assert dec.report() is None


def test_no_false_attribution_on_a_million_frames_of_unmarked_audio() -> None:
    """>= 10^6 frames of 36 ms (8 kHz) of unmarked speech (every fixture, at varying gains), noise
    from +-1 LSB to loud, silence and DC, every sample position searched: zero locked call ids."""
    rng = np.random.default_rng(7)
    speech = [np.frombuffer(load_audio(p, 8000).pcm, "<i2").astype(np.float64)
              for p in sorted(glob.glob(str(FIXTURES / "*.wav")))]
    frames = 0
    false = 0
    while frames < 1_000_000:
        blocks = [np.rint(s * rng.uniform(0.3, 1.5)) for s in speech]
        blocks += [np.rint(rng.normal(0, level, 8000 * 600)) for level in (1.0, 3.0, 300.0, 3000.0)]
        blocks += [np.zeros(8000 * 60), np.full(8000 * 60, float(rng.integers(-300, 300)))]
        for block in blocks:
            dec = Decoder(sparse=False)
            samples = np.clip(block, -32768, 32767).astype(np.int16)
            for i in range(0, samples.shape[0], 80000):  # 10 s chunks (decoding is chunk-independent)
                dec.feed_samples(samples[i:i + 80000])
            false += len(dec.calls)
            frames += samples.shape[0] // FRAME
    print(f"\nwatermark false attributions: {false} in {frames} unmarked 36 ms frames")
    assert frames >= 1_000_000 and false == 0


def test_marked_silence_still_decodes_and_unmarked_prefix_is_found_sparsely() -> None:
    """Marked digital silence is +-1 LSB: still the call. A stream whose first 7 s are unmarked is
    searched sparsely after 2 s and still locks within about a second of the mark's start."""
    silence = b"\x00\x00" * 8000 * 3
    dec = Decoder()
    _feed(dec, b"".join(Marker("CAquiet").mark_frames(_frames(silence))), [576])
    assert dec.report()["call"] == call_hex("CAquiet")
    frames = _frames(_speech(20.0))
    marked = Marker("CAlate").mark_frames(frames)
    dec = Decoder()
    for f in frames[:195] + marked[195:]:
        dec.feed(f)
    r = dec.report()
    assert r["call"] == call_hex("CAlate") and r["missing"] == 0
    assert 195 * PER_FRAME <= r["first"] <= 195 * PER_FRAME + 8000 // PACKET_BITS + 3


def test_a_hostile_stream_of_many_call_ids_is_bounded() -> None:
    from rtaa_cli.watermark import MAX_CALLS

    one = _frames(_speech(0.36))
    dec = Decoder()
    for i in range(MAX_CALLS + 5):
        for f in Marker(f"CAhostile{i}").mark_frames(one):
            dec.feed(f)
    assert len(dec.calls) == MAX_CALLS and len(dec.report()["calls"]) == MAX_CALLS


@pytest.mark.parametrize("watermark", [True, False])
def test_the_replay_and_smoke_caller_script_marks_its_media_when_asked(watermark) -> None:
    import base64

    import orjson

    from rtaa_cli.call.script import CallOptions, CallScript

    pcm = _speech(3.0)
    script = CallScript.from_pcm(pcm, CallOptions(call_sid="CAscript", stream_sid="ST1", watermark=watermark,
                                                  holds=((1.0, 1.0),)))
    sent = b"".join(base64.b64decode(orjson.loads(s.text)["media"]["payload"]) for s in script if s.kind == "media")
    dec = Decoder()
    dec.feed(sent)
    if watermark:
        assert dec.report()["call"] == call_hex("CAscript") and dec.report()["missing"] == 0
        assert len(sent) == len(pcm) and sent != pcm
    else:
        assert dec.report() is None and sent == pcm


def test_the_soak_caller_marks_each_frame_of_the_shared_audio_per_call() -> None:
    import base64

    from rtaa_cli.call.script import CallOptions, CallScript

    frames = _frames(_speech(2.0))
    a, b = (CallScript(frames, CallOptions(call_sid=sid, stream_sid="ST1", watermark=True)).payloads(shared=True)
            for sid in ("CAsoakA", "CAsoakB"))
    for sid, marked in (("CAsoakA", a), ("CAsoakB", b)):
        dec = Decoder()
        for k in range(len(marked)):
            dec.feed(base64.b64decode(marked[k]))
        assert dec.report()["call"] == call_hex(sid) and dec.report()["packets"] == len(frames) * PER_FRAME
