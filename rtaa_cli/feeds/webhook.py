"""Webhook transcript feeds: ``--transcripts 'webhook://HOST:PORT/PATH'`` (docs/transcript-feed.md).

rtaa listens on HOST:PORT and the target POSTs its results there: a JSON object (one message) or a
JSON array (several) per request. With ``{call_sid}`` in PATH (``webhook://127.0.0.1:9100/hook/{call_sid}``)
the request path names the call; otherwise every call of the process gets every message and the
recorder keeps those naming it (a field mapping's ``call_sid=``). Answers: 204 taken, 400 not JSON,
404 a path that is not the feed's, 405 not a POST. One listener per HOST:PORT per process, shared by its
calls: gevent's WSGI server under soak (Locust's gevent), wsgiref on a daemon thread otherwise (an
asyncio caller's sink is called on its loop). The routing (:class:`Hub`) is sans-I/O.
"""
from __future__ import annotations

import threading
import time
import urllib.parse
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.simple_server import WSGIServer as WSGIServer_
from typing import Any, Callable

import orjson

from rtaa_cli.feeds.url import parse_webhook_url

SCHEME = "webhook"
# Locks are made when first used, not at import: under soak this module may be imported before gevent
# patches threading, and a real lock held across a greenlet switch would stall the whole process.
MAX_BODY = 1 << 20  # one POST: results are small; a bigger body is refused 413
Sink = Callable[[Any, float, str | None], Any]


def is_webhook(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == SCHEME


class Hub:
    """Which subscribed calls a POST to ``path`` reaches (sans-I/O)."""

    def __init__(self, template: str) -> None:
        self.prefix, sep, self.suffix = template.partition("{call_sid}")
        self.per_call = bool(sep)
        self.subscribers: dict[str, list[Sink]] = {}
        self.lock = threading.Lock()
        self.received = 0  # messages taken
        self.unrouted = 0  # messages for a call with no subscriber here

    def subscribe(self, call_sid: str, sink: Sink) -> Callable[[], None]:
        with self.lock:
            self.subscribers.setdefault(call_sid, []).append(sink)

        def unsubscribe() -> None:
            with self.lock:
                sinks = self.subscribers.get(call_sid, [])
                if sink in sinks:
                    sinks.remove(sink)
                if not sinks:
                    self.subscribers.pop(call_sid, None)
        return unsubscribe

    def call_of(self, path: str) -> str | None | bool:
        """The call a path names (per-call template), None (shared feed), or False (not this feed)."""
        path = urllib.parse.urlsplit(path).path
        if not self.per_call:
            return None if path.rstrip("/") == self.prefix.rstrip("/") else False
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)) or len(path) <= len(self.prefix) + len(self.suffix):
            return False
        return urllib.parse.unquote(path[len(self.prefix):len(path) - len(self.suffix)])

    def deliver(self, call: str | None, body: bytes, now: float) -> bool:
        """Hand the body's messages to their subscribers; False when the body is not JSON."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        msgs = doc if isinstance(doc, list) else [doc]
        with self.lock:
            targets = ([(call, s) for s in self.subscribers.get(call, [])] if call is not None else
                       [(None, s) for sinks in self.subscribers.values() for s in sinks])
        for msg in msgs:
            self.received += 1
            if not targets:
                self.unrouted += 1
            for owner, sink in targets:
                sink(msg, now, owner)
        return True


def wsgi_app(hub: Hub) -> Callable[..., Any]:
    """The listener's one request rule, as a WSGI app (served by gevent under soak, by wsgiref else)."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        call = hub.call_of(environ.get("PATH_INFO") or "/")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if environ.get("REQUEST_METHOD") != "POST":
            status = "405 Method Not Allowed"
        elif call is False:
            status = "404 Not Found"
        elif length > MAX_BODY:
            status = "413 Content Too Large"
        elif hub.deliver(call, environ["wsgi.input"].read(length), time.time()):
            status = "204 No Content"
        else:
            status = "400 Bad Request"
        start_response(status, [("content-length", "0")])
        return [b""]
    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args: Any) -> None:  # no per-request lines on stderr
        return None


def _serve(host: str, port: int, hub: Hub) -> None:
    """Start listening now (errors raise here), serve in the background."""
    from gevent import monkey  # noqa: PLC0415 - gevent is installed with locust

    if monkey.is_module_patched("socket"):  # soak: a greenlet server (a thread's blocking poll would stall gevent)
        from gevent.pywsgi import WSGIServer  # noqa: PLC0415

        server = WSGIServer((host, port), wsgi_app(hub), log=None, error_log=None)
        server.start()
        return
    httpd = make_server(host, port, wsgi_app(hub), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer_):
    daemon_threads = True


_servers: dict[tuple[str, int], Hub] = {}
_lock: Any = None  # made on first use: under soak that is after gevent patched threading


def _servers_lock() -> Any:
    global _lock
    if _lock is None:
        _lock = threading.Lock()
    return _lock


def hub_for(url: str) -> Hub:
    """The listener of ``url``'s HOST:PORT in this process, started on first use. OSError (one line)
    when the address cannot be listened on; ValueError for a malformed URL."""
    host, port, template = parse_webhook_url(url)
    with _servers_lock():
        found = _servers.get((host, port))
        if found is not None:
            return found
        hub = Hub(template)
        try:
            _serve(host, port, hub)
        except OSError as exc:
            raise OSError(f"webhook feed {url}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        _servers[(host, port)] = hub
        return hub


class SyncWebhookFeed:
    """A call's subscription for soak's caller (same surface as its other feeds)."""

    def __init__(self, url: str, call_sid: str, sink: Sink) -> None:
        self._unsubscribe = hub_for(url).subscribe(call_sid, sink)
        self.error: str | None = None
        self.done = threading.Event()  # never set: a webhook has no end; the caller's wait is bounded

    def close(self) -> None:
        self._unsubscribe()


def subscribe_async(url: str, call_sid: str, sink: Sink) -> Callable[[], None]:
    """For an asyncio caller: messages reach ``sink`` on the running loop; returns the unsubscribe."""
    import asyncio  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    return hub_for(url).subscribe(call_sid, lambda msg, wall, owner: loop.call_soon_threadsafe(sink, msg, wall, owner))
