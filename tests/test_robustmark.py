"""The robust call mark (rtaa_cli/robustmark.py): what it survives (soxr and linear resampling to
16 kHz, +-6 dB, mu-law, re-chunking, a connection carrying only part of a call), what never decodes
(unmarked audio of every kind, the LSB code alone), that the LSB code still decodes beside it, and what
it reports. The detection rates and the 10^6-frame null distribution are bench/bench_robustmark.py's."""
from __future__ import annotations


import numpy as np
import pytest
import soxr

from rtaa_cli import robustmark
from rtaa_cli.audio import load_audio
from rtaa_cli.emulator.audio import MULAW_TO_PCM16
from rtaa_cli.soak.audioset import synthetic_pcm
from rtaa_cli.watermark import Decoder, Marker, call_hex
from helpers.paths import FIXTURES



def _speech() -> np.ndarray:
    return np.frombuffer(load_audio(FIXTURES / "call.wav", 8000).pcm, dtype="<i2")


def _s16(x) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _marked(sid: str, pcm: np.ndarray, rate: int = 8000) -> np.ndarray:
    return np.frombuffer(Marker(sid, robust=True, sample_rate=rate).mark(pcm.tobytes(), 0), dtype="<i2")


def _detect(x: np.ndarray, rate: int, chunk: int = 577) -> dict | None:
    det = robustmark.Detector(rate)
    for i in range(0, x.shape[0], chunk):
        det.feed_samples(x[i:i + chunk])
    return det.report()


def _linear2x_delayed(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    y = np.empty(2 * x.shape[0])
    y[1::2], y[0::2] = x, np.concatenate((x[:1], (x[:-1] + x[1:]) / 2))
    return y


def _mulaw(x: np.ndarray) -> np.ndarray:
    table = MULAW_TO_PCM16.astype(np.int32)
    return table[np.abs(table[None, :] - x.astype(np.int32)[:, None]).argmin(axis=1)].astype(np.int16)


TRANSFORMS = {
    "unchanged": (8000, lambda x: x),
    "soxr 16 kHz": (16000, lambda x: _s16(soxr.resample(x.astype(np.float32), 8000, 16000))),
    "linear 16 kHz (half-sample delay)": (16000, lambda x: _s16(_linear2x_delayed(x))),
    "gain +6 dB": (8000, lambda x: _s16(x * 2.0)),
    "gain -6 dB": (8000, lambda x: _s16(x * 0.5)),
    "soxr 16 kHz, -6 dB": (16000, lambda x: _s16(soxr.resample(x.astype(np.float32), 8000, 16000) * 0.5)),
    "mu-law": (8000, _mulaw),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("source", ["speech", "synthetic"])
def test_the_mark_names_its_call_after_the_target_changes_the_audio(name, source) -> None:
    pcm = _speech()[:8000 * 12] if source == "speech" else np.frombuffer(synthetic_pcm(4.0), dtype="<i2")
    sid = f"CArobust-{source}-{name}"
    rate, fn = TRANSFORMS[name]
    x = fn(_marked(sid, pcm))
    r = _detect(x, rate)
    assert r is not None and r["call"] == call_hex(sid), r
    assert r["z"] >= robustmark.Z_SYNC and 0 < r["found_after_s"] <= x.shape[0] * 8000 / rate / 8000 + 0.1
    if name != "unchanged":  # the LSB code did not survive (the reason for this mark) ...
        dec = Decoder()
        dec.feed_samples(x if rate == 8000 else x[::2])
        assert dec.report() is None
    else:  # ... and where the audio is unchanged it still decodes beside the robust mark
        dec = Decoder()
        dec.feed_samples(x)
        assert dec.report()["call"] == call_hex(sid) and dec.report()["missing"] == 0


def test_a_connection_that_carries_the_middle_of_a_call_is_attributed() -> None:
    """The mark is periodic: any stretch of a call names it (here 3 s from 7.3 s into the call)."""
    x = _marked("CAmiddle", _speech())[int(7.3 * 8000):int(10.3 * 8000)]
    y = _s16(soxr.resample(x.astype(np.float32), 8000, 16000))
    assert _detect(y, 16000)["call"] == call_hex("CAmiddle")


def test_a_16khz_caller_marks_at_its_rate_and_is_found_at_8khz_and_16khz() -> None:
    pcm16 = _s16(soxr.resample(_speech()[:8000 * 8].astype(np.float32), 8000, 16000))
    x = _marked("CA16k", pcm16, rate=16000)
    assert _detect(x, 16000)["call"] == call_hex("CA16k")
    down = _s16(soxr.resample(x.astype(np.float32), 16000, 8000))
    assert _detect(down, 8000)["call"] == call_hex("CA16k")
    assert robustmark.mark_period(1, rate=11025) is None  # not a multiple of 8 kHz: no robust mark


def test_two_calls_marks_are_told_apart() -> None:
    pcm = _speech()[:8000 * 6]
    found = {_detect(_marked(sid, pcm), 8000)["call"] for sid in ("CAone", "CAtwo", "CAthree")}
    assert found == {call_hex("CAone"), call_hex("CAtwo"), call_hex("CAthree")}


def test_the_mark_is_low_level() -> None:
    """About LEVEL_DBFS RMS (-54 dBFS), on the LSB code's +-1."""
    pcm = _speech()[:8000 * 10]
    diff = _marked("CAlevel", pcm).astype(np.float64) - pcm
    level = 20 * np.log10(np.sqrt(np.mean(diff ** 2)) / 32768)
    assert abs(level - robustmark.LEVEL_DBFS) < 1.0, level


def _unmarked_sources():
    rng = np.random.default_rng(5)
    speech = _speech()
    t = np.arange(8000 * 20) / 8000
    yield "speech", speech
    yield "speech + noise, 16 kHz", _s16(soxr.resample((speech * 1.7 + rng.normal(0, 30, speech.shape[0])).astype(np.float32),
                                                      8000, 16000))
    yield "LSB code alone", np.frombuffer(Marker("CAlsbonly", robust=False).mark(speech.tobytes(), 0), dtype="<i2")
    yield "white noise", _s16(rng.normal(0, 1000, 8000 * 20))
    yield "digital silence", np.zeros(8000 * 20, np.int16)
    yield "dc", np.full(8000 * 20, 321, np.int16)
    yield "tones", _s16(3000 * np.sin(2 * np.pi * 1953.125 * t) + 500 * np.sin(2 * np.pi * 300 * t))
    yield "synthetic", np.frombuffer(synthetic_pcm(20.0), dtype="<i2")


@pytest.mark.parametrize("name,x", list(_unmarked_sources()), ids=[n for n, _ in _unmarked_sources()])
def test_unmarked_audio_never_names_a_call(name, x) -> None:
    rate = 16000 if "16 kHz" in name else 8000
    det = robustmark.Detector(rate)
    det.trace = []
    for i in range(0, x.shape[0], 288):
        det.feed_samples(x[i:i + 288])
    assert det.report() is None and det.analyses >= 4 and max(det.trace, default=0.0) < robustmark.Z_SYNC, (name, det.trace)


def test_a_live_report_does_no_decoding_and_the_final_one_decides_on_all_it_got() -> None:
    """/stats of a live stream must stay cheap (no analysis per request); at the close, a stream shorter
    than the first analysis (under 1 s) is still judged."""
    x = _marked("CAshort", np.frombuffer(synthetic_pcm(4.0), dtype="<i2"))[:7000]
    det = robustmark.Detector(8000)
    det.feed_samples(x)
    assert det.report(final=False) is None and det.analyses == 0
    r = det.report(final=True)
    assert det.analyses == 1 and r is not None and r["call"] == call_hex("CAshort")
    det.feed_samples(x)  # decided: further audio costs nothing
    assert det.report() == r and det.analyses == 1


def test_a_gated_mark_leaves_digital_silence_silent_and_is_still_found(monkeypatch) -> None:
    """With GATE_DB, each frame's mark stays that far below the frame's own level: the fixture's digital
    silence between utterances stays digital silence (what harmed the sphinx WER), speech still names
    the call after soxr to 16 kHz, later than without the gate (the silence was where it was found)."""
    monkeypatch.setattr(robustmark, "GATE_DB", 20.0)
    pcm = _speech()[:8000 * 12]
    frames = [pcm[i:i + 288].tobytes() for i in range(0, pcm.shape[0], 288)]
    marked = np.frombuffer(b"".join(Marker("CAgated", robust=True).mark_frames(frames)), dtype="<i2")
    silent = [i for i, f in enumerate(frames) if not np.frombuffer(f, dtype="<i2").any()]
    assert silent  # the fixture has digital silence
    for i in silent:
        assert (np.abs(marked[i * 288:(i + 1) * 288]) <= 1).all()  # only the LSB code's +-1
    loud = (marked.astype(np.float64) - pcm)
    assert 20 * np.log10(np.sqrt(np.mean(loud ** 2)) / 32768) < robustmark.LEVEL_DBFS  # quieter overall
    y = _s16(soxr.resample(marked.astype(np.float32), 8000, 16000))
    r = _detect(y, 16000)
    assert r is not None and r["call"] == call_hex("CAgated") and r["found_after_s"] > 1.5, r


def _session(rate: int):
    from urllib.parse import parse_qsl

    from rtaa_cli.emulator.params import parse_listen_params
    from rtaa_cli.emulator.session import Session
    from rtaa_cli.emulator.transcribers import PlaceholderTranscriber

    params = parse_listen_params(parse_qsl(f"model=nova-3&encoding=linear16&sample_rate={rate}&interim_results=true"))
    return Session(params, request_id="r", created="c", now=0.0, idle_timeout_s=1e9, delay_s=lambda: 0.0,
                   transcriber_factory=lambda r: PlaceholderTranscriber(r))


def test_the_emulator_stream_uses_the_robust_mark_only_where_the_lsb_code_is_lost() -> None:
    """Unchanged audio: the LSB code names the call and the robust detector is not even fed (no CPU on
    the default, LSB-only streams); the same call resampled to 16 kHz: the robust mark names it."""
    x = _marked("CAsession", _speech()[:8000 * 4])
    plain, resampled = _session(8000), _session(16000)
    y = _s16(soxr.resample(x.astype(np.float32), 8000, 16000))
    for k in range(0, x.shape[0], 288):
        plain.receive_audio(x[k:k + 288].tobytes(), k / 8000)
    for k in range(0, y.shape[0], 576):
        resampled.receive_audio(y[k:k + 576].tobytes(), k / 16000)
    assert plain.watermark.report()["call"] == call_hex("CAsession")
    assert plain.robust_mark.samples < 8000 and plain.robust_mark.report() is None  # fed until the LSB lock only
    assert resampled.watermark.report() is None
    assert resampled.robust_mark.report()["call"] == call_hex("CAsession")
