"""Prometheus metrics of one pipeline instance, in its own registry (tests run several pipelines in
one process; the global registry would mix them)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rtaa_cli.pipeline.hotmetrics import LoopCounter, LoopHistogram

# Added latency is sub-millisecond when healthy: resolve 50 us .. 100 ms.
_ADDED_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class PipelineMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, ...: what a soak watches for leaks.
        ProcessCollector(registry=r)
        self.calls_active = Gauge("rtaa_calls_active", "Calls with an open interaction", registry=r)
        self.calls_total = Counter("rtaa_calls", "Calls started", registry=r)
        self.streams_total = Counter("rtaa_ingest_streams", "Exotel streams accepted (start events)", registry=r)
        self.streams_superseded = Counter(
            "rtaa_ingest_streams_superseded", "Older streams closed by a newer stream of the same call", registry=r)
        self.frames_in = LoopCounter("rtaa_frames_in", "Media frames received by the ingest", r)
        self.bad_input = Counter("rtaa_bad_input", "Bad caller input by kind", ["kind"], registry=r)
        self.caller_closes = Counter("rtaa_caller_closes", "Caller connections closed by us, by code", ["code"],
                                     registry=r)
        self.idle_closes = Counter("rtaa_idle_closes", "Connections closed by an idle limit (start, hold, feed)",
                                   ["limit"], registry=r)
        self.connections_refused = Counter(
            "rtaa_connections_refused", "WebSocket handshakes refused with HTTP 503 at --max-connections", registry=r)
        self.accept_errors = Counter("rtaa_accept_errors", "accept() failures for lack of descriptors or memory",
                                     ["errno"], registry=r)
        self.bus_overloaded = Counter("rtaa_bus_overloaded", "Calls closed 1011 because the bus stayed full",
                                      registry=r)
        # Redis bus (docs/scale-out.md); 0 on the memory bus.
        self.bus_errors = Counter("rtaa_bus_redis_errors", "Redis bus operations that failed (outage)", registry=r)
        self.bus_calls_lost = Counter(
            "rtaa_bus_calls_lost", "Calls whose stream Redis no longer had (restarted empty); caller closed 1011",
            registry=r)
        self.bus_idle_calls_ended = Counter(
            "rtaa_bus_idle_calls_ended", "Calls a worker ended because their stream stayed empty (ingest gone)",
            registry=r)
        self.bus_trimmed_entries = Counter(
            "rtaa_bus_trimmed_entries", "Call stream entries trimmed by MAXLEN before a worker read them", registry=r)
        self.bus_backlog = Gauge("rtaa_bus_backlog_entries",
                                 "Entries in the longest stream of the calls this worker owns (vs MAXLEN)",
                                 registry=r)
        self.bus_takeovers = Counter("rtaa_bus_takeovers", "Calls this worker took over after their lease lapsed",
                                     registry=r)
        self.bus_leases_lost = Counter("rtaa_bus_leases_lost", "Calls this worker dropped because its lease was lost",
                                       registry=r)
        self.bus_fenced_ops = Counter(
            "rtaa_bus_fenced_operations",
            "Provider operations or feed writes refused because this worker no longer held the call's lease",
            registry=r)
        self.bus_superseded_entries = Counter(
            "rtaa_bus_superseded_entries",
            "Call stream entries a worker skipped: sent by an ingest after another ingest's newer stream of the call began",
            registry=r)
        self.bus_duplicates_dropped = Counter(
            "rtaa_bus_duplicate_results_dropped", "Feed results with an already delivered seq, dropped by the ingest",
            registry=r)
        self.audio_after_end = Counter("rtaa_audio_after_end", "Audio pushed after the call ended (reported, not sent)",
                                       registry=r)
        self.empty_frames = Counter("rtaa_empty_audio_frames",
                                    "Media frames with an empty payload, dropped (0 bytes is CloseStream to Deepgram)",
                                    registry=r)
        self.provider_opened = Counter("rtaa_provider_connections_opened", "Provider connections opened",
                                       ["provider"], registry=r)
        self.provider_open_failures = Counter("rtaa_provider_open_failures", "Failed provider connection attempts",
                                              ["provider"], registry=r)
        self.provider_reconnects = Counter("rtaa_provider_reconnects", "Provider connections reopened mid-call",
                                           registry=r)
        self.duplicate_opens_prevented = Counter(
            "rtaa_provider_duplicate_opens_prevented",
            "Callers that needed a provider stream while one was opening and joined that opening", registry=r)
        # Self-reported ground truth for remote soaks (docs/architecture.md "Definitions": duplicate connection): a provider
        # connection activated while another of the same interaction was still open. 0 by construction.
        self.duplicate_connections = Counter(
            "rtaa_provider_duplicate_connections",
            "Provider connections opened while another of the same interaction was still open", registry=r)
        self.provider_closes = Counter("rtaa_provider_closes", "Provider connection closes by code", ["code"],
                                       registry=r)
        self.provider_keepalives = Counter("rtaa_provider_keepalives", "KeepAlive messages sent", registry=r)
        self.frames_out = LoopCounter("rtaa_frames_out", "Audio frames sent to the provider (live path)", r)
        self.frames_waited = Counter("rtaa_frames_waited_for_provider",
                                     "Frames that arrived while their provider stream was opening (sent on open)",
                                     registry=r)
        self.replayed_bytes = Counter("rtaa_provider_replayed_bytes", "Audio bytes re-sent after a reconnect",
                                      registry=r)
        self.replay_trimmed_bytes = Counter("rtaa_replay_buffer_trimmed_bytes",
                                            "Unfinalized audio dropped from the replay buffer at its limit",
                                            registry=r)
        # Audio the transcript cannot cover (docs/serve.md "Fault bounds"); each also a `gap` message on the feed.
        self.audio_gaps = Counter("rtaa_audio_gaps", "Stretches of a call's audio no final result will cover, by cause",
                                  ["cause"], registry=r)
        self.audio_gap_seconds = Counter("rtaa_audio_gap_seconds", "Audio seconds no final result will cover, by cause",
                                         ["cause"], registry=r)
        self.results_out = Counter("rtaa_results_out", "Transcript results published", ["final"], registry=r)
        self.duplicate_finals_dropped = Counter("rtaa_duplicate_finals_dropped",
                                                "Final results already covered (after a reconnect), dropped",
                                                registry=r)
        self.finalize_timeouts = Counter("rtaa_finalize_timeouts", "Calls whose final results did not come in time",
                                         registry=r)
        self.provider_unparsable = Counter("rtaa_provider_unparsable_messages",
                                           "Provider messages that were not valid JSON or not a well-formed Results",
                                           registry=r)
        self.subscribers = Gauge("rtaa_transcript_subscribers", "Open transcript feed subscribers", registry=r)
        self.subscribers_too_slow = Counter("rtaa_transcript_subscribers_too_slow",
                                            "Subscribers closed 1008 because their queue was full", registry=r)
        self.queue_depth = Gauge("rtaa_queue_depth", "Items queued, by queue", ["queue"], registry=r)
        self.added_latency = LoopHistogram(
            "rtaa_pipeline_added_latency_seconds", "Ingest receive -> provider send, per live frame", _ADDED_BUCKETS, r)
        self.e2e_latency = Histogram(
            "rtaa_end_to_end_latency_seconds",
            "Ingest receive of the frame holding a result's audio end -> result written to the feeds",
            ["final"], buckets=_E2E_BUCKETS, registry=r)
        # Hot-path children, resolved once.
        self.results_final = self.results_out.labels(final="true")
        self.results_interim = self.results_out.labels(final="false")
        self.e2e_final = self.e2e_latency.labels(final="true")
        self.e2e_interim = self.e2e_latency.labels(final="false")

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (tests and /health); 0.0 when absent."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v
