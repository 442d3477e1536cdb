"""Sans-I/O per-call bookkeeping for soak and smoke callers: transcript feed messages in,
latency samples / delivery coverage out (latency via :mod:`rtaa_cli.latency`, the one definition).

Fed with decoded feed messages (docs/transcript-feed.md) and the wall time they were received; no
sockets, so tests drive it with hand-made messages.
"""
from __future__ import annotations

from typing import Any

from rtaa_cli.latency import SendLog

MAX_SAMPLES_PER_CALL = 20_000  # bounded: a 60-minute call yields a few thousand results


class TranscriptTracker:
    """Classifies one call's transcript messages.

    * first-partial latency: the first non-final result with text after the previous final (the
      start of an utterance), as docs/transcript-feed.md defines it;
    * final latency: every ``is_final`` result with text (empty endpointing finals in silence are
      not an agent-visible result, but they do count for coverage);
    * coverage: the furthest ``audio_end_ms`` of any final result (delivery compares it with the
      audio sent);
    * ``call_ended`` ends the call's feed.
    """

    def __init__(self, send_log: SendLog, interaction_id: str | None = None) -> None:
        self.send_log = send_log
        self.interaction_id = interaction_id
        self.in_utterance = False
        self.first_partial: list[tuple[float, float]] = []
        self.final: list[tuple[float, float]] = []
        self.final_audio_end_ms: float | None = None
        self.results = 0
        self.ended = False
        self.call_started = False
        self.errors: list[str] = []
        self.texts: list[str] = []

    def on_message(self, msg: dict[str, Any], received_at: float) -> None:
        mtype = msg.get("type")
        if self.interaction_id is not None and msg.get("interaction_id") not in (None, self.interaction_id):
            return  # firehose or a misrouted message: not ours
        if mtype == "call_ended":
            self.ended = True
            return
        if mtype == "call_started":
            self.call_started = True
            return
        if mtype != "transcript":
            return
        end_ms = msg.get("audio_end_ms")
        if not isinstance(end_ms, (int, float)):
            self.results += 1
            self.error("transcript without audio_end_ms")
            return
        self.on_result(bool(msg.get("is_final")), msg.get("text") or "", float(end_ms), received_at,
                       self.send_log.latency_ms(float(end_ms), received_at))

    def on_result(self, is_final: bool, text: str, end_ms: float, received_at: float, latency: float | None) -> None:
        """One transcript result (also fed directly by drivers that parsed the feed themselves)."""
        self.results += 1
        if latency is None:
            self.error(f"result covers audio not sent yet (audio_end_ms={end_ms})")
            return
        if is_final:
            if self.final_audio_end_ms is None or end_ms > self.final_audio_end_ms:
                self.final_audio_end_ms = float(end_ms)
            if text and len(self.final) < MAX_SAMPLES_PER_CALL:
                self.final.append((received_at, latency))
                if len(self.texts) < 200:
                    self.texts.append(text)
            self.in_utterance = False
        elif text and not self.in_utterance:
            self.in_utterance = True
            if len(self.first_partial) < MAX_SAMPLES_PER_CALL:
                self.first_partial.append((received_at, latency))

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)
