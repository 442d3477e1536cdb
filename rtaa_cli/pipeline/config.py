"""Every knob of the pipeline in one dataclass; ``rtaa serve`` options map onto it 1:1."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProviderConfig:
    name: str = "fake"  # deepgram | sphinx | fake
    deepgram_url: str | None = None  # ws://host:port (the emulator) instead of wss://api.deepgram.com
    api_key: str | None = None  # DEEPGRAM_API_KEY
    model: str = "nova-3"
    language: str = "en"
    endpointing_ms: int = 300
    utterance_end_ms: int | None = 1000
    fake_engine: str = "segmenter"  # the in-process emulator's engine for provider "fake"
    open_timeout_s: float = 10.0


@dataclass
class WorkerConfig:
    keepalive_interval_s: float = 4.0  # Deepgram closes 1011 after ~10 s of no audio/text
    finalize_timeout_s: float = 5.0  # bound on waiting for the final results after CloseStream
    # A lost provider stream is retried for this long (backoff + jitter inside the window), then the call
    # fails 1011. Long enough to ride out a provider restart; the audio meanwhile waits in the replay buffer.
    reconnect_window_s: float = 15.0
    reconnect_base_s: float = 0.2  # backoff: base * 2**n, capped, times jitter in [0.5, 1)
    reconnect_cap_s: float = 2.0  # so a provider that is back is found within ~2 s
    # Audio not yet covered by a final, kept for replay after a reconnect: exactly this much at most (a ring,
    # 256 KB at 8 kHz). 16 s = what the earlier buffer (15 s, trimmed in 1 s steps) held at most.
    replay_limit_s: float = 16.0
    latency_window_frames: int = 512  # per call: (audio end, receive time) of the last ~18 s, for e2e latency
    # After calls end, glibc's free heap is given back to the kernel (malloc_trim) at most this often; 0 = never.
    heap_trim_interval_s: float = 10.0


@dataclass
class IngestConfig:
    path: str = "/v1/ingest"
    interaction_key: str = "call_sid"  # call_sid | stream_sid | custom:<name>
    sample_rates: tuple[int, ...] = (8000, 16000, 24000)
    max_message_bytes: int = 256 * 1024  # websockets max_size -> 1009 (Exotel's max chunk is 100 KB)
    max_calls: int = 1000  # concurrent calls; beyond -> 1013 try again later
    max_calls_per_principal: int = 0  # concurrent calls of one principal (0 = only max_calls); beyond -> 1013
    max_messages_per_s: float = 200.0  # per connection, token bucket (36 ms frames are ~28/s)
    rate_burst: float = 400.0
    max_audio_speed: float = 4.0  # audio seconds per wall second, sustained, per stream (0 = no limit) -> 1008
    audio_burst_s: float = 10.0  # audio a stream may send ahead of that pace (a network stall's catch-up)
    start_timeout_s: float = 5.0  # a connection that sends no `start` this long -> 1008
    max_hold_s: float = 600.0  # a started stream that sends no audio this long (a hold) -> call ended, 1008
    reconnect_grace_s: float = 5.0  # a stream that drops without `stop` may be resumed this long
    auth: str = "none"  # none | basic | jwt
    basic_user: str | None = None
    basic_password: str | None = None
    jwt_public_key: str | None = None  # PEM text (RS256)
    jwt_audience: str | None = None  # required `aud` when set
    jwt_issuer: str | None = None  # required `iss` when set
    jwt_max_lifetime_s: float | None = None  # bound on exp - iat (iat then required)
    admin_auth: bool = False  # /health and /metrics need a reader's credentials (when auth is not none)


@dataclass
class BusConfig:
    """``--bus``, ``--bus-prefix``, ``--role`` and the Redis bus's bounds (docs/scale-out.md)."""

    url: str = "memory"  # memory | redis://HOST:PORT/DB
    prefix: str = "rtaa"  # every Redis key starts with this (one deployment = one prefix)
    role: str = "all"  # all | ingest | worker (ingest/worker need a Redis bus)
    maxlen: int = 2048  # entries per call stream (~74 s of 36 ms frames); beyond, the oldest are trimmed
    feed_maxlen: int = 10000  # feed stream entries (transcripts of every call)
    lease_ms: int = 2000  # call ownership lease; a dead worker's calls are taken over after about this
    idle_end_s: float = 60.0  # a worker ends a call whose stream got nothing this long (its ingest is gone)

    @property
    def is_redis(self) -> bool:
        return self.url != "memory"


@dataclass
class PipelineConfig:
    host: str = "127.0.0.1"
    port: int = 0
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    bus_queue_frames: int = 256  # per call (~9 s of 36 ms frames)
    bus_publish_timeout_s: float = 2.0  # ingest waits this long on a full queue, then closes 1011
    subscriber_queue: int = 1000  # transcript feed messages per subscriber before 1008
    feed_wait_s: float = 60.0  # a feed of an id that is not a live call waits this long for it, then 1008
    max_connections: int = 0  # WebSocket connections (ingest + feeds); beyond -> HTTP 503. 0 = auto (below RLIMIT_NOFILE)
    jsonl_path: str | None = None
    shutdown_timeout_s: float = 10.0
