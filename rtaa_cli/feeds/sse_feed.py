"""HTTP transcript feeds: ``--transcripts 'http://HOST:PORT/PATH'`` (docs/transcript-feed.md), server-sent
events or, when the URL answers ``application/json``, JSON polling (:mod:`.poll`: every POLL_S).

The URL is read with a GET that accepts ``text/event-stream`` (httpx + httpx-sse), with the ingest's
headers (its Authorization). Each event's ``data`` is one message; when the event has a name other than
``message`` (``event: final``) and its data is a JSON object without an ``event`` field, the name is
added as ``event`` so a field mapping can use it (``is_final=event==final``). A URL with ``{call_sid}``
is this call's stream (every event is the call's); otherwise it is shared and the recorder keeps the
events naming this call. The subscription is opened (status and content type checked) before the call
starts, so nothing of it is missed. Everything else (schemas, mapping, counting) is :mod:`.parse` /
:mod:`.recorder`'s.

Two thin I/O shells: :class:`SyncSseFeed` (a thread; a greenlet under soak's gevent patching) and
:func:`open_async` / :func:`read_async` (replay and smoke, asyncio).
"""
from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from rtaa_cli.feeds.poll import POLL_S, JsonPoll
from rtaa_cli.feeds.url import PLACEHOLDERS, feed_url_for, redact_url

SCHEMES = ("http", "https")
CONNECT_TIMEOUT_S = 5.0
EVENT_STREAM = "text/event-stream"
JSON = "application/json"
SSE, POLL = "sse", "poll"

Sink = Callable[[Any, float, str | None], Any]  # FeedRecorder.message / CallRecorder.feed_message


def is_sse(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in SCHEMES


def event_message(name: str, data: str) -> str | dict[str, Any]:
    """One SSE event -> what :func:`rtaa_cli.feeds.parse.parse_message` takes."""
    if name and name != "message" and data.lstrip()[:1] == "{":
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if isinstance(obj, dict) and "event" not in obj:
            return {**obj, "event": name}
    return data


def _timeout():
    import httpx  # noqa: PLC0415 - only runs with an SSE feed need it

    return httpx.Timeout(CONNECT_TIMEOUT_S, read=None)  # an idle stream is not an error


def _check(response: Any, url: str) -> str:
    """SSE or POLL by the answer's content type; OSError (one line) unless it answered 200 with an
    event stream or JSON."""
    if response.status_code != 200:
        raise OSError(f"sse feed {redact_url(url)}: HTTP {response.status_code}")
    kind = response.headers.get("content-type", "").partition(";")[0].strip()
    if kind == EVENT_STREAM:
        return SSE
    if kind == JSON or kind.endswith("+json"):
        return POLL
    raise OSError(f"sse feed {redact_url(url)}: content type {kind or 'none'!r}, not {EVENT_STREAM} or {JSON}")


def _first_poll(poll: JsonPoll, body: bytes, url: str) -> list[Any]:
    """A polled feed's first answer must be a list of messages: anything else is a wrong URL."""
    msgs = poll.update(body)
    if poll.bad:
        raise OSError(f"http feed {redact_url(url)}: the JSON answer is not a list of messages (an array, or "
                      "an object with one array field)")
    return msgs


@dataclass(frozen=True)
class SseFeed:
    url: str  # placeholders replaced
    per_call: bool

    @classmethod
    def for_call(cls, url: str, call_sid: str) -> SseFeed:
        return cls(feed_url_for(url, call_sid), any(p in url for p in PLACEHOLDERS))


class SyncSseFeed:
    """The call's SSE subscription for soak's gevent caller (same surface as its WebSocket feed)."""

    def __init__(self, url: str, call_sid: str, sink: Sink, ended: Callable[[], bool],
                 headers: Mapping[str, str] | None = None) -> None:
        import httpx  # noqa: PLC0415
        from httpx_sse import connect_sse  # noqa: PLC0415

        self.feed = SseFeed.for_call(url, call_sid)
        self.owner = call_sid if self.feed.per_call else None
        self.sink, self.ended = sink, ended
        self.done = threading.Event()
        self.closed = False
        self.error: str | None = None
        self.client = httpx.Client(timeout=_timeout(), headers=dict(headers or {}), trust_env=False)
        self._cm = connect_sse(self.client, "GET", self.feed.url)
        self.poll: JsonPoll | None = None
        try:
            self.source = self._cm.__enter__()
            if _check(self.source.response, self.feed.url) == POLL:
                self.poll = JsonPoll()
                first = _first_poll(self.poll, self.source.response.read(), self.feed.url)
                now = time.time()
                for msg in first:
                    self.sink(msg, now, self.owner)
        except (httpx.HTTPError, OSError) as exc:
            self.client.close()
            raise OSError(str(exc) if isinstance(exc, OSError) else f"sse feed {redact_url(self.feed.url)}: {exc}") from None
        threading.Thread(target=self._read, daemon=True).start()

    def _deliver(self, body: bytes) -> None:
        assert self.poll is not None
        now = time.time()
        for msg in self.poll.update(body):
            self.sink(msg, now, self.owner)

    def _read(self) -> None:
        import httpx  # noqa: PLC0415

        try:
            if self.poll is not None:
                while not (self.closed or self.ended()):
                    time.sleep(POLL_S)  # the polling period (a greenlet switch under gevent)
                    r = self.client.get(self.feed.url)
                    if r.status_code == 200:
                        self._deliver(r.content)
                    else:
                        self.poll.bad += 1
                return
            for ev in self.source.iter_sse():
                self.sink(event_message(ev.event, ev.data), time.time(), self.owner)
                if self.closed or self.ended():
                    break
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            if not self.closed:
                self.error = f"sse feed {redact_url(self.feed.url)}: {type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def close(self) -> None:
        self.closed = True
        self.source.response.close()  # ends the reader's blocking read
        self.client.close()
        self.done.wait(CONNECT_TIMEOUT_S)


@dataclass
class _AsyncState:
    feed: SseFeed
    owner: str | None
    client: Any
    cm: Any
    source: Any
    poll: JsonPoll | None = None
    first: list[Any] | None = None  # a polled feed's messages in its first answer (read at subscription)


async def open_async(url: str, call_sid: str, headers: Mapping[str, str] | None = None) -> _AsyncState:
    """Subscribe (status and content type checked) before the call starts; returns a reader state."""
    import httpx  # noqa: PLC0415
    from httpx_sse import aconnect_sse  # noqa: PLC0415

    feed = SseFeed.for_call(url, call_sid)
    client = httpx.AsyncClient(timeout=_timeout(), headers=dict(headers or {}), trust_env=False)
    cm = aconnect_sse(client, "GET", feed.url)
    try:
        source = await cm.__aenter__()
    except httpx.HTTPError as exc:
        await client.aclose()
        raise OSError(f"sse feed {redact_url(feed.url)}: {exc}") from None
    except BaseException:
        await client.aclose()
        raise
    try:
        mode = _check(source.response, feed.url)
        poll = JsonPoll() if mode == POLL else None
        first = _first_poll(poll, await source.response.aread(), feed.url) if poll is not None else None
    except BaseException as exc:
        # Exit the entered aconnect_sse now: left to the garbage collector, its generator is closed at
        # some later loop step and asyncio prints "error occurred during closing of asynchronous generator".
        try:
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
        finally:
            await client.aclose()
        raise
    return _AsyncState(feed, call_sid if feed.per_call else None, client, cm, source, poll, first)


async def read_async(state: _AsyncState, sink: Sink, ended: Callable[[], bool]) -> None:
    """Read until ``ended()`` or the server ends the stream (the caller cancels the task otherwise)."""
    import asyncio  # noqa: PLC0415

    try:
        if state.poll is not None:
            msgs = state.first or []
            while True:
                now = time.time()
                for msg in msgs:
                    sink(msg, now, state.owner)
                if ended():
                    return
                await asyncio.sleep(POLL_S)  # the polling period
                r = await state.client.get(state.feed.url)
                msgs = state.poll.update(r.content) if r.status_code == 200 else []
                state.poll.bad += r.status_code != 200
        async for ev in state.source.aiter_sse():
            sink(event_message(ev.event, ev.data), time.time(), state.owner)
            if ended():
                break
    finally:
        await state.source.response.aclose()
        await state.client.aclose()


def sse_errors() -> tuple[type[Exception], ...]:
    import httpx  # noqa: PLC0415

    return (httpx.HTTPError,)
