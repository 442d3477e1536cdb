"""`rtaa replay FILE` with no --url, as a newcomer runs it: the embedded pipeline (provider fake, in a child
process), real words, the caller's pacing unaffected by pocketsphinx, and the WER against the sidecar."""
from __future__ import annotations

from pathlib import Path

import orjson
import soundfile as sf

from rtaa_cli.commands.replay import sidecar_transcript
from rtaa_cli.wer import normalize_words
from helpers.cli import assert_one_line_error, rtaa
from helpers.paths import FIXTURES

# Generous: the caller's frames are ~1-10 ms late with the pipeline in a child process, and were
# 540-1700 ms late (p99) with pocketsphinx decoding in the caller's process.
LATE_P99_BOUND_MS = 250.0


def test_default_replay_streams_in_real_time_and_reports_wer(tmp_path: Path) -> None:
    """The first utterance only (7.4 s, real time): partials and a final with real words, pacing, WER."""
    segment = orjson.loads((FIXTURES / "call.json").read_bytes())["segments"][0]
    audio, rate = sf.read(FIXTURES / "call.wav", dtype="int16")
    wav = tmp_path / "first.wav"
    sf.write(wav, audio[: int(segment["end"] * rate)], rate, subtype="PCM_16")
    (tmp_path / "first.txt").write_text(segment["text"] + "\n")
    out = tmp_path / "r.json"

    proc = rtaa("replay", str(wav), "--json", str(out))

    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    report = orjson.loads(out.read_bytes())
    assert report["embedded"]["provider"] == "fake" and report["embedded"]["exit_code"] == 0
    assert report["clean"] and report["frames_sent"] == report["frames_total"]
    assert report["pacing"]["late_p99_ms"] < LATE_P99_BOUND_MS, report["pacing"]
    finals = [t for t in report["transcripts"] if t["is_final"]]
    assert finals and any(not t["is_final"] for t in report["transcripts"])  # interims through the fake path
    text = " ".join(t["text"] for t in finals).lower()
    assert "john" in text and "how much there might be" in text, text
    assert report["wer"]["reference"] == str(tmp_path / "first.txt")
    assert report["wer"]["reference_words"] == len(normalize_words(segment["text"]))
    assert 0.0 <= report["wer"]["value"] <= 0.5, report["wer"]  # measured 0.41 (old live-decode finals: 0.45)
    assert "wer" in proc.stdout and "starting the embedded pipeline (provider fake" in proc.stdout
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr


def test_missing_deepgram_key_is_one_line_from_the_child(tmp_path: Path) -> None:
    proc = rtaa("replay", str(FIXTURES / "hold.wav"), "--provider", "deepgram", "--quiet",
                env_drop=("DEEPGRAM_API_KEY",))
    assert_one_line_error(proc, 2, "DEEPGRAM_API_KEY")


def test_sidecar_is_the_txt_next_to_the_audio(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    assert sidecar_transcript(wav) is None
    (tmp_path / "a.wav.txt").write_text("x")
    assert sidecar_transcript(wav) == tmp_path / "a.wav.txt"
    (tmp_path / "a.txt").write_text("x")
    assert sidecar_transcript(wav) == tmp_path / "a.txt"
    assert sidecar_transcript(FIXTURES / "call.wav") == FIXTURES / "call.txt"
