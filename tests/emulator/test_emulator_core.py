"""Unit tests of the emulator's pure cores: params, audio decoding, segmenter, session (fake clock), accounting."""
from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pytest

from rtaa_cli.emulator.accounting import Accounting
from rtaa_cli.emulator.audio import ALAW_TO_PCM16, MULAW_TO_PCM16, AudioDecoder, UndecodableAudio
from rtaa_cli.protocols.deepgram import NET0001
from rtaa_cli.emulator.params import HandshakeRejected, parse_listen_params
from rtaa_cli.emulator.segmenter import Segmenter
from rtaa_cli.emulator.session import Close, Send, Session
from rtaa_cli.emulator.transcribers import PlaceholderTranscriber

RATE = 8000
FRAME = 288  # 36 ms at 8 kHz


def tone(seconds: float, amp: int = 8000, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), dtype=np.int16)


def frames(x: np.ndarray, size: int = FRAME):
    for i in range(0, x.size, size):
        yield x[i:i + size]


# --------------------------------------------------------------------------------------------- params

def q(s: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl
    return parse_qsl(s, keep_blank_values=True)


def test_params_accepts_what_the_sdk_sends():
    p = parse_listen_params(q("channels=1&encoding=linear16&endpointing=300&interim_results=true&keyterm=foo"
                              "&keyterm=bar+baz&model=nova-3&punctuate=true&sample_rate=16000&smart_format=true"
                              "&tag=t1&utterance_end_ms=1000&vad_events=true&filler_words=true&no_delay=true"))
    assert (p.model, p.encoding, p.sample_rate, p.endpointing_ms, p.utterance_end_ms) == ("nova-3", "linear16", 16000, 300, 1000)
    assert p.keyterms == ("foo", "bar baz") and p.interim_results and p.vad_events and p.punctuated
    assert p.interaction_id == "t1"


def test_params_defaults_and_attribution_by_extra():
    p = parse_listen_params(q("model=nova-2&extra=interaction_id:CA9&extra=team:x"))
    assert p.endpointing_ms == 10 and p.interaction_id == "CA9" and p.extra == {"interaction_id": "CA9", "team": "x"}
    assert parse_listen_params(q("model=nova-3&endpointing=false")).endpointing_ms is None


@pytest.mark.parametrize("query, fragment", [
    ("model=nova-3&interim_results=True", "interim_results"),
    ("model=nova-3&interim_results=true&utterance_end_ms=999", "Invalid 'utterance_end_ms' value of '999'."),
    ("model=nova-3&utterance_end_ms=1000", "requires 'interim_results=true'"),
    ("model=nova-3&encoding=pcm16&sample_rate=8000", "encoding"),
    ("model=nova-3&encoding=linear16", "sample_rate"),
    ("model=nova-3&language=english", "No such model/language/tier"),
    ("model=nova-42", "No such model/language/tier"),
    ("model=nova-3&keywords=foo:2", "Nova-3"),
    ("model=nova-2-phonecall&language=es", "No such model/language/tier"),
    ("model=nova-3&endpointing=-5", "endpointing"),
    ("model=nova-3&extra=nocolon", "extra"),
    ("model=nova-3&encoding=opus&sample_rate=48000", "not supported by the rtaa emulator"),
])
def test_params_rejections_are_400_with_a_message(query, fragment):
    with pytest.raises(HandshakeRejected) as info:
        parse_listen_params(q(query))
    assert info.value.status == 400 and info.value.err_code == "Bad Request"
    assert fragment in info.value.err_msg


# ---------------------------------------------------------------------------------------------- audio

def test_g711_tables_match_reference():
    audioop = pytest.importorskip("audioop")
    all_bytes = bytes(range(256))
    assert np.array_equal(MULAW_TO_PCM16, np.frombuffer(audioop.ulaw2lin(all_bytes, 2), "<i2"))
    assert np.array_equal(ALAW_TO_PCM16, np.frombuffer(audioop.alaw2lin(all_bytes, 2), "<i2"))


def test_decoder_carries_a_cut_sample_to_the_next_frame_and_reads_the_wav_header():
    dec = AudioDecoder("linear16", 8000, 1)
    assert dec.decode(b"\x01\x00\x02\x00").tolist() == [1, 2]
    # Odd-length frames: one byte stream (docs/deepgram-protocol.md §2), the cut sample completes with the next frame.
    assert dec.decode(b"\x03\x00\x04").tolist() == [3] and dec.carried == 1
    assert dec.decode(b"").tolist() == [] and dec.carried == 1
    assert dec.decode(b"\x00\x05").tolist() == [4] and dec.carried == 1
    assert dec.decode(b"\x00").tolist() == [5] and dec.carried == 0
    stereo = AudioDecoder("linear16", 8000, 2)
    assert stereo.decode(b"\x01\x00\x02").shape == (0, 2) and stereo.carried == 3
    assert stereo.decode(b"\x00\x03\x00\x04").tolist() == [[1, 2]] and stereo.carried == 3
    mulaw = AudioDecoder("mulaw", 8000, 1)
    assert mulaw.decode(b"\xff\x7f\x00").tolist() == MULAW_TO_PCM16[[255, 127, 0]].tolist()
    import io

    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.array([5, -5, 7], dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    wav = AudioDecoder(None, None, 1)
    assert wav.decode(buf.getvalue()).tolist() == [5, -5, 7] and wav.sample_rate == 16000
    with pytest.raises(UndecodableAudio):
        AudioDecoder(None, None, 1).decode(b"OggS\x00\x02" + b"\x00" * 40)


# ------------------------------------------------------------------------------------------ segmenter

def run_segmenter(audio: np.ndarray, **kw):
    seg = Segmenter(RATE, **{"endpointing_ms": 300, "interim": True, "vad_events": True, **kw})
    events = []
    for f in frames(audio):
        events += seg.feed(f)
    return seg, events


def test_segmenter_speech_started_interim_and_endpoint_timings():
    audio = np.concatenate([silence(0.5), tone(1.0), silence(0.5)])
    _, events = run_segmenter(audio)
    kinds = [(e.kind, e.window.start / RATE, e.window.end / RATE) for e in events]
    assert kinds == [("speech_started", 0.5, 0.5), ("interim", 0.0, 1.0), ("final", 0.0, 1.8)]
    final = events[-1]
    assert final.speech_final and (final.window.voiced_start / RATE, final.window.voiced_end / RATE) == (0.5, 1.5)


def test_segmenter_default_endpointing_needs_a_pause_not_a_dip_and_long_speech_still_finalises():
    # 10 ms default: endpointing is measured on the VAD's silence, so a 50 ms dip inside speech is no
    # endpoint; a pause is, as soon as the VAD has seen 100 ms of it (min_pause_ms).
    audio = np.concatenate([tone(0.4), silence(0.05), tone(0.4), silence(0.3), tone(0.2)])
    _, events = run_segmenter(audio, endpointing_ms=10, interim=False)
    finals = [e for e in events if e.kind == "final"]
    assert [(e.window.start / RATE, e.window.end / RATE, e.speech_final) for e in finals] == [(0.0, 0.95, True)]
    assert [e.window.start / RATE for e in events if e.kind == "speech_started"] == [0.0, 1.15]
    assert finals[0].window.voiced_end / RATE == pytest.approx(0.85)
    # endpointing=false: no endpoint, but the VAD still reports each start of speech.
    _, events = run_segmenter(audio, endpointing_ms=None, interim=False)
    assert [e.kind for e in events] == ["speech_started", "speech_started"]
    # Continuous speech with endpointing off: a final every 5 s, tiled, not speech_final.
    seg, events = run_segmenter(tone(11.0), endpointing_ms=None, interim=False, vad_events=False)
    finals = [e for e in events if e.kind == "final"]
    assert [(e.window.start / RATE, e.window.end / RATE, e.speech_final) for e in finals] == [
        (0.0, 5.0, False), (5.0, 10.0, False)]
    tail = seg.flush(from_finalize=True)
    assert [(e.window.start / RATE, e.window.end / RATE, e.from_finalize) for e in tail] == [(10.0, 11.0, True)]
    assert seg.flush(from_finalize=True) == []  # nothing pending: nothing emitted


def test_segmenter_interims_during_silence_are_empty():
    _, events = run_segmenter(silence(2.5))
    assert [e.kind for e in events] == ["interim", "interim"]
    assert all(e.window.voiced_start is None for e in events)


def test_placeholder_words_have_audio_timings_and_interim_is_prefix_of_final():
    seg, events = run_segmenter(np.concatenate([silence(0.5), tone(1.0), silence(0.5)]))
    words = PlaceholderTranscriber(RATE)
    interim = words.words(events[1].window, final=False)
    final = words.words(events[2].window, final=True)
    assert len(final) == 4  # 1.0 s of speech, one word per 300 ms slot
    assert final[0][1] == 0.5 and final[-1][2] == 1.5
    assert all(a[2] <= b[1] + 1e-9 for a, b in zip(final, final[1:]))
    assert [w[0] for w in interim] == [w[0] for w in final[: len(interim)]]


# --------------------------------------------------------------------------------------------- session

def make_session(query: str = "model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true",
                 now: float = 0.0, idle: float = 1.0, delay=lambda: 0.0) -> Session:
    return Session(parse_listen_params(q(query)), request_id="rid", created="2026-01-01T00:00:00.000Z", now=now,
                   idle_timeout_s=idle, delay_s=delay, transcriber_factory=lambda rate: PlaceholderTranscriber(rate))


def feed(session: Session, audio: np.ndarray, start: float, step: float = 0.036) -> float:
    now = start
    for f in frames(audio):
        session.receive_audio(f.tobytes(), now)
        now += step
    return now


def decoded(out):
    return [orjson.loads(o.data) if isinstance(o, Send) else ("close", o.code, o.reason) for o in out]


def test_idle_timer_sends_metadata_then_1011_and_keepalive_resets_it():
    s = make_session(idle=1.0)
    s.receive_audio(tone(0.1).tobytes(), 0.5)
    s.data_to_send()
    assert s.idle_deadline == 1.5 and not s.check_idle(1.49)
    s.receive_text('{"type": "KeepAlive"}', 1.4)
    assert s.data_to_send() == [] and s.keepalives == 1 and not s.check_idle(2.3)
    assert s.check_idle(2.4)
    out = decoded(s.data_to_send())
    assert out[0]["type"] == "Metadata" and out[0]["duration"] == 0.1 and out[0]["transaction_key"] == "deprecated"
    assert out[1] == ("close", 1011, NET0001)
    s.receive_audio(tone(0.1).tobytes(), 2.5)  # after close: ignored
    assert s.data_to_send() == [] and s.audio_frames == 800


def test_finalize_flushes_pending_audio_once_with_from_finalize():
    s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&endpointing=false")
    now = feed(s, tone(0.7), 0.0)
    assert s.data_to_send() == []  # no endpoint, no interim requested
    s.receive_text('{"type":"Finalize"}', now)
    out = decoded(s.data_to_send())
    assert len(out) == 1 and out[0]["is_final"] and out[0]["from_finalize"] and out[0]["channel"]["alternatives"][0]["words"]
    assert out[0]["start"] == 0.0 and out[0]["duration"] == 0.7
    s.receive_text('{"type":"Finalize"}', now + 0.1)
    assert s.data_to_send() == [] and s.finalizes == 2


def test_close_stream_orders_final_results_metadata_then_1000():
    s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&endpointing=false", delay=lambda: 0.2)
    audio = tone(0.5)
    now = feed(s, audio, 10.0)
    s.receive_text('{"type":"CloseStream"}', now)
    out = s.data_to_send()
    msgs = decoded(out)
    assert [m["type"] if isinstance(m, dict) else m[0] for m in msgs] == ["Results", "Metadata", "close"]
    assert msgs[0]["is_final"] and not msgs[0]["from_finalize"]
    assert msgs[1]["sha256"] == hashlib.sha256(audio.tobytes()).hexdigest() and msgs[1]["channels"] == 1
    assert msgs[2] == ("close", 1000, "")
    assert [o.due for o in out] == sorted(o.due for o in out) and out[0].due == pytest.approx(now + 0.2)


def test_empty_binary_frame_is_close_stream_and_empty_stream_metadata():
    s = make_session()
    s.receive_audio(b"", 0.1)
    msgs = decoded(s.data_to_send())
    assert msgs[0]["type"] == "Metadata" and msgs[0]["duration"] == 0.0 and msgs[0]["channels"] == 0
    assert msgs[0]["sha256"] == hashlib.sha256(b"").hexdigest() and "models" not in msgs[0]
    assert msgs[1] == ("close", 1000, "") and s.close_stream_seen


def test_result_due_time_is_arrival_plus_latency_and_never_reorders():
    delays = iter([0.3, 0.05, 0.2, 0.0, 0.0, 0.0, 0.0])
    s = make_session(delay=lambda: next(delays))
    feed(s, np.concatenate([tone(1.0), silence(0.1), tone(1.0)]), 100.0, step=0.036)
    out = s.data_to_send()
    assert len(out) >= 3
    # The first interim covers audio up to 1.0 s, which arrived with frame 27 (ends at 1.008 s): t=100+27*0.036.
    assert out[0].due == pytest.approx(100.0 + 27 * 0.036 + 0.3)
    assert all(a.due <= b.due for a, b in zip(out, out[1:]))


def test_bad_text_gets_schema_error_and_stream_continues():
    s = make_session()
    s.receive_text("{not json", 0.0)
    s.receive_text('{"type":"Brandnew"}', 0.1)
    msgs = decoded(s.data_to_send())
    assert [(m["type"], m["variant"]) for m in msgs] == [("Error", "SchemaError")] * 2
    assert msgs[0]["message"] == "{not json" and s.closing is None and s.schema_errors == 2


def test_undecodable_audio_closes_1008():
    s = make_session("model=nova-3")  # no encoding: a WAV stream is expected
    s.receive_audio(b"OggS\x00\x02" + bytes(40), 0.0)
    out = s.data_to_send()
    assert isinstance(out[-1], Close) and out[-1].code == 1008 and out[-1].reason.startswith("DATA-0000")


def test_byte_count_chunking_gives_the_same_messages_as_sample_chunking():
    audio = np.concatenate([silence(0.3), tone(1.2), silence(0.6), tone(0.9), silence(0.5)]).tobytes()
    out = []
    for size in (576, 1001, 1):
        s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true&endpointing=300")
        for off in range(0, len(audio), size):
            s.receive_audio(audio[off:off + size], 0.0)
        s.receive_text('{"type":"CloseStream"}', 0.0)
        out.append(decoded(s.data_to_send()))
    assert out[0] == out[1] == out[2]
    assert out[0][-1] == ("close", 1000, "") and sum(m["type"] == "Results" for m in out[0][:-1]) >= 4


def test_multichannel_results_per_channel():
    s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&channels=2&multichannel=true&endpointing=300")
    left, right = silence(1.0), np.concatenate([tone(0.5), silence(0.5)])
    feed(s, np.stack([left, right], axis=1).reshape(-1), 0.0, step=0.018)
    msgs = [m for m in decoded(s.data_to_send()) if m["type"] == "Results"]
    assert [m["channel_index"] for m in msgs] == [[1, 2]]
    assert msgs[0]["channel"]["alternatives"][0]["words"]


def test_utterance_end_after_gap_in_words():
    s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true&utterance_end_ms=1000"
                     "&endpointing=300")
    feed(s, np.concatenate([tone(0.6), silence(1.7)]), 0.0)
    msgs = decoded(s.data_to_send())
    ends = [m for m in msgs if m["type"] == "UtteranceEnd"]
    assert ends == [{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.6}]
    final_idx = next(i for i, m in enumerate(msgs) if m["type"] == "Results" and m["is_final"])
    assert msgs.index(ends[0]) > final_idx


# ------------------------------------------------------------------------------------------ accounting

def test_accounting_duplicates_max_open_and_bounded_records():
    acc = Accounting(max_closed=2)
    a = acc.open("r1", "CA1", 1.0)
    b = acc.open("r2", "CA1", 2.0)  # overlaps a: duplicate
    acc.close(a, 1000, "", 3.0)
    acc.close(b, 1011, NET0001, 4.0)
    c = acc.open("r3", "CA1", 5.0)  # sequential: not a duplicate
    acc.close(c, 1000, "", 6.0)
    acc.close(c, 1000, "", 6.0)  # idempotent
    snap = acc.snapshot()
    assert snap["interactions"]["CA1"] == {"connections": 3, "duplicates": 1, "max_open": 2, "open": 0}
    t = snap["totals"]
    assert (t["connections"], t["duplicates"], t["closes_1011"], t["closes_1000"], t["records_evicted"]) == (3, 1, 1, 2, 1)
    assert [r["request_id"] for r in snap["connections"]] == ["r2", "r3"]
    assert [r["duplicate"] for r in snap["connections"]] == [True, False]


def test_utterance_end_counts_each_long_gap_whatever_the_frame_length():
    # Two gaps over utterance_end_ms (1.2 s) and one under (0.5 s); a frame may hold a whole gap and the
    # next onset (here up to the whole stream in one frame): the gap still counts, before the next result.
    audio = np.concatenate([tone(1.0), silence(1.2), tone(0.5), silence(0.5), tone(0.5), silence(1.2)]).tobytes()
    for size in (576, 5760, 57600, len(audio)):
        s = make_session("model=nova-3&encoding=linear16&sample_rate=8000&interim_results=true&endpointing=300"
                         "&utterance_end_ms=1000")
        for off in range(0, len(audio), size):
            s.receive_audio(audio[off:off + size], 0.0)
        msgs = decoded(s.data_to_send())
        ends = [m["last_word_end"] for m in msgs if m["type"] == "UtteranceEnd"]
        assert ends == [1.0, 3.7], (size, ends)
        first_end = next(i for i, m in enumerate(msgs) if m["type"] == "UtteranceEnd")
        later = [m for m in msgs[first_end:] if m["type"] == "Results" and m["channel"]["alternatives"][0]["words"]]
        assert later and later[0]["channel"]["alternatives"][0]["words"][0]["start"] == 2.2


def test_noted_arrivals_hold_the_idle_timer_and_a_close_request_stops_it():
    # The sphinx shell notes frames when they arrive and processes them later, behind a decode.
    s = make_session(idle=1.0)
    s.receive_audio(tone(0.1).tobytes(), 0.0)
    s.note_arrival(b"\x00\x00", 0.8)  # arrived, not yet processed
    assert s.idle_deadline == 1.8 and not s.check_idle(1.5)
    s.note_arrival('{"type": "CloseStream"}', 0.9)
    assert not s.check_idle(60.0)  # the client waits for its results: no NET-0001
    s.receive_text('{"type": "CloseStream"}', 0.9)
    assert [m["type"] if isinstance(m, dict) else m[0] for m in decoded(s.data_to_send())][-2:] == ["Metadata", "close"]


def test_voice_tap_reports_speech_starts_as_the_audio_arrives():
    from rtaa_cli.emulator.session import VoiceTap
    p = parse_listen_params(q("model=nova-3&encoding=linear16&sample_rate=8000&vad_events=true"))
    tap = VoiceTap(p, lambda: 0.25)
    audio = np.concatenate([silence(0.5), tone(0.5), silence(0.5), tone(0.3)]).tobytes()
    sent = []
    for i, off in enumerate(range(0, len(audio), 1001)):  # odd chunks: the tap decodes like the session
        sent += [(i, m) for m in tap.receive_audio(audio[off:off + 1001], float(i))]
    assert [orjson.loads(m.data)["timestamp"] for _, m in sent] == [0.5, 1.5]
    assert [m.due - i for i, m in sent] == [0.25, 0.25] and [m.kind for _, m in sent] == ["SpeechStarted"] * 2
    assert tap.receive_audio(b"", 9.0) == []
