"""Sans-I/O cores of the pipeline, driven directly: the call timeline (replay buffer, offsets, dedup,
bounds), the rate limiter, and the embedded default (the README's main command's path) end to end."""
from __future__ import annotations


from rtaa_cli.audio import load_audio
from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.embedded import embedded_pipeline
from rtaa_cli.pipeline.ratelimit import TokenBucket
from rtaa_cli.pipeline.timeline import CallTimeline
from helpers.pipeline import run
from helpers.paths import CALL_WAV



def test_timeline_replays_only_audio_not_covered_by_a_final() -> None:
    tl = CallTimeline(8000, replay_limit_s=10.0)
    for i in range(10):  # 10 frames of 100 ms = 1600 bytes each
        tl.append(bytes([i]) * 1600, received_at=float(i))
    assert tl.end == 16000
    tl.on_final(450.0)  # a final up to 450 ms = byte 7200
    start, audio = tl.unfinalized()
    assert start == 7200 and len(audio) == 16000 - 7200 and audio[:1] == bytes([4])
    # A new connection whose first byte is stream position 7200: its t=0.25 s is stream 450+250 ms.
    assert tl.to_stream_ms(start, 0.25) == 700.0
    assert tl.is_stale(450.0) and tl.is_stale(300.0) and not tl.is_stale(451.0)
    tl.on_final(300.0)  # an older final never moves the replay point back
    assert tl.unfinalized()[0] == 7200


def test_timeline_is_bounded_and_counts_what_it_gives_up() -> None:
    tl = CallTimeline(8000, replay_limit_s=1.0, latency_window=8)  # 1 s = 16000 bytes
    for i in range(100):
        tl.append(b"\x00" * 1600, received_at=float(i))
    start, audio = tl.unfinalized()
    assert len(audio) == 16000  # exactly the limit (a ring: no trim steps, no slack)
    assert tl.trimmed_bytes == start == 160000 - len(audio)
    assert tl.received_at(9950.0) == 99.0  # the frame holding 9950 ms was received at t=99
    assert tl.received_at(50.0) is None  # older than the window


def test_token_bucket_allows_the_rate_and_burst_then_refuses() -> None:
    b = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert all(b.take(0.0) for _ in range(5))
    assert not b.take(0.0)
    assert b.take(0.1)  # one token back after 100 ms at 10/s
    assert not b.take(0.1)
    assert all(b.take(1.0 + k * 0.1) for k in range(20))  # a steady 10/s is always fine


def _replay_young_man(provider: str, call_sid: str, stream_sid: str):
    """Replay the "he was not an ill disposed young man" clip through the embedded pipeline."""
    pcm = _young_man()

    async def main():
        async with embedded_pipeline(provider, 8000) as target:
            script = CallScript.from_pcm(pcm, CallOptions(call_sid=call_sid, stream_sid=stream_sid))
            return await run_call(target.url, script, speed=0, transcripts_url=target.transcripts_url,
                                  wait_final_s=30)

    return run(main(), 90)


def test_embedded_default_transcribes_real_words() -> None:
    """What `rtaa replay fixtures/audio/call.wav` does with no --url: provider fake, emulator with sphinx."""
    result = _replay_young_man("fake", "CA-embedded", "ST-embedded")
    assert result.clean and not result.errors, (result.close_code, result.errors)
    text = " ".join(t.text for t in result.finals()).lower()
    assert "he was not" in text and "man" in text, text  # pocketsphinx: "he was not a guild russia man"


def test_sphinx_provider_transcribes_real_words_in_process() -> None:
    """Provider ``sphinx``: pocketsphinx in the pipeline process, no Deepgram protocol at all."""
    result = _replay_young_man("sphinx", "CA-sphinx", "ST-sphinx")
    assert result.clean and not result.errors, (result.close_code, result.errors)
    finals = result.finals()
    text = " ".join(t.text for t in finals).lower()
    assert "he was not" in text and "man" in text, text
    assert all(t.provider_connection == 1 for t in finals)


def _young_man() -> bytes:
    """7.2-11.2 s of the fixture: "he was not an ill disposed young man" (fixtures/audio/call.txt); real
    words, not placeholders (the segmenter engine's vocabulary has neither "was" nor "not" nor "man")."""
    pcm = load_audio(CALL_WAV, 8000).pcm
    return pcm[8000 * 2 * 72 // 10: 8000 * 2 * 112 // 10]


def test_timeline_reports_each_lost_stretch_once() -> None:
    """Issue 10 item 11: audio trimmed from the replay buffer before a reconnect, and the unfinalised tail of
    a call that ends without its finals, are gaps; each byte is reported at most once."""
    tl = CallTimeline(8000, replay_limit_s=1.0)  # 16 bytes per ms; keeps 1-2 s
    tl.append(bytes(16 * 500), 0.0)
    tl.on_final(500.0)  # the first 500 ms are finalised
    assert tl.replay_gap() is None  # nothing trimmed yet
    tl.append(bytes(16 * 2600), 0.0)  # an outage: 2.6 s more, the buffer trims to 1 s
    start, end = tl.replay_gap()
    assert start == 16 * 500 and end == tl.unfinalized()[0] == 16 * 2100
    assert tl.replay_gap() is None  # once
    assert tl.lost_tail() == (16 * 2100, 16 * 3100)  # the call then ends without finals
    assert tl.lost_tail() is None
