"""A pipeline that changes the audio before Deepgram (issue 11): the third-party target of
tests/thirdparty/target.py resamples each call's 8 kHz audio to 16 kHz (soxr, or a plain linear
interpolator) or changes its gain, and forwards it untagged. The LSB watermark cannot survive that; the
robust mark rtaa's callers add beside it (rtaa_cli/robustmark.py) must still attribute every provider
connection to its call, and the report must say which mark did it (``attributed_by_robust_mark``) and
that the LSB code was not found. Ground truth: the target's own ``/published`` (calls and connections)."""
from __future__ import annotations

import pytest

from helpers.thirdparty import SSE_FEED_MAP as FEED_MAP
from helpers.thirdparty import published, soak, start, stop


@pytest.fixture(scope="module")
def variants():
    procs: list = []
    try:
        yield {"soxr": start(procs, "--resample-hz", "16000"),
               "linear": start(procs, "--resample-hz", "16000", "--resampler", "linear", "--gain-db", "6"),
               "gain": start(procs, "--gain-db", "-6")}
    finally:
        stop(procs)


@pytest.mark.parametrize("name", ["soxr", "linear", "gain"])
def test_a_pipeline_that_changes_the_audio_is_attributed_by_the_robust_mark(variants, name, tmp_path) -> None:
    target = variants[name]
    code, doc, mine = soak(target, target["sse"], FEED_MAP, tmp_path, "--robust-mark")
    truth = {sid: c["audio"] for sid, c in published(target).items() if sid.startswith(doc["run"]["call_prefix"])}
    prov = doc["provider"]
    calls = doc["calls"]["started"]
    # every connection the target opened is attributed to its call, by the robust mark (not the LSB code)
    assert prov["connections"] == sum(t["connections"] for t in truth.values()) >= calls, (prov, truth)
    assert prov["attributed_by_robust_mark"] == prov["connections"], prov
    assert prov["attributed_by_watermark"] == 0 and prov["attributed_by_tag"] == 0, prov
    assert prov["unattributed_connections"] == 0 and prov["calls_reached"] == calls, prov
    notes = doc["run"]["notes"]
    assert any("LSB code not found" in n and "robust mark" in n for n in notes), notes
    assert not any(n.startswith("watermark not found") for n in notes), notes
    # one connection per call: the audio it received, compared by duration (the target's rate differs)
    audio = doc["audio"]
    assert audio["measured_calls"] == calls and audio["reconnecting_calls"] == 0, audio
    assert audio["loss"] is not None and audio["loss"] < 0.01, audio
    rows = {row["name"]: row for row in doc["thresholds"]}
    assert rows["unattributed_connections"]["status"] == "pass", rows


def test_without_the_robust_mark_the_same_pipeline_is_unattributed(variants, tmp_path) -> None:
    """The control: the LSB code alone does not survive the resampling target (the reason for the mark)."""
    target = variants["soxr"]
    _code, doc, _mine = soak(target, target["sse"], FEED_MAP, tmp_path, "--no-robust-mark")
    prov = doc["provider"]
    assert prov["attributed_by_robust_mark"] == 0 and prov["attributed_by_watermark"] == 0, prov
    assert prov["unattributed_connections"] >= doc["calls"]["started"], prov
    assert any(n.startswith("watermark not found: the target changes the audio") for n in doc["run"]["notes"])
