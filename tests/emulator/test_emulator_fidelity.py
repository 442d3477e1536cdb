"""Issue 12: every parameter a client sends has its effect (or a refusal), seen through the real deepgram-sdk."""
from __future__ import annotations

import asyncio
import time
import warnings

import orjson
import pytest

from rtaa_cli.latency import SendLog
from helpers.emulator import FIXTURES, FRAME_BYTES, SDK_PARAMS, call_audio, env_for, finals, refused, sdk_stream

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient
    from deepgram.listen.v1.types import (ListenV1Metadata, ListenV1Results, ListenV1SpeechStarted,
                                          ListenV1UtteranceEnd)



def _shape(m: ListenV1Results) -> tuple:
    """A result without its confidences (they are seeded per stream)."""
    alt = m.channel.alternatives[0]
    return (m.start, m.duration, m.speech_final, alt.transcript, [(w.word, w.start, w.end) for w in alt.words])


# ------------------------------------------------------------------------------- 1. odd-length frames

def test_1001_byte_chunks_transcribe_like_576_byte_chunks(emu_factory):
    """Deepgram treats the binary frames as one byte stream: a client cutting audio by byte count (odd
    lengths, samples split across frames) must not be closed with 1008, and gets the same results."""
    emu = emu_factory(text_mark=False)  # the text mark names the connection: unmarked, streams compare equal
    audio = call_audio()
    params = {"interim_results": True, "punctuate": True, "endpointing": 300}
    by_sample = sdk_stream(emu, audio, chunk=FRAME_BYTES, **params)
    by_byte = sdk_stream(emu, audio, chunk=1001, **params)
    assert isinstance(by_byte[-1], ListenV1Metadata) and by_byte[-1].duration == by_sample[-1].duration
    assert len(finals(by_sample)) >= 5 and [_shape(m) for m in finals(by_byte)] == [_shape(m) for m in finals(by_sample)]
    emu.wait_quiet()
    totals = emu.stats()["totals"]
    assert totals["closes_1000"] == 2 and totals["closes_1008"] == 0 and totals["audio_bytes"] == 2 * len(audio)


# ------------------------------------------------------------- 4-5. endpointing, SpeechStarted, UtteranceEnd

CALL_JSON = orjson.loads((FIXTURES / "call.json").read_bytes())
SEGMENTS = CALL_JSON["segments"]


def test_default_endpointing_finals_vad_events_and_utterance_ends_follow_the_fixtures_speech(emu_factory):
    """Default endpointing (10 ms) is measured on the VAD's silence: finals at pauses, not inside words; a
    SpeechStarted at each sentence's onset; one UtteranceEnd per pause longer than utterance_end_ms, at the
    sentence's last word (call.json has the forced alignment)."""
    emu = emu_factory(text_mark=False)
    received = sdk_stream(emu, call_audio(), interim_results=True, vad_events=True, utterance_end_ms=1000)
    pauses = [(a["speech_end"], b["speech_start"]) for a, b in zip(SEGMENTS, SEGMENTS[1:])
              if b["speech_start"] - a["speech_end"] > 1.0]
    assert len(pauses) == 4
    ends = [m.last_word_end for m in received if isinstance(m, ListenV1UtteranceEnd)]
    assert len(ends) == len(pauses)
    for end, (speech_end, _) in zip(ends, pauses):
        assert abs(end - speech_end) <= 0.15, (ends, pauses)
    starts = [m.timestamp for m in received if isinstance(m, ListenV1SpeechStarted)]
    for seg in SEGMENTS:  # each sentence's onset is reported, within 0.1 s
        assert any(0.0 <= t - seg["speech_start"] <= 0.1 for t in starts), (seg["speech_start"], starts)
    assert not any(a["speech_end"] + 0.1 < t < b["speech_start"] - 0.02
                   for t in starts for a, b in zip(SEGMENTS, SEGMENTS[1:]))  # none in a pause
    fins = finals(received)
    # Was 55 finals (30 under 0.3 s, 8 without words) for the 5 sentences: every 10 ms energy dip ended one.
    assert len(fins) <= 15 and all(m.channel.alternatives[0].words for m in fins), [m.duration for m in fins]
    assert sum(m.duration < 0.3 for m in fins) <= 1


SPHINX_BOUND = 120.0  # safety net: decoding the 27.5 s call takes ~10-20 s on a loaded 2-core machine


def test_sphinx_utterance_ends_on_the_whole_fixture_equal_its_pauses_over_utterance_end_ms(emu_factory):
    """The sphinx engine's word ends place the UtteranceEnds: one per pause of call.wav longer than
    utterance_end_ms (4 of its 4 pauses of 1.13-1.22 s), each at that sentence's last word."""
    emu = emu_factory(engine="sphinx")
    received = sdk_stream(emu, call_audio(), bound=SPHINX_BOUND, interim_results=True, endpointing=300,
                          utterance_end_ms=1000)
    pauses = [a["speech_end"] for a, b in zip(SEGMENTS, SEGMENTS[1:]) if b["speech_start"] - a["speech_end"] > 1.0]
    ends = [m.last_word_end for m in received if isinstance(m, ListenV1UtteranceEnd)]
    assert len(pauses) == 4 and len(ends) == len(pauses), (ends, pauses)
    assert all(abs(e - p) <= 0.2 for e, p in zip(ends, pauses)), (ends, pauses)


# ----------------------------------------------------------------- 2. parameters with an effect, or a 400

def _segment_of(t: float) -> int:
    return next(i for i, seg in enumerate(SEGMENTS) if seg["start"] - 0.1 <= t <= seg["end"] + 0.1)


@pytest.mark.parametrize("option", [{"diarize": True}, {"diarize_model": "latest"}])
def test_diarize_gives_speakers_that_take_turns_at_the_fixtures_pauses(emu_factory, option):
    emu = emu_factory(text_mark=False)
    received = sdk_stream(emu, call_audio(), interim_results=True, punctuate=True, **option)
    results = [m for m in received if isinstance(m, ListenV1Results)]
    words = [w for m in results for w in m.channel.alternatives[0].words]
    assert words and all(isinstance(w.speaker, int) for w in words)
    assert all(m.metadata.diarize_info.arch == "v1" and m.metadata.diarize_info.model_uuid for m in results)
    # The five sentences alternate between two speakers: 0, 1, 0, 1, 0 (a turn per pause of over 1 s).
    final_words = [w for m in finals(received) for w in m.channel.alternatives[0].words]
    assert [w.speaker for w in final_words] == [_segment_of(w.start) % 2 for w in final_words]
    assert {w.speaker for w in words} == {0, 1}


def test_no_diarize_no_speakers(emu_factory):
    emu = emu_factory(text_mark=False)
    fins = finals(sdk_stream(emu, call_audio(3.0)))
    assert fins and all(w.speaker is None for m in fins for w in m.channel.alternatives[0].words)
    assert all(m.metadata.diarize_info is None for m in fins)


def test_language_multi_gives_languages_and_word_languages(emu_factory):
    emu = emu_factory(text_mark=False)
    received = sdk_stream(emu, call_audio(8.0), interim_results=True, language="multi", language_hint=["ES", "zh-hk"])
    results = [m for m in received if isinstance(m, ListenV1Results)]
    spoken = [m.channel.alternatives[0] for m in results if m.channel.alternatives[0].words]
    assert spoken and all(alt.languages == ["en"] for alt in spoken)
    silent = [m.channel.alternatives[0] for m in results if not m.channel.alternatives[0].words]
    assert silent and all(alt.languages is None for alt in silent)  # absent, not [] (LiveKit reads [0])
    assert all(w.language == "en" for alt in spoken for w in alt.words)
    assert all(m.channel.alternatives[0].languages_hinted == ["es", "zh-HK"] for m in results)
    monolingual = finals(sdk_stream(emu, call_audio(3.0)))
    assert all(m.channel.alternatives[0].languages is None for m in monolingual)


def test_detect_entities_gives_entities_on_finals_only(emu_factory):
    emu = emu_factory(text_mark=False)
    received = sdk_stream(emu, call_audio(), interim_results=True, detect_entities=True)
    results = [m for m in received if isinstance(m, ListenV1Results)]
    assert all(m.entities is None for m in results if not m.is_final)
    fins = finals(received)
    assert fins and all(isinstance(m.entities, list) for m in fins)
    found = [(m, e) for m in fins for e in m.entities]
    assert found, "the placeholder words of call.wav include 'one'"
    for m, e in found:
        words = m.channel.alternatives[0].words[e.start_word:e.end_word]
        assert e.label == "CARDINAL" and e.raw_value == " ".join(w.word for w in words) and e.value.isdigit()
        assert 0 < e.confidence <= 1
    # Entity detection turns punctuation on (Deepgram's docs).
    assert all(w.punctuated_word for m in fins for w in m.channel.alternatives[0].words)


@pytest.mark.parametrize("params, fragment", [
    ({"model": "base", "detect_entities": True}, "Entity detection"),
    ({"model": "nova-3", "language": "es", "detect_entities": True}, "Entity detection"),
    ({"model": "nova-3", "request_options": {"additional_query_parameters": {"alternatives": "2"}}}, "Alternatives"),
    ({"model": "nova-2", "request_options": {"additional_query_parameters": {"alternatives": "3"}}}, "Alternatives"),
    ({"model": "nova-3", "diarize_model": "v2"}, "diarize_model"),
])
def test_unsupported_feature_combinations_are_refused_with_the_services_400(emu_factory, params, fragment):
    emu = emu_factory()
    status, body, dg_error = refused(emu, **params)
    assert status == 400 and body["err_code"] == "Bad Request" and fragment in body["err_msg"]
    assert dg_error == body["err_msg"] and body["request_id"]


@pytest.mark.parametrize("query, status, err_code, err_msg", [
    ({"summarize": "v2"}, 400, "Bad Request", "Summarization is not available for streaming."),
    ({"topics": "true"}, 403, "UNAUTHORIZED_FEATURES_REQUESTED",
     'Project does not have access to the requested feature/s ["topics"].'),
    ({"intents": "true", "custom_intent": "refund"}, 403, "UNAUTHORIZED_FEATURES_REQUESTED",
     'Project does not have access to the requested feature/s ["intents"].'),
    ({"detect_language": "true"}, 400, "Bad Request",
     "Language detection is not available for streaming; use language=multi."),
])
def test_prerecorded_only_features_get_the_live_services_answer(emu_factory, query, status, err_code, err_msg):
    """What Deepgram's live handshake answers to pre-recorded intelligence features (docs/emulator.md,
    Fidelity): a client that sends them through the SDK's additional_query_parameters sees the same here."""
    emu = emu_factory()
    got_status, body, dg_error = refused(emu, request_options={"additional_query_parameters": query})
    assert (got_status, body["err_code"], body["err_msg"]) == (status, err_code, err_msg)
    assert dg_error == err_msg and body["request_id"]
    emu.wait_quiet()
    assert emu.stats()["totals"][f"rejected_{status}"] == 1


def test_parameters_the_live_service_ignores_change_nothing(emu_factory):
    """sentiment (the live service accepts it and returns none), paragraphs/utterances/utt_split, custom
    topics/intents without topics/intents, measurements, mip_opt_out, callback_method, no_delay: the same
    results as without them, and no field the SDK's models do not know."""
    emu = emu_factory(text_mark=False)
    ignored = {"sentiment": "true", "paragraphs": "true", "utterances": "true", "utt_split": "0.8",
               "custom_topic": "billing", "custom_topic_mode": "strict", "custom_intent": "refund",
               "custom_intent_mode": "extended", "measurements": "true", "no_delay": "true",
               "summarize": "false", "detect_language": "false", "topics": "false", "intents": "false"}
    audio = call_audio(7.5)
    plain = sdk_stream(emu, audio, interim_results=True)
    with_them = sdk_stream(emu, audio, interim_results=True, mip_opt_out=True, callback_method="PUT",
                           request_options={"additional_query_parameters": ignored})
    assert finals(plain) and [_shape(m) for m in finals(with_them)] == [_shape(m) for m in finals(plain)]
    assert [type(m) for m in with_them] == [type(m) for m in plain]
    assert all(not m.model_extra and not m.channel.model_extra for m in with_them if isinstance(m, ListenV1Results))


def test_alternatives_on_older_models_gives_n_alternatives(emu_factory):
    emu = emu_factory(text_mark=False)
    received = sdk_stream(emu, call_audio(7.5), model="nova",
                          request_options={"additional_query_parameters": {"alternatives": "3"}})
    fins = finals(received)
    assert fins and all(len(m.channel.alternatives) == 3 for m in fins)
    for m in fins:
        best, *others = m.channel.alternatives
        assert all(o.confidence < best.confidence and o.transcript != best.transcript for o in others if best.words)
        assert all([(w.start, w.end) for w in o.words] == [(w.start, w.end) for w in best.words] for o in others)
    single = finals(sdk_stream(emu, call_audio(7.5), model="nova"))
    assert [m.channel.alternatives[0].transcript for m in single] == [m.channel.alternatives[0].transcript for m in fins]


# ------------------------------------------------------------------------------------- 3. text details

def test_punctuate_capitalises_only_sentence_starts(emu_factory):
    emu = emu_factory(text_mark=False)
    fins = [m for m in finals(sdk_stream(emu, call_audio(), punctuate=True)) if m.channel.alternatives[0].words]
    assert any(not m.speech_final for m in fins[:-1]), "the 5 s forced final cuts the first sentence"
    starts_sentence = True
    for m in fins:
        text = m.channel.alternatives[0].transcript
        assert text[0].isupper() == starts_sentence, (text, starts_sentence)
        assert text.endswith(".") == bool(m.speech_final)
        starts_sentence = bool(m.speech_final)


def test_word_confidences_vary_and_repeat_per_stream(emu_factory):
    def confidences(emu) -> list[float]:
        return [w.confidence for m in finals(sdk_stream(emu, call_audio())) for w in m.channel.alternatives[0].words]

    first = confidences(emu_factory(text_mark=False))
    again = confidences(emu_factory(text_mark=False))  # a new emulator: connection 1 again
    assert first == again
    assert len(set(first)) > len(first) // 2 and min(first) < 0.9 and max(first) <= 1.0
    emu = emu_factory(text_mark=False)
    confidences(emu)
    assert confidences(emu) != first  # connection 2: other confidences, same words


SPEECH_STARTED_BOUND_MS = 3000.0  # decoders in worker processes: 0.4-35 ms at load 7-16 (in threads: up to 3458 ms); was 9600-9900 ms


def test_sphinx_speech_started_does_not_wait_behind_recognition(emu_factory):
    """With the sphinx engine a frame may wait seconds behind the decode of the previous utterance; the
    SpeechStarted of the next one must not (barge-in). Sent at 2x real time so decoding falls behind; the
    latency is from the send of the frame holding the onset to the SpeechStarted's arrival."""
    emu = emu_factory(engine="sphinx")
    audio = call_audio(12.5)  # onsets at 0.2, 8.01 (right behind the 7 s first sentence), 11.76 s
    log = SendLog()

    async def run() -> list:
        client = AsyncDeepgramClient(api_key="k", environment=env_for(emu))
        got: list = []
        async with client.listen.v1.connect(**SDK_PARAMS, interim_results=True, vad_events=True,
                                            endpointing=300, utterance_end_ms=1000) as conn:
            async def read() -> None:
                async for message in conn:
                    got.append((time.time(), message))

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, off in enumerate(range(0, len(audio), FRAME_BYTES)):
                delay = start + i * 0.018 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing (2x real time), not synchronisation
                await conn.send_media(audio[off:off + FRAME_BYTES])
                log.record((off + FRAME_BYTES) / 16.0, time.time())
            await conn.send_close_stream()
            await reader
        return got

    got = asyncio.run(asyncio.wait_for(run(), 120.0))
    started = [(at, m.timestamp) for at, m in got if isinstance(m, ListenV1SpeechStarted)]
    onsets = [seg["speech_start"] for seg in SEGMENTS if seg["speech_start"] < 12.5]
    latencies = {}
    for onset in onsets:
        match = [(at, ts) for at, ts in started if 0.0 <= ts - onset <= 0.1]
        assert match, (onset, [ts for _, ts in started])
        at, ts = match[0]
        latencies[onset] = log.latency_ms(ts * 1000.0, at)
    assert max(latencies.values()) <= SPEECH_STARTED_BOUND_MS, latencies
    # The decode did fall behind: the final of the first sentence came after the next SpeechStarted.
    first_final_at = next(at for at, m in got if isinstance(m, ListenV1Results) and m.is_final
                          and m.channel.alternatives[0].words)
    # UtteranceEnd from the decoder's word ends: one per pause over 1 s (two in these 12.5 s), at the
    # sentence's last word (pocketsphinx's word ends sit within 0.15 s of the alignment's).
    ends = [m.last_word_end for _, m in got if isinstance(m, ListenV1UtteranceEnd)]
    pauses = [a["speech_end"] for a, b in zip(SEGMENTS, SEGMENTS[1:]) if b["speech_start"] < 12.5]
    assert len(ends) == len(pauses) == 2 and all(abs(e - p) <= 0.2 for e, p in zip(ends, pauses)), (ends, pauses)
    second_start_at = next(at for at, ts in started if ts > 7.5)
    assert first_final_at > second_start_at, ("the decode kept up: nothing was tested",
                                              first_final_at - second_start_at)
