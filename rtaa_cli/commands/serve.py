"""`rtaa serve`: the whole pipeline on one port (ingest, transcript feeds, /health, /metrics)."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import orjson
import typer

from rtaa_cli import eventloop, logs
from rtaa_cli.eventloop import running_loop_name
from rtaa_cli.errors import RtaaError
from rtaa_cli.pipeline.config import BusConfig, IngestConfig, PipelineConfig, ProviderConfig, WorkerConfig
from rtaa_cli.pipeline.providers import PROVIDERS


def build_config(host: str, port: int, provider: str, deepgram_url: Optional[str], fake_engine: str, model: str,
                 ingest_path: str, interaction_key: str, auth: str, basic_user: Optional[str],
                 basic_password: Optional[str], jwt_public_key: Optional[Path], max_calls: int,
                 max_message_bytes: int, max_rate: float, keepalive_s: float, finalize_timeout_s: float,
                 reconnect_grace_s: float, jsonl: Optional[Path], jwt_audience: Optional[str] = None,
                 jwt_issuer: Optional[str] = None, jwt_max_lifetime_s: Optional[float] = None,
                 max_calls_per_principal: int = 0, admin_auth: bool = False,
                 bus: BusConfig | None = None,
                 reconnect_window_s: float = 15.0, max_audio_speed: float = 4.0,
                 audio_burst_s: float = 10.0, start_timeout_s: float = 5.0, max_hold_s: float = 600.0,
                 feed_wait_s: float = 60.0, max_connections: int = 0) -> PipelineConfig:
    bus = bus or BusConfig()
    check_bus(bus)
    if not 0 <= port <= 65535:
        raise RtaaError(f"--port must be 0-65535, not {port}")
    if max_calls_per_principal < 0:
        raise RtaaError("--max-calls-per-principal must be >= 0 (0 = no per-principal limit)")
    if jwt_max_lifetime_s is not None and jwt_max_lifetime_s <= 0:
        raise RtaaError("--jwt-max-lifetime must be > 0 seconds")
    if provider not in PROVIDERS:
        raise RtaaError(f"--provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    if fake_engine not in ("segmenter", "sphinx"):
        raise RtaaError(f"--fake-engine must be segmenter or sphinx, not {fake_engine!r}")
    if not (interaction_key in ("call_sid", "stream_sid") or
            (interaction_key.startswith("custom:") and len(interaction_key) > 7)):
        raise RtaaError(f"--interaction-key must be call_sid, stream_sid or custom:<name>, not {interaction_key!r}")
    if not ingest_path.startswith("/") or ingest_path.startswith("/v1/transcripts") or ingest_path in ("/health", "/metrics"):
        raise RtaaError(f"--ingest-path {ingest_path!r} must start with / and not clash with the feeds, /health or /metrics")
    pem = None
    if jwt_public_key is not None:
        try:
            pem = jwt_public_key.read_text()
        except OSError as exc:
            raise RtaaError(f"--jwt-public-key {jwt_public_key}: {exc.strerror or exc}") from None
    for name, value in (("--keepalive-s", keepalive_s), ("--finalize-timeout-s", finalize_timeout_s),
                        ("--max-rate", max_rate), ("--reconnect-window-s", reconnect_window_s),
                        ("--audio-burst-s", audio_burst_s), ("--start-timeout-s", start_timeout_s),
                        ("--max-hold-s", max_hold_s), ("--feed-wait-s", feed_wait_s)):
        if not value > 0 or value == float("inf"):
            raise RtaaError(f"{name} must be a number > 0, not {value}")
    if not 0 <= max_audio_speed < float("inf"):
        raise RtaaError(f"--max-audio-speed must be >= 0 (0 = no limit), not {max_audio_speed}")
    if max_connections < 0:
        raise RtaaError("--max-connections must be >= 0 (0 = auto, below the open-files limit)")
    return PipelineConfig(
        host=host, port=port, jsonl_path=str(jsonl) if jsonl else None,
        provider=ProviderConfig(name=provider, deepgram_url=deepgram_url, model=model, fake_engine=fake_engine,
                                api_key=os.environ.get("DEEPGRAM_API_KEY")),
        worker=WorkerConfig(keepalive_interval_s=keepalive_s, finalize_timeout_s=finalize_timeout_s,
                            reconnect_window_s=reconnect_window_s),
        ingest=IngestConfig(path=ingest_path, interaction_key=interaction_key, auth=auth,
                            basic_user=basic_user, basic_password=basic_password, jwt_public_key=pem,
                            max_calls=max_calls, max_message_bytes=max_message_bytes,
                            max_messages_per_s=max_rate, rate_burst=max(2 * max_rate, 10.0),
                            reconnect_grace_s=reconnect_grace_s, jwt_audience=jwt_audience, jwt_issuer=jwt_issuer,
                            jwt_max_lifetime_s=jwt_max_lifetime_s, max_calls_per_principal=max_calls_per_principal,
                            admin_auth=admin_auth, max_audio_speed=max_audio_speed, audio_burst_s=audio_burst_s,
                            start_timeout_s=start_timeout_s, max_hold_s=max_hold_s),
        bus=bus, feed_wait_s=feed_wait_s, max_connections=max_connections,
    )


def check_bus(bus: BusConfig) -> None:
    """One line a user can act on for any bad --bus/--bus-prefix/--role/--bus-maxlen/--lease-ms."""
    import urllib.parse

    if bus.role not in ("all", "ingest", "worker"):
        raise RtaaError(f"--role must be all, ingest or worker, not {bus.role!r}")
    if bus.url == "memory":
        if bus.role != "all":
            raise RtaaError(f"--role {bus.role} needs a shared bus: --bus redis://HOST:PORT/DB")
        return
    parts = urllib.parse.urlsplit(bus.url)
    try:
        parts.port  # noqa: B018 - validates
    except ValueError as exc:
        raise RtaaError(f"--bus {bus.url!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise RtaaError(f"--bus must be memory or redis://HOST:PORT/DB, not {bus.url!r}")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise RtaaError(f"--bus {bus.url!r}: the database must be a number (redis://HOST:PORT/DB)")
    if not bus.prefix or len(bus.prefix) > 64 or any(c.isspace() or c in "{}" for c in bus.prefix):
        raise RtaaError("--bus-prefix must be 1-64 characters without spaces or braces")
    if bus.maxlen < 100:
        raise RtaaError("--bus-maxlen must be >= 100 entries (see docs/scale-out.md for sizing)")
    if not 200 <= bus.lease_ms <= 60000:
        raise RtaaError("--lease-ms must be 200-60000")
    if bus.idle_end_s < 1:
        raise RtaaError("--bus-idle-end-s must be >= 1 (longer than the ingest's --reconnect-grace-s)")


async def run_server(cfg: PipelineConfig, as_json: bool) -> None:
    from rtaa_cli.pipeline.server import PipelineServer

    server = PipelineServer(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except ConnectionError as exc:  # the Redis bus could not be reached (before OSError: a subclass)
        raise RtaaError(str(exc)) from None
    except OSError as exc:
        raise RtaaError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    role = cfg.bus.role
    info: dict[str, object] = {"role": role, "health": server.http_url + "/health",
                               "metrics": server.http_url + "/metrics", "pid": os.getpid(), "loop": running_loop_name()}
    if role != "worker":
        info.update(ingest=server.ingest_url, transcripts=server.transcripts_url)
    if role != "ingest":
        info["provider"] = cfg.provider.name
        if cfg.bus.is_redis:
            info["worker_id"] = server.bus.worker_id  # type: ignore[attr-defined] # in lease values and logs
    if as_json:
        print(orjson.dumps(info).decode(), flush=True)
    elif role == "worker":
        print(f"rtaa serve (worker, bus {cfg.bus.url}): health {info['health']}  metrics {info['metrics']}  "
              f"(provider {cfg.provider.name}; Ctrl-C or SIGTERM to stop)", flush=True)
    else:
        print(f"rtaa serve: ingest {info['ingest']}  transcripts {info['transcripts']}/<call_sid>  "
              f"health {info['health']}  metrics {info['metrics']}  ("
              + (f"provider {cfg.provider.name}; " if role == "all" else f"ingest only, bus {cfg.bus.url}; ")
              + "Ctrl-C or SIGTERM to stop)", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
        port: Optional[int] = typer.Option(
            None, help="Port for everything (0 = pick a free one). Default 8080; 0 for --role worker."),
        provider: str = typer.Option("fake", help="deepgram | sphinx | fake (in-process emulator)."),
        deepgram_url: Optional[str] = typer.Option(None, help="Deepgram-compatible ws:// base URL (e.g. rtaa fake-deepgram)."),
        fake_engine: str = typer.Option("segmenter", help="Engine of --provider fake: segmenter | sphinx (real words)."),
        model: str = typer.Option("nova-3", help="Deepgram model."),
        ingest_path: str = typer.Option("/v1/ingest", help="Path of the Exotel ingest WebSocket."),
        interaction_key: str = typer.Option("call_sid", help="call_sid | stream_sid | custom:<custom_parameters key>."),
        auth: str = typer.Option("none", help="Ingest auth: none | basic | jwt (RS256)."),
        basic_user: Optional[str] = typer.Option(None, envvar="RTAA_BASIC_USER", help="--auth basic user."),
        basic_password: Optional[str] = typer.Option(None, envvar="RTAA_BASIC_PASSWORD", help="--auth basic password."),
        jwt_public_key: Optional[Path] = typer.Option(None, help="--auth jwt: RS256 public key (PEM file)."),
        jwt_audience: Optional[str] = typer.Option(None, help="--auth jwt: required `aud` claim."),
        jwt_issuer: Optional[str] = typer.Option(None, help="--auth jwt: required `iss` claim."),
        jwt_max_lifetime: Optional[float] = typer.Option(
            None, help="--auth jwt: refuse tokens whose exp - iat exceeds this many seconds (iat then required)."),
        admin_auth: bool = typer.Option(
            False, help="/health and /metrics need a reader's credentials (see docs/security.md)."),
        max_calls: int = typer.Option(1000, help="Concurrent calls; beyond -> close 1013."),
        max_calls_per_principal: int = typer.Option(
            0, help="Concurrent calls of one principal (JWT sub / Basic user); beyond -> close 1013. 0 = off."),
        max_message_bytes: int = typer.Option(256 * 1024, help="Largest ingest message; beyond -> close 1009."),
        max_rate: float = typer.Option(200.0, help="Messages/s per caller connection; beyond -> close 1008."),
        max_audio_speed: float = typer.Option(
            4.0, help="Audio per stream, in x real time (sustained); beyond the burst -> call ended, close 1008. 0 = off."),
        audio_burst_s: float = typer.Option(10.0, help="Seconds of audio a stream may send ahead of --max-audio-speed."),
        start_timeout_s: float = typer.Option(5.0, help="Close an ingest connection 1008 that sends no start this long."),
        max_hold_s: float = typer.Option(
            600.0, help="End a call (close 1008) whose stream sends no audio this long (holds are shorter)."),
        feed_wait_s: float = typer.Option(
            60.0, help="Close a feed 1008 whose call_sid does not become a live call within this long."),
        max_connections: int = typer.Option(
            0, help="Open WebSocket connections (ingest + feeds); beyond -> HTTP 503. 0 = auto (below the open-files limit)."),
        keepalive_s: float = typer.Option(4.0, help="Send KeepAlive after this long without audio."),
        finalize_timeout_s: float = typer.Option(5.0, help="Wait at most this long for a call's final results."),
        reconnect_grace_s: float = typer.Option(5.0, help="Keep a dropped stream's call this long for a resume."),
        reconnect_window_s: float = typer.Option(
            15.0, help="Retry a lost provider stream this long (backoff + jitter), then close the call 1011."),
        jsonl: Optional[Path] = typer.Option(None, help="Also append every feed message to this JSONL file."),
        log_level: str = typer.Option("info", help="debug | info | warning | error (JSON lines on stderr)."),
        as_json: bool = typer.Option(False, "--json", help="Print the endpoints as one JSON line on start."),
        loop: str = typer.Option(
            "asyncio", help="Event loop: asyncio (measured cheaper for this pipeline than uvloop: BENCHMARKS.md) | uvloop | auto (uvloop where installed)."),
        bus: str = typer.Option("memory", help="memory (one process) | redis://HOST:PORT/DB (scale-out, docs/scale-out.md)."),
        bus_prefix: str = typer.Option("rtaa", help="Prefix of every Redis key (one per deployment)."),
        role: str = typer.Option("all", help="all | ingest | worker (ingest/worker need --bus redis://...)."),
        bus_maxlen: int = typer.Option(2048, help="Redis bus: entries kept per call stream (MAXLEN ~)."),
        lease_ms: int = typer.Option(2000, help="Redis bus: call ownership lease; takeover after about this."),
        bus_idle_end_s: float = typer.Option(
            60.0, help="Redis bus: a worker ends a call whose stream got nothing this long (its ingest is gone)."),
    ) -> None:
        """Run the pipeline: Exotel ingest -> bus -> ASR worker -> transcript feeds, plus /health and /metrics.

        One port serves the ingest WebSocket (/v1/ingest), the transcript feeds (/v1/transcripts/<call_sid> and the /v1/transcripts firehose, see docs/transcript-feed.md), /health and /metrics. Logs are JSON lines on stderr. SIGTERM/SIGINT: callers are closed 1001, in-flight finals are flushed, exit 0. More in docs/serve.md.

        Examples:

          rtaa serve --port 8080   (offline, built-in emulator)

          rtaa serve --provider fake --fake-engine sphinx   (offline, real words)

          DEEPGRAM_API_KEY=... rtaa serve --provider deepgram --host 0.0.0.0

          rtaa serve --provider deepgram --deepgram-url ws://127.0.0.1:8765   (an rtaa fake-deepgram)

          RTAA_BASIC_USER=exotel RTAA_BASIC_PASSWORD=s3cret rtaa serve --auth basic

          rtaa replay fixtures/audio/call.wav --url ws://127.0.0.1:8080/v1/ingest --transcripts ws://127.0.0.1:8080

          rtaa serve --bus redis://127.0.0.1:6379/0 --role ingest --port 8080   (scale-out: docs/scale-out.md)

          rtaa serve --bus redis://127.0.0.1:6379/0 --role worker   (as many as needed; /health on a free port)

          rtaa replay fixtures/audio/call.wav --url ws://127.0.0.1:8080/v1/ingest --speed 4   (within --max-audio-speed)
        """
        if log_level.lower() not in ("debug", "info", "warning", "error"):
            raise RtaaError(f"--log-level must be debug, info, warning or error, not {log_level!r}")
        if port is None:
            port = 0 if role == "worker" else 8080
        cfg = build_config(host, port, provider, deepgram_url, fake_engine, model, ingest_path, interaction_key, auth,
                           basic_user, basic_password, jwt_public_key, max_calls, max_message_bytes, max_rate,
                           keepalive_s, finalize_timeout_s, reconnect_grace_s, jsonl, jwt_audience, jwt_issuer,
                           jwt_max_lifetime, max_calls_per_principal, admin_auth,
                           BusConfig(url=bus, prefix=bus_prefix, role=role, maxlen=bus_maxlen, lease_ms=lease_ms,
                                     idle_end_s=bus_idle_end_s),
                           reconnect_window_s=reconnect_window_s, max_audio_speed=max_audio_speed,
                           audio_burst_s=audio_burst_s, start_timeout_s=start_timeout_s, max_hold_s=max_hold_s,
                           feed_wait_s=feed_wait_s, max_connections=max_connections)
        from rtaa_cli.pipeline.auth import make_check
        from rtaa_cli.pipeline.providers import make_provider

        eventloop.loop_factory(loop)  # a bad or missing --loop: one line before anything listens

        make_check(auth, basic_user, basic_password, cfg.ingest.jwt_public_key)  # fail fast (bad key file), one line
        if provider == "deepgram" and role != "ingest":
            make_provider(cfg.provider)  # missing key -> one line before anything listens
        logs.setup(sys.stderr, log_level)
        eventloop.run(run_server(cfg, as_json), loop)
