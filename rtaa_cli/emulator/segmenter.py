"""Deterministic energy-based segmentation of one audio channel (pure code, no clock: audio time only).

Audio is cut into 10 ms blocks; a block is *voiced* when its mean square exceeds a fixed threshold
(-38 dBFS by default: phone speech sits around -30..-15; the room noise and breath in the pauses of
fixtures/audio/call.wav reach -40..-55, and at -45 the speech boundaries ran 0.1-0.3 s into the pauses). Per frame: the samples
are copied (as float64) after the partial block carried from the previous frame into a reusable
``(blocks, block)`` buffer, one ``np.vecdot`` gives every completed block's energy, and a short Python
loop walks the frame's blocks (3-4 for 36 ms frames). Energies are sums of squared int16 values, exact in
float64, so results do not depend on how the audio was cut into frames.

Timing model (Deepgram's, docs/deepgram-protocol.md §3 and the endpointing docs):
- A *window* runs from the end of the previous final to now. Finals tile the audio: each final covers
  ``[window_start, end)`` and the next window starts at that ``end``.
- Voice activity: speech starts at a voiced block and stops after ``min_pause_ms`` (100) of unvoiced
  blocks, like a VAD's hangover: dips inside words (10th percentile of the fixture's speech: -41 dBFS)
  are not pauses. ``SpeechStarted`` is sent at each start (when vad events are requested), whatever the
  endpointing.
- Endpoint: after speech, ``max(endpointing_ms, min_pause_ms)`` of silence (rounded up to whole blocks)
  ends the window with ``is_final`` and ``speech_final``. Deepgram's endpointing "relies on a Voice
  Activity Detector ... and triggers when a sufficiently long pause is detected" (its docs): with the
  default ``endpointing=10`` a 10 ms energy dip inside a word is no such pause (at -45 dBFS and no
  hangover, the fixture's 5 sentences gave 55 finals, 30 shorter than 0.3 s, 8 without words; now 10).
  ``endpointing=false`` disables endpoints.
- Long speech: a window is also finalised (``speech_final`` false) after ``max_window_ms`` of audio, so
  continuous talk still yields a final every few seconds. Pure silence is finalised as an empty final at
  the same cadence.
- Interim results (when requested) about every ``interim_every_ms`` of audio since the last result,
  empty during silence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_MS = 10


@dataclass(frozen=True)
class Window:
    """A span of one channel's audio in samples; ``voiced_*`` bound the speech inside it (None: silence)."""

    start: int
    end: int
    voiced_start: int | None
    voiced_end: int | None


@dataclass(frozen=True)
class SegmentEvent:
    kind: str  # "speech_started" | "interim" | "final"
    window: Window
    speech_final: bool = False
    from_finalize: bool = False


class Segmenter:
    def __init__(self, sample_rate: int, *, endpointing_ms: int | None, interim: bool, vad_events: bool,
                 threshold_dbfs: float = -38.0, interim_every_ms: int = 1000, max_window_ms: int = 5000,
                 min_pause_ms: int = 100) -> None:
        self.rate = sample_rate
        self.block = max(1, sample_rate * BLOCK_MS // 1000)
        # Threshold on the *sum* of squares of a block of int16 samples.
        self._threshold = float(self.block) * (32768.0 * 10 ** (threshold_dbfs / 20.0)) ** 2
        self._endpoint = None if endpointing_ms is None else max(
            self.block, -(-max(endpointing_ms, min_pause_ms) * sample_rate // 1000))
        self._min_pause = max(self.block, -(-min_pause_ms * sample_rate // 1000))
        self._interim_every = interim_every_ms * sample_rate // 1000 if interim else None
        self._max_window = max_window_ms * sample_rate // 1000
        self._vad_events = vad_events
        # Blocks are assembled in a reusable float64 buffer: row i is block i of the current frame, the
        # partial block carried from the previous frame sits at its start (``_rest_count`` samples).
        # It grows (never shrinks) for long frames; a 36 ms frame needs 5 rows.
        self._blocks = np.zeros((8, self.block))
        self._flat = self._blocks.reshape(-1)
        self._rest_count = 0
        self.position = 0  # samples classified so far
        self._window_start = 0
        self._voiced_start: int | None = None
        self._voiced_end: int | None = None
        self._in_speech = False  # the open window has speech that no endpoint has closed yet
        self._talking = False  # voice activity (the VAD's state, for SpeechStarted)
        self._silence = 0  # samples of the current run of unvoiced blocks
        self._last_result = 0
        self._events: list[SegmentEvent] = []

    @property
    def speech_onset(self) -> int | None:
        """The first voiced sample of the open window (None: silence so far)."""
        return self._voiced_start

    def feed(self, samples: np.ndarray) -> list[SegmentEvent]:
        """Classify whole blocks of ``samples`` (int16, 1-D); a partial block waits for the next frame."""
        n = samples.shape[0]
        rest = self._rest_count
        total = rest + n
        block = self.block
        if total > self._flat.shape[0]:
            self._grow(total)
        flat = self._flat
        flat[rest:total] = samples
        count = total // block
        if count:
            rows = self._blocks[:count]
            threshold = self._threshold
            step = self._step
            for energy in np.vecdot(rows, rows).tolist():
                step(energy > threshold, block)
            done = count * block
            if done < total:
                flat[:total - done] = flat[done:total]
            self._rest_count = total - done
        else:
            self._rest_count = total
        return self._drain()

    def flush(self, *, from_finalize: bool) -> list[SegmentEvent]:
        """Finalise pending speech now (Finalize / CloseStream). Nothing is emitted when there is none."""
        count = self._rest_count
        if count:
            rest = self._flat[:count]
            voiced = float(np.dot(rest, rest)) > self._threshold * count / self.block
            self._rest_count = 0
            self._step(voiced, count)
        if self._voiced_start is not None:
            self._final(speech_final=False, from_finalize=from_finalize)
            self._in_speech = False
        return self._drain()

    def _grow(self, samples: int) -> None:
        rows = -(-samples // self.block)
        blocks = np.zeros((rows, self.block))
        blocks.reshape(-1)[:self._rest_count] = self._flat[:self._rest_count]
        self._blocks, self._flat = blocks, blocks.reshape(-1)

    def _drain(self) -> list[SegmentEvent]:
        events, self._events = self._events, []
        return events

    def _window(self) -> Window:
        return Window(self._window_start, self.position, self._voiced_start, self._voiced_end)

    def _final(self, *, speech_final: bool, from_finalize: bool = False) -> None:
        self._events.append(SegmentEvent("final", self._window(), speech_final, from_finalize))
        self._window_start = self._last_result = self.position
        self._voiced_start = self._voiced_end = None

    def _step(self, voiced: bool, size: int) -> None:
        start = self.position
        self.position += size
        if voiced:
            if not self._talking:
                self._talking = True
                if self._vad_events:
                    self._events.append(SegmentEvent("speech_started", Window(start, start, start, None)))
            self._in_speech = True
            if self._voiced_start is None:
                self._voiced_start = start
            self._voiced_end = self.position
            self._silence = 0
        else:
            self._silence += size
            if self._talking and self._silence >= self._min_pause:
                self._talking = False
            if self._in_speech and self._endpoint is not None and self._silence >= self._endpoint:
                self._in_speech = False
                self._final(speech_final=True)
                return
        if self.position - self._window_start >= self._max_window:
            self._final(speech_final=False)
        elif self._interim_every is not None and self.position - self._last_result >= self._interim_every:
            self._last_result = self.position
            self._events.append(SegmentEvent("interim", self._window()))
