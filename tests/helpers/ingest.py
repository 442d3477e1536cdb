"""The ingest's stream rules driven without sockets: a call as the bus shows it, a start event, the shell's part."""
from __future__ import annotations

from dataclasses import dataclass, field

from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest_rules import IngestRules, Stream


@dataclass
class Call:
    """A live call as the bus shows it."""

    sample_rate: int | None = None


@dataclass
class StartEv:
    call_sid: str
    stream_sid: str = "ST1"
    sample_rate: int = 8000
    custom_parameters: dict[str, str] = field(default_factory=dict)


class Ingest:
    """The shell's part, reduced to what the rules need: a call appears on the bus at its first start."""

    def __init__(self, **cfg: object) -> None:
        self.calls: dict[str, Call] = {}
        self.rules = IngestRules(IngestConfig(**cfg), self.calls)  # type: ignore[arg-type]

    def stream(self, owner: str = "anonymous", now: float = 0.0) -> Stream:
        return Stream(owner, self.rules.message_bucket(now))

    def start(self, s: Stream, call: str, now: float = 0.0, **ev: object):
        started = self.rules.start(s, StartEv(call, **ev), now)  # type: ignore[arg-type]
        self.calls.setdefault(started.interaction_id, Call())
        return started
