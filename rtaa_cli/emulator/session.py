"""Sans-I/O core of one ``/v1/listen`` stream: frames and a clock in, timed messages and a close out.

Modelled on ``websockets.protocol``: the I/O shell calls ``receive_audio`` / ``receive_text`` /
``check_idle`` / ``fail`` with the current time, then drains ``data_to_send()``, a list of
:class:`Send` (a JSON text frame due at a time) and at most one final :class:`Close`. No sockets, no
real clock: tests drive it with a fake one.

Timing contract (what makes the soak's latency ground truth exact): a message about audio that arrived
at ``now`` is due at ``now + delay`` where ``delay`` is the configured result latency plus a jitter draw;
due times never decrease, so messages keep Deepgram's order even with jitter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtaa_cli.protocols.closecodes import Close as CloseCode
from rtaa_cli.emulator.audio import AudioDecoder, UndecodableAudio
from rtaa_cli.emulator.features import Diarizer
from rtaa_cli.emulator.messages import MessageFactory
from rtaa_cli.emulator.params import KEYTERM_TOKEN_LIMIT, MODELS, StreamParams
from rtaa_cli.emulator.segmenter import SegmentEvent, Segmenter
from rtaa_cli.emulator.textfmt import format_words, search_hits
from rtaa_cli.emulator.transcribers import Transcriber
from rtaa_cli.protocols import deepgram as dg
from rtaa_cli.protocols.deepgram import DATA0000, NET0001, ControlType
from rtaa_cli.robustmark import Detector as RobustMarkDetector
from rtaa_cli.watermark import Decoder as WatermarkDecoder


@dataclass(slots=True)
class Send:
    due: float
    data: bytes
    kind: str  # "Results", "Metadata", "UtteranceEnd", "SpeechStarted", "Error", "Configure..."


@dataclass(slots=True)
class Close:
    due: float
    code: int
    reason: str


class _Track:
    """One transcribed channel: its segmenter, its word source, its UtteranceEnd bookkeeping."""

    __slots__ = ("segmenter", "transcriber", "needs_audio", "last_word_end", "fed", "diarizer", "sentence_start")

    def __init__(self, segmenter: Segmenter, transcriber: Transcriber, diarize: bool) -> None:
        self.segmenter = segmenter
        self.transcriber = transcriber
        # Placeholder words need no samples: skip the per-frame call.
        self.needs_audio = getattr(transcriber, "needs_audio", True)
        self.fed = 0  # samples given to the transcriber
        self.last_word_end: float | None = None  # pending UtteranceEnd
        self.diarizer = Diarizer() if diarize else None
        self.sentence_start = True  # the next result's first word starts a sentence (punctuation)


def split_channels(samples: np.ndarray, multichannel: bool) -> list[np.ndarray]:
    """The tracks of ``(n, channels)`` samples: one per channel with ``multichannel``, else the downmix."""
    if multichannel:
        return [np.ascontiguousarray(samples[:, c]) for c in range(samples.shape[1])]
    return [samples.mean(axis=1).astype(np.int16)]


class Session:
    def __init__(self, params: StreamParams, *, request_id: str, created: str, now: float,
                 idle_timeout_s: float, delay_s: Callable[[], float],
                 transcriber_factory: Callable[[int], Transcriber],
                 segmenter_options: dict | None = None) -> None:
        self.params = params
        self.request_id = request_id
        self.created = created
        self.idle_timeout_s = idle_timeout_s
        self._delay_s = delay_s
        self._transcriber_factory = transcriber_factory
        self._segmenter_options = segmenter_options or {}
        self._messages = MessageFactory(request_id, params)
        self._decoder = AudioDecoder(params.encoding, params.sample_rate, params.channels)
        self._sha = hashlib.sha256()
        # rtaa's callers mark their audio (rtaa_cli.watermark): which call this stream carries, with no tag.
        # Only 16-bit mono PCM can carry the mark unchanged.
        self.watermark = WatermarkDecoder() if params.encoding == "linear16" and params.channels == 1 else None
        # ... and add a low-level mark that survives resampling and gain (rtaa_cli.robustmark): any mono
        # stream, made once its rate is known
        self.robust_mark: RobustMarkDetector | None = None
        self._tracks: list[_Track] = []
        self._out: list[Send | Close] = []
        self._last_due = 0.0
        self.last_activity = now
        self.arrived = now
        self._close_requested = False
        self.closing: Close | None = None
        # accounting
        self.audio_bytes = 0
        self.audio_frames = 0  # sample frames (one sample per channel)
        self.keepalives = 0
        self.finalizes = 0
        self.close_stream_seen = False
        self.schema_errors = 0

    # ----------------------------------------------------------------------------------------- inputs

    @property
    def audio_seconds(self) -> float:
        rate = self._decoder.sample_rate
        return self.audio_frames / rate if rate else 0.0

    @property
    def idle_deadline(self) -> float:
        if self._close_requested:
            return math.inf  # the client is waiting for the rest of its results: no NET-0001
        return max(self.last_activity, self.arrived) + self.idle_timeout_s

    def note_arrival(self, message: bytes | str, now: float) -> None:
        """A frame arrived that the session will process later (sphinx: behind a decode). Called by the
        I/O shell's loop only: the idle timer is about the client's silence, not the emulator's backlog,
        and once the client has asked to close (CloseStream, empty frame) it only waits for its results."""
        self.arrived = now
        if dg.is_close_stream(message):
            self._close_requested = True

    def receive_audio(self, data: bytes, now: float) -> None:
        if self.closing is not None:
            return
        self.last_activity = now
        if not data:  # legacy end-of-stream signal: same as CloseStream (docs/deepgram-protocol.md §2)
            self._close_stream(now)
            return
        self.audio_bytes += len(data)
        try:
            samples = self._decoder.decode(data)
        except UndecodableAudio as exc:
            self.fail(CloseCode.POLICY_VIOLATION, f"{DATA0000} ({exc})"[:123], now)
            return
        self._sha.update(data)
        if not self._tracks:
            self._open_tracks()
        if not samples.shape[0]:  # a frame shorter than one sample frame: its bytes wait for the next one
            return
        self.audio_frames += samples.shape[0]
        if samples.ndim == 1:
            if self.watermark is not None:
                self.watermark.feed_samples(samples)
            if self.robust_mark is None:
                self.robust_mark = RobustMarkDetector(self._decoder.sample_rate or 8000)
            if self.watermark is None or not self.watermark.calls:  # the LSB code found: the audio is unchanged
                self.robust_mark.feed_samples(samples)
            self._feed(0, samples, now)
        else:
            for channel, x in enumerate(split_channels(samples, self.params.multichannel)):
                self._feed(channel, x, now)

    def receive_text(self, text: str, now: float) -> None:
        if self.closing is not None:
            return
        self.last_activity = now  # any frame resets the idle timer, even a bad one (NET-0001 is about silence)
        kind, msg = dg.parse_control(text)
        if kind is ControlType.KEEP_ALIVE:
            self.keepalives += 1
        elif kind is ControlType.FINALIZE:
            self.finalizes += 1
            self._flush(now, from_finalize=True)
        elif kind is ControlType.CLOSE_STREAM:
            self._close_stream(now)
        elif kind is ControlType.CONFIGURE and isinstance(msg, dict):
            self._configure(msg, now)
        else:
            # Assumption [??]: the socket stays open after a SchemaError (unknown, docs/deepgram-protocol.md §2).
            self.schema_errors += 1
            why = "Unknown message type." if isinstance(msg, dict) else "Could not parse the text message as JSON."
            self._emit(now, dg.build_schema_error(why, text[:1000]), "Error")

    def _configure(self, msg: dict, now: float) -> None:
        """Mid-stream changes: ``keyterms`` (Nova-3) replace the boosted terms; ``features.numerals`` turns
        numerals on or off (Deepgram's Numerals docs: the one feature a Configure can toggle)."""
        keyterms = msg.get("keyterms")
        nova3 = MODELS[self.params.model][2] == "nova-3"
        boostable = all(hasattr(t.transcriber, "boosted") for t in self._tracks)
        if isinstance(keyterms, list) and sum(len(str(k).split()) for k in keyterms) > KEYTERM_TOKEN_LIMIT:
            self._emit(now, self._messages.configure_failure(
                "CONFIGURE_KEYTERM_LIMIT_EXCEEDED", f"Keyterms are limited to {KEYTERM_TOKEN_LIMIT} tokens."),
                "Configure")
            return
        if keyterms is not None and nova3 and boostable and isinstance(keyterms, list):
            boosted = tuple(tuple(str(k).lower().split()) for k in keyterms if str(k).split())
            self.params = dataclasses.replace(self.params, boosted=boosted)
            for track in self._tracks:
                track.transcriber.boosted = boosted
        features = msg.get("features")
        if isinstance(features, dict) and isinstance(features.get("numerals"), bool):
            text = dataclasses.replace(self.params.text, numerals=features["numerals"])
            self.params = dataclasses.replace(self.params, text=text)
        self._emit(now, self._messages.configure_reply(keyterms, nova3, boostable), "Configure")

    def check_idle(self, now: float) -> bool:
        """Close with Metadata + 1011 NET-0001 if nothing arrived for ``idle_timeout_s``."""
        if self.closing is None and now >= self.idle_deadline:
            self._emit_metadata(now, immediate=True)
            self._close(now, CloseCode.INTERNAL_ERROR, NET0001, immediate=True)
            return True
        return False

    def fail(self, code: int, reason: str, now: float) -> None:
        """Close now with ``code`` (undecodable audio, injected faults); nothing pending is flushed."""
        if self.closing is None:
            self._close(now, code, reason, immediate=True)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> list[Send | Close]:
        out, self._out = self._out, []
        return out

    # -------------------------------------------------------------------------------------- internals

    def _open_tracks(self) -> None:
        rate = self._decoder.sample_rate or 8000
        n = self._decoder.channels if self.params.multichannel else 1
        p = self.params
        for _ in range(n):
            seg = Segmenter(rate, endpointing_ms=p.endpointing_ms, interim=p.interim_results,
                            vad_events=p.vad_events, **self._segmenter_options)
            transcriber = self._transcriber_factory(rate)
            if hasattr(transcriber, "boosted"):  # keyterms may have changed (Configure) before the first audio
                transcriber.boosted = p.boosted
            self._tracks.append(_Track(seg, transcriber, p.diarize))

    def _due(self, now: float, immediate: bool = False) -> float:
        due = now if immediate else now + self._delay_s()
        if due < self._last_due:
            due = self._last_due
        self._last_due = due
        return due

    def _emit(self, now: float, data: bytes, kind: str, immediate: bool = False) -> None:
        self._out.append(Send(self._due(now, immediate), data, kind))

    def _feed(self, channel: int, samples: np.ndarray, now: float) -> None:
        track = self._tracks[channel]
        events = track.segmenter.feed(samples)
        if not events:  # the common case (~27 of 28 frames): no result, nothing to cut
            if track.needs_audio:
                track.transcriber.feed(samples)
            track.fed += samples.shape[0]
            if track.last_word_end is not None:
                self._check_utterance_end(channel, track, now)
            return
        # The word source gets the audio exactly up to each result's window end before it is asked for
        # words (frames may be long: a 5 s frame must not put later words into an earlier final).
        base = track.fed
        done = 0
        for ev in events:
            if ev.kind != "speech_started":
                cut = min(max(ev.window.end - base, done), samples.shape[0])
                if cut > done:
                    track.transcriber.feed(samples[done:cut])
                    done = cut
            self._handle(channel, track, ev, now)
        if done < samples.shape[0]:
            track.transcriber.feed(samples[done:])
        track.fed = base + samples.shape[0]
        self._check_utterance_end(channel, track, now)

    def _handle(self, channel: int, track: _Track, ev: SegmentEvent, now: float) -> None:
        rate = track.segmenter.rate
        channels = len(self._tracks) if self.params.multichannel else 1
        w = ev.window
        if ev.kind == "speech_started":
            self._emit(now, dg.build_speech_started(channel, channels, w.start / rate), "SpeechStarted")
            return
        final = ev.kind == "final"
        if track.last_word_end is not None and w.voiced_start is not None:
            # A long frame can hold a whole gap and the next speech: the UtteranceEnd comes first.
            self._check_utterance_end(channel, track, now, w.voiced_start / rate)
        heard = track.transcriber.words(w, final)
        formatted = format_words(heard, self.params.text)  # filler words, numerals, redact, replace, ...
        words = formatted.words
        speakers = None if track.diarizer is None else track.diarizer.speakers(words, final)
        search = search_hits(heard, self.params.search) if self.params.search else None
        self._emit(now, self._messages.results(
            channel=channel, channels=channels, start=w.start / rate, end=w.end / rate, words=words,
            is_final=final, speech_final=ev.speech_final, from_finalize=ev.from_finalize, speakers=speakers,
            sentence_start=track.sentence_start, marks=formatted.marks, search=search), "Results")
        if final and words:
            track.sentence_start = ev.speech_final
        if final and words and self.params.utterance_end_ms is not None:
            track.last_word_end = words[-1][2]

    def _check_utterance_end(self, channel: int, track: _Track, now: float, gap_end: float | None = None) -> None:
        if track.last_word_end is None:
            return
        if gap_end is None:
            # The gap after the last final word runs to the next speech, or to now, in audio time: a frame
            # that holds both the gap's end and the next onset still counts the gap.
            seg = track.segmenter
            onset = seg.speech_onset
            gap_end = (seg.position if onset is None else onset) / seg.rate
        if (gap_end - track.last_word_end) * 1000.0 >= self.params.utterance_end_ms:
            channels = len(self._tracks) if self.params.multichannel else 1
            self._emit(now, dg.build_utterance_end(channel, channels, track.last_word_end), "UtteranceEnd")
            track.last_word_end = None

    def _flush(self, now: float, *, from_finalize: bool) -> None:
        for channel, track in enumerate(self._tracks):
            for ev in track.segmenter.flush(from_finalize=from_finalize):
                self._handle(channel, track, ev, now)

    def _emit_metadata(self, now: float, immediate: bool = False) -> None:
        channels = (self._decoder.channels if self.audio_frames else 0)
        data = self._messages.metadata(sha256=self._sha.hexdigest(), created=self.created,
                                       duration=self.audio_seconds, channels=channels)
        self._emit(now, data, "Metadata", immediate)

    def _close_stream(self, now: float) -> None:
        self.close_stream_seen = True
        self._flush(now, from_finalize=False)
        self._emit_metadata(now)
        self._close(now, CloseCode.NORMAL, "")

    def _close(self, now: float, code: int, reason: str, immediate: bool = False) -> None:
        self.closing = Close(self._due(now, immediate), int(code), reason)
        self._out.append(self.closing)
        for track in self._tracks:
            track.transcriber.close()


class VoiceTap:
    """``SpeechStarted`` from the audio as it arrives, for an engine whose session runs behind the socket
    (sphinx: a frame waits while an earlier utterance is decoded, and barge-in tests need the VAD event at
    once). Same decoding and segmenter as the session's, which is then built without ``vad_events``."""

    def __init__(self, params: StreamParams, delay_s: Callable[[], float],
                 segmenter_options: dict | None = None) -> None:
        self._params = params
        self._delay_s = delay_s
        self._options = segmenter_options or {}
        self._decoder = AudioDecoder(params.encoding, params.sample_rate, params.channels)
        self._segmenters: list[Segmenter] = []
        self._broken = False

    def receive_audio(self, data: bytes, now: float) -> list[Send]:
        if self._broken or not data:
            return []
        try:
            samples = self._decoder.decode(data)
        except UndecodableAudio:  # the session closes the stream (1008); nothing to detect
            self._broken = True
            return []
        if not samples.shape[0]:
            return []
        if not self._segmenters:
            rate = self._decoder.sample_rate or 8000
            n = self._decoder.channels if self._params.multichannel else 1
            self._segmenters = [Segmenter(rate, endpointing_ms=None, interim=False, vad_events=True, **self._options)
                                for _ in range(n)]
        channels = [samples] if samples.ndim == 1 else split_channels(samples, self._params.multichannel)
        out = []
        total = len(self._segmenters) if self._params.multichannel else 1
        for channel, (seg, x) in enumerate(zip(self._segmenters, channels)):
            for ev in seg.feed(x):
                if ev.kind == "speech_started":
                    out.append(Send(now + self._delay_s(), dg.build_speech_started(
                        channel, total, ev.window.start / seg.rate), "SpeechStarted"))
        return out
