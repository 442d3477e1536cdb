"""Audio loading/conversion and framing, on the committed fixtures and on files written here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from rtaa_cli import audio
from rtaa_cli.audio import frame_bytes, frame_padding, frames, load_audio
from rtaa_cli.errors import RtaaError
from helpers.paths import FIXTURES



def test_call_fixture_is_8k_mono_16bit_and_loads_byte_for_byte() -> None:
    info = soundfile.info(FIXTURES / "call.wav")
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    loaded = load_audio(FIXTURES / "call.wav")
    raw, _ = soundfile.read(FIXTURES / "call.wav", dtype="int16")
    assert loaded.pcm == raw.astype("<i2").tobytes()  # no conversion needed -> identity
    assert loaded.source_sample_rate == 8000 and loaded.source_channels == 1
    sidecar = json.loads((FIXTURES / "call.json").read_text())
    assert loaded.duration_ms == pytest.approx(sidecar["duration"] * 1000, abs=1)
    assert 20_000 <= loaded.duration_ms <= 30_000
    assert len(sidecar["segments"]) == 5
    assert (FIXTURES / "call.txt").read_text().splitlines()[1] == "he was not an ill disposed young man"


def test_hold_fixture_has_a_long_silence_between_speech() -> None:
    pcm = np.frombuffer(load_audio(FIXTURES / "hold.wav").pcm, dtype="<i2")
    segments = json.loads((FIXTURES / "hold.json").read_text())["segments"]
    gap_start, gap_end = segments[0]["end"], segments[1]["start"]
    assert gap_end - gap_start >= 12.0
    assert not pcm[int(gap_start * 8000) + 1:int(gap_end * 8000) - 1].any()
    assert np.abs(pcm[: int(gap_start * 8000)]).max() > 1000  # speech around it
    assert np.abs(pcm[int(gap_end * 8000):]).max() > 1000


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_stereo_float_44k_is_downmixed_resampled_and_converted(rate: int) -> None:
    source, source_rate = soundfile.read(FIXTURES / "stereo_44k.wav", dtype="float32", always_2d=True)
    assert source.shape[1] == 2 and source_rate == 44100
    loaded = load_audio(FIXTURES / "stereo_44k.wav", rate)
    got = np.frombuffer(loaded.pcm, dtype="<i2").astype(np.int32)
    expected = np.rint(soxr.resample(source.mean(axis=1), 44100, rate, quality="HQ") * 32768).astype(np.int32)
    assert loaded.sample_rate == rate and loaded.source_channels == 2 and "FLOAT" in loaded.source_format
    assert abs(len(got) - len(expected)) <= 2
    n = min(len(got), len(expected))
    assert np.abs(got[:n] - expected[:n]).max() <= 2  # streaming vs one-shot soxr: same signal
    assert np.abs(got).max() > 1000


def test_clips_instead_of_wrapping(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    soundfile.write(path, np.array([1.5, -1.5, 0.99999, -1.0, 0.0], dtype=np.float32), 8000, subtype="FLOAT")
    samples = np.frombuffer(load_audio(path).pcm, dtype="<i2").tolist()
    assert samples == [32767, -32768, 32767, -32768, 0]


@pytest.mark.parametrize("fmt,subtype,ext", [("FLAC", "PCM_24", "flac"), ("OGG", "VORBIS", "ogg"),
                                            ("WAV", "PCM_U8", "wav"), ("WAV", "PCM_32", "wav")])
def test_other_containers_and_sample_formats(tmp_path: Path, fmt: str, subtype: str, ext: str) -> None:
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{ext}"
    soundfile.write(path, np.stack([tone, tone], axis=1), 16000, format=fmt, subtype=subtype)
    loaded = load_audio(path, 8000)
    samples = np.frombuffer(loaded.pcm, dtype="<i2")
    assert abs(len(samples) - 8000) <= 2
    peak = np.abs(samples[1000:7000]).max()
    assert 0.45 * 32768 <= peak <= 0.55 * 32768


def test_pcm16_at_target_rate_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32767, 10_000, dtype=np.int16)
    path = tmp_path / "noise16k.wav"
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    assert load_audio(path, 16000).pcm == samples.astype("<i2").tobytes()


def _one_line_error(path: object, rate: int = 8000) -> str:
    with pytest.raises(RtaaError) as info:
        load_audio(path, rate)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    assert info.value.exit_code == 2
    return message


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    assert "no such file" in _one_line_error(tmp_path / "missing.wav")
    assert "is a directory" in _one_line_error(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "not a readable audio file" in _one_line_error(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 10)
    assert "not a readable audio file" in _one_line_error(tmp_path / "notes.wav")
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.int16), 8000)
    assert "contains no audio" in _one_line_error(tmp_path / "zero.wav")
    truncated = (FIXTURES / "call.wav").read_bytes()[:30]
    (tmp_path / "truncated.wav").write_bytes(truncated)
    assert "truncated.wav" in _one_line_error(tmp_path / "truncated.wav")
    assert "unsupported sample rate 44100" in _one_line_error(FIXTURES / "call.wav", 44100)


def test_files_longer_than_an_exotel_stream_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "MAX_DURATION_S", 10)
    assert "at most 60 min" in _one_line_error(FIXTURES / "call.wav")


@pytest.mark.parametrize("rate,frame_ms,size", [(8000, 36, 576), (8000, 20, 320), (8000, 100, 1600),
                                                (16000, 36, 1152), (24000, 20, 960), (24000, 100, 4800)])
def test_frame_sizes(rate: int, frame_ms: int, size: int) -> None:
    assert frame_bytes(rate, frame_ms) == size
    pcm = bytes(range(256)) * 40  # 10240 bytes
    cut = frames(pcm, rate, frame_ms)
    assert all(len(f) == size for f in cut)
    padding = frame_padding(len(pcm), rate, frame_ms)
    assert b"".join(cut) == pcm + bytes(padding)
    assert 0 <= padding < size and (len(pcm) + padding) % size == 0


def test_last_partial_frame_is_zero_padded_and_exact_multiples_are_not() -> None:
    pcm = b"\x01\x02" * 300  # 600 bytes: one 576-byte frame + 24 bytes
    cut = frames(pcm, 8000, 36)
    assert len(cut) == 2 and cut[1] == b"\x01\x02" * 12 + bytes(552)
    assert frame_padding(600, 8000, 36) == 552
    assert frames(pcm[:576], 8000, 36) == [pcm[:576]]
    assert frame_padding(576, 8000, 36) == 0
    assert frames(b"", 8000, 36) == []


def test_frame_must_be_whole_samples_and_positive() -> None:
    with pytest.raises(RtaaError, match="not a whole number of samples"):
        frame_bytes(11025, 36)
    with pytest.raises(RtaaError, match="must be > 0"):
        frame_bytes(8000, 0)
    with pytest.raises(RtaaError, match="16-bit samples"):
        frames(b"\x00" * 5, 8000, 36)
