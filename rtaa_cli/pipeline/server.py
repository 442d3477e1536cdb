"""``rtaa serve`` in one object: one port for the ingest WebSocket, the transcript feeds, ``/health`` and
``/metrics`` (websockets 17 asyncio server; plain HTTP answered in ``process_request``).

    async with PipelineServer(PipelineConfig(port=0)) as server:
        server.ingest_url      # ws://127.0.0.1:PORT/v1/ingest
"""
from __future__ import annotations

import asyncio
import errno
import http
import resource
from typing import IO, Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtaa_cli import logs, web
from rtaa_cli.eventloop import running_loop_name
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline.auth import ANONYMOUS, AuthFailed, Principal, make_check
from rtaa_cli.pipeline.config import PipelineConfig
from rtaa_cli.pipeline.ingest import Ingest
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.providers import make_provider
from rtaa_cli.pipeline.providers.base import Provider
from rtaa_cli.pipeline.ratelimit import auto_max_connections
from rtaa_cli.pipeline.transcripts import TranscriptHub
from rtaa_cli.pipeline.worker import Worker
from rtaa_cli.readsize import SmallReadConnection

log = logs.get("rtaa.server")

TRANSCRIPTS = "/v1/transcripts"
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's exception-handler message
ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def max_connections(configured: int) -> int:
    """``configured``, or (0) a cap below the soft RLIMIT_NOFILE that leaves room for provider sockets."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return auto_max_connections(soft if soft != resource.RLIM_INFINITY else 1 << 20)


def make_bus(cfg: PipelineConfig, metrics: PipelineMetrics) -> busmod.Bus:
    b = cfg.bus
    if b.role not in ("all", "ingest", "worker"):
        raise ValueError(f"role must be all, ingest or worker, not {b.role!r}")
    if not b.is_redis:
        if b.role != "all":
            raise ValueError("--role ingest|worker needs a shared bus (--bus redis://HOST:PORT/DB)")
        return busmod.MemoryBus(cfg.bus_queue_frames, cfg.bus_publish_timeout_s)
    from rtaa_cli.pipeline.redisbus import RedisBus

    return RedisBus(b.url, b.prefix, metrics, maxlen=b.maxlen, feed_maxlen=b.feed_maxlen, lease_ms=b.lease_ms,
                    queue_frames=cfg.bus_queue_frames, idle_end_s=b.idle_end_s,
                    publish_timeout_s=cfg.bus_publish_timeout_s, has_ingest=b.role != "worker", has_worker=b.role != "ingest")


class PipelineServer:
    def __init__(self, cfg: PipelineConfig, provider: Provider | None = None) -> None:
        self.cfg = cfg
        self.metrics = PipelineMetrics()
        self.has_ingest = cfg.bus.role != "worker"
        self.has_worker = cfg.bus.role != "ingest"
        # An ingest-only process never talks to the provider (no API key needed there).
        self.provider: Provider | None = (provider or make_provider(cfg.provider)) if self.has_worker else None
        self._jsonl: IO[bytes] | None = None
        self.hub: TranscriptHub | None = None
        self.ingest: Ingest | None = None  # type: ignore[assignment]
        self.worker: Worker | None = None  # type: ignore[assignment]
        self.bus = make_bus(cfg, self.metrics)
        ing = cfg.ingest
        self._auth = make_check(ing.auth, ing.basic_user, ing.basic_password, ing.jwt_public_key,
                                ing.jwt_audience, ing.jwt_issuer, ing.jwt_max_lifetime_s)
        self._server: Server | None = None
        self.shutting_down = False
        self.port = 0
        self.metrics.queue_depth.labels(queue="bus").set_function(self.bus.depth)
        self.max_connections = max_connections(cfg.max_connections)
        self.ws_open = 0  # WebSocket handshakes accepted and not yet closed (ingest + feeds)
        self._sampled = logs.Sampled(log, burst=1, window_s=10.0)  # one line per 10 s, then a count
        self._prev_exception_handler: Any = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        redis_bus = self.cfg.bus.is_redis
        if self.has_ingest:
            if self.cfg.jsonl_path:
                self._jsonl = open(self.cfg.jsonl_path, "ab")
            self.ingest = Ingest(self.cfg.ingest, self.bus, self.metrics)
            hub = self.hub = TranscriptHub(self.metrics, self.cfg.subscriber_queue, self._jsonl, self.ingest.owner_of,
                                           self.cfg.feed_wait_s)
            self.metrics.queue_depth.labels(queue="transcripts").set_function(hub.depth)
            if redis_bus:  # a newer stream of one of its calls at another ingest supersedes this one's
                self.bus.superseded_elsewhere = self.ingest.superseded_elsewhere  # type: ignore[attr-defined]
        if self.has_worker:
            assert self.provider is not None
            if redis_bus:  # results travel through Redis to every ingest's feeds; provider use is fenced
                publish, started, ended = self.bus.sinks(self.hub)  # type: ignore[attr-defined]
                provider = self.bus.wrap_provider(self.provider)  # type: ignore[attr-defined]
            else:
                assert self.hub is not None
                publish, started, ended = self.hub.publish, self.hub.call_started, self.hub.call_ended
                provider = self.provider
            self.worker = Worker(provider, self.cfg.worker, self.metrics, self.bus, publish, started, ended)
            if redis_bus:
                self.bus.interaction_of = self.worker.interactions.get  # type: ignore[attr-defined]
        elif self.hub is not None:
            self.bus.sinks(self.hub)  # type: ignore[attr-defined]
        started_parts: list[Any] = []
        loop = asyncio.get_running_loop()
        self._prev_exception_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        try:
            if self.provider is not None:
                await self.provider.start()
                started_parts.append(self.provider)
            await self.bus.start()
            started_parts.append(self.bus)
            self._server = await serve(
                self._handler, self.cfg.host, self.cfg.port,
                process_request=self._process_request,
                max_size=self.cfg.ingest.max_message_bytes,
                compression=None,  # Exotel does not negotiate it; saves CPU per frame
                create_connection=SmallReadConnection,  # 64 KiB reads: see readsize.py
            )
        except BaseException:
            self._restore_exception_handler()
            if self.bus in started_parts:
                await self.bus.close()
            if self.provider in started_parts:
                await self.provider.stop()  # type: ignore[union-attr]
            if self._jsonl is not None:
                self._jsonl.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1] if self.cfg.port == 0 else self.cfg.port
        log.info("serving", host=self.cfg.host, port=self.port, role=self.cfg.bus.role,
                 bus="redis" if redis_bus else "memory",
                 provider=self.provider.name if self.provider else None, ingest_path=self.cfg.ingest.path,
                 max_connections=self.max_connections)

    async def stop(self) -> None:
        """Graceful: stop accepting, close callers 1001, finish in-flight finals (bounded), flush, close."""
        if self._server is None or self.shutting_down:
            return
        self.shutting_down = True
        log.info("shutting_down")
        self._server.close(close_connections=False)  # stops accepting; feeds stay open for the finals
        if self.ingest is not None:
            await self.ingest.shutdown()
        await self.bus.drain(self.cfg.shutdown_timeout_s)
        if self.hub is not None:
            await self.hub.close_all(1001, "server shutting down")
        try:
            async with asyncio.timeout(5.0):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("close_timeout")
        await self.bus.close()
        if self.provider is not None:
            await self.provider.stop()
        if self._jsonl is not None:
            self._jsonl.close()
        self._restore_exception_handler()
        log.info("stopped")

    # -- the event loop's errors -----------------------------------------------------------------
    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """accept() without a free descriptor: asyncio retries each second, but calls this for every
        connection in the backlog, each time (with the default handler, thousands of tracebacks a
        second). Count each; log one line per 10 s, no traceback. Anything else: the usual handler."""
        exc = context.get("exception")
        if context.get("message") == ACCEPT_FAILED and isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.metrics.accept_errors.labels(errno=name).inc()
            self._sampled.warning("accept_failed", errno=name, reason=exc.strerror, retry_s=1.0,
                                      max_connections=self.max_connections)
            return
        if self._prev_exception_handler is not None:
            self._prev_exception_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _restore_exception_handler(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() == self._loop_exception:
            loop.set_exception_handler(self._prev_exception_handler)

    async def __aenter__(self) -> "PipelineServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"ws://{host}:{self.port}"

    @property
    def ingest_url(self) -> str:
        return self.base_url + self.cfg.ingest.path

    @property
    def transcripts_url(self) -> str:
        return self.base_url + TRANSCRIPTS

    @property
    def http_url(self) -> str:
        return "http" + self.base_url[2:]

    # -- HTTP ----------------------------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        reasons: list[str] = []
        if self.shutting_down:
            reasons.append("shutting down")
        if self.provider is not None:
            reasons.extend(self.provider.health())  # plain reasons, never exception text (providers' contract)
        reasons.extend(self.bus.health())
        body = {
            "status": "ok" if not reasons else "unavailable" if self.shutting_down else "degraded",
            "reasons": reasons,
            "provider": self.provider.name if self.provider is not None else None,
            "role": self.cfg.bus.role,
            "bus": "redis" if self.cfg.bus.is_redis else "memory",
            "loop": running_loop_name(),
            "calls_active": len(self.worker.interactions) if self.worker is not None else 0,
            "streams": len(self.ingest.connections) if self.ingest is not None else 0,
        }
        if self.cfg.bus.is_redis and self.worker is not None:
            body["worker_id"] = self.bus.worker_id  # type: ignore[attr-defined]
        return (200 if not reasons else 503), body

    def _authenticate(self, conn: ServerConnection, request: Request) -> Response | None:
        """Check the handshake's credentials; on success remember the principal on the connection."""
        try:
            conn.principal = self._auth(request.headers.get("Authorization"))  # type: ignore[attr-defined]
        except AuthFailed as exc:
            self.metrics.bad_input.labels(kind="auth").inc()
            log.warning("auth_failed", reason=str(exc), path=request.path.split("?", 1)[0],
                        remote=str(conn.remote_address))
            return _response(http.HTTPStatus.UNAUTHORIZED, orjson.dumps({"error": str(exc)}), "application/json",
                             {"WWW-Authenticate": 'Basic realm="rtaa"'} if self.cfg.ingest.auth == "basic" else {})
        return None

    def _forbidden(self, conn: ServerConnection, what: str) -> Response:
        principal: Principal = getattr(conn, "principal", ANONYMOUS)
        self.metrics.bad_input.labels(kind="not_entitled").inc()
        log.warning("not_entitled", principal=principal.name, path=what)
        return _response(http.HTTPStatus.FORBIDDEN, orjson.dumps({"error": f"{what} needs the reader role"}),
                         "application/json")

    def _admit(self, conn: ServerConnection) -> Response | None:
        """The connection cap: 503 at the handshake beyond ``max_connections`` open WebSockets."""
        if self.ws_open >= self.max_connections:
            self.metrics.connections_refused.inc()
            self._sampled.warning("connection_refused", reason="at max_connections",
                                      max_connections=self.max_connections, remote=str(conn.remote_address))
            return _response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                             orjson.dumps({"error": f"at capacity ({self.max_connections} connections), try again later"}),
                             "application/json", {"Retry-After": "1"})
        self.ws_open += 1
        conn.connection_lost_waiter.add_done_callback(self._ws_closed)
        return None

    def _ws_closed(self, _: Any) -> None:
        self.ws_open -= 1

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if self.ingest is None and path not in ("/health", "/metrics"):  # a worker serves only these
            return _response(http.HTTPStatus.NOT_FOUND, b'{"error":"not found (worker role)"}', "application/json")
        if path == self.cfg.ingest.path:
            return self._authenticate(conn, request) or self._admit(conn)
        if path == "/":  # the live page (rtaa_cli/web/serve.html) reads the firehose: a reader's page too
            denied = self._authenticate(conn, request)
            if denied is None and not conn.principal.reader:  # type: ignore[attr-defined]
                return self._forbidden(conn, "the live page")
            return denied or _response(http.HTTPStatus.OK, web.page("serve"), web.HTML, web.PAGE_HEADERS)
        if path == TRANSCRIPTS or path.startswith(TRANSCRIPTS + "/"):
            # Feeds need credentials whenever ingest does; per-call entitlement is checked by the hub.
            denied = self._authenticate(conn, request)
            if denied is None and path == TRANSCRIPTS and not conn.principal.reader:  # type: ignore[attr-defined]
                return self._forbidden(conn, "the firehose")
            return denied or self._admit(conn)
        if path in ("/health", "/metrics") and self.cfg.ingest.admin_auth:
            denied = self._authenticate(conn, request)
            if denied is None and not conn.principal.reader:  # type: ignore[attr-defined]
                return self._forbidden(conn, path)
            if denied is not None:
                return denied
        if path == "/health":
            status, body = self.health()
            return _response(http.HTTPStatus(status), orjson.dumps(body), "application/json")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, self.metrics.render(), self.metrics.content_type)
        return _response(http.HTTPStatus.NOT_FOUND, b'{"error":"not found"}', "application/json")

    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path.split("?", 1)[0]
        assert self.ingest is not None  # process_request answers every path of a worker
        if path == self.cfg.ingest.path:
            await self.ingest.handle(ws)
            return
        assert self.hub is not None
        if path == TRANSCRIPTS:
            await self.hub.serve(ws, None, getattr(ws, "principal", ANONYMOUS))
        else:
            iid = path[len(TRANSCRIPTS) + 1:]
            if not iid:
                await ws.close(1008, "missing interaction id")
                return
            await self.hub.serve(ws, iid, getattr(ws, "principal", ANONYMOUS))


def _response(status: http.HTTPStatus, body: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status.value, status.phrase, headers, body)
