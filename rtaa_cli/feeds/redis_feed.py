"""Redis transcript feeds: ``--transcripts 'redis://HOST:PORT/DB?stream=KEY'`` (docs/transcript-feed.md).

* ``?stream=KEY``: a Redis stream, read with blocking ``XREAD`` (no consumer group, so several
  readers see every entry). A KEY with ``{call_sid}`` is one stream per call, read from its
  beginning; a shared KEY is read from its last entry at subscribe time (before the call starts),
  and the recorder keeps the messages naming this call.
* ``?list=KEY``: a Redis list, read with ``BLPOP``. Popping is destructive, so the KEY must contain
  ``{call_sid}`` (one list per call): a shared list would be split between the calls reading it.

An entry is a message: a single field holding a JSON object (``XADD k * data '{...}'``, or a list
element) is that object; several fields (``XADD k * type final text hi seq 3``) are an object of
those fields, each value decoded as JSON when it is a JSON scalar (``3`` -> 3, ``true``) and kept
as text otherwise. Everything else (schemas, field mapping, counting) is :mod:`.parse`/:mod:`.recorder`'s.

Two thin I/O shells: :class:`SyncRedisFeed` (a thread; a greenlet under soak's gevent patching,
where redis' sync client works as is) and :func:`read_async` (replay and smoke, asyncio).
"""
from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from rtaa_cli.feeds.url import PLACEHOLDERS, feed_url_for, redact_url

BLOCK_S = 0.5  # each blocking read returns at least this often, so a close is noticed promptly
READ_COUNT = 100
CONNECT_TIMEOUT_S = 5.0
SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class RedisFeed:
    """A parsed Redis feed URL for one call (placeholders already replaced)."""

    client_url: str  # redis://host:port/db, what redis.from_url takes
    kind: str  # "stream" | "list"
    key: str
    per_call: bool  # the key names the call: every entry is this call's

    @property
    def start_id(self) -> str | None:
        """Per-call streams are read from their beginning; shared ones from subscribe time."""
        return "0-0" if self.per_call else None


def is_redis(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in SCHEMES


def parse_redis_url(url: str, call_sid: str = "CA_CHECK") -> RedisFeed:
    """The feed for ``call_sid``; ValueError (one line a user can act on) for a bad URL."""
    per_call = any(p in url for p in PLACEHOLDERS)
    parts = urllib.parse.urlsplit(feed_url_for(url, call_sid))
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{parts.scheme}: not a redis:// URL")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    kinds = [k for k in ("stream", "list") if k in query]
    unknown = sorted(set(query) - {"stream", "list"})
    if unknown or len(kinds) != 1:
        raise ValueError("redis feed: give exactly one of ?stream=KEY or ?list=KEY "
                         "(e.g. redis://127.0.0.1:6379/0?stream=transcripts:{call_sid})")
    kind = kinds[0]
    values = query[kind]
    if len(values) != 1 or not values[0]:
        raise ValueError(f"redis feed: ?{kind}= needs one non-empty key")
    if kind == "list" and not per_call:
        raise ValueError("redis feed: a ?list= key must contain {call_sid} (reading pops entries, so a "
                         "shared list would be split between calls)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"redis feed: database {db!r} is not a number (redis://host:port/DB)")
    try:
        parts.port  # noqa: B018 - validates
    except ValueError as exc:
        raise ValueError(f"redis feed: {exc}") from None
    client = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{db or 0}", "", ""))
    return RedisFeed(client, kind, values[0], per_call)


def entry_message(fields: Mapping[bytes | str, bytes | str]) -> bytes | dict[str, Any]:
    """One stream entry's fields -> what :func:`rtaa_cli.feeds.parse.parse_message` takes."""
    if len(fields) == 1:
        (value,) = fields.values()
        raw = value.encode() if isinstance(value, str) else value
        if raw.lstrip()[:1] == b"{":
            return raw
    out: dict[str, Any] = {}
    for k, v in fields.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        out[key] = _scalar(text)
    return out


def _scalar(text: str) -> Any:
    if text[:1] in ("{", "["):
        return text  # nested JSON stays text: a mapping path into it would not be a field
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


Sink = Callable[[Any, float, str | None], Any]  # FeedRecorder.message / CallRecorder.feed_message


class SyncRedisFeed:
    """The call's Redis subscription for soak's gevent caller (same surface as its WebSocket feed)."""

    def __init__(self, url: str, call_sid: str, sink: Sink, ended: Callable[[], bool]) -> None:
        import redis  # noqa: PLC0415 - only runs that use a Redis feed need the client

        self.feed = parse_redis_url(url, call_sid)
        self.call_sid = call_sid
        self.sink, self.ended = sink, ended
        self.done = threading.Event()
        self.closed = False
        self.error: str | None = None
        self.client = redis.Redis.from_url(self.feed.client_url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                           socket_timeout=BLOCK_S + CONNECT_TIMEOUT_S)
        try:
            if self.feed.kind == "stream":
                self.last_id = self.feed.start_id or _last_id(self.client.xrevrange(self.feed.key, count=1))
            else:
                self.last_id = ""
                self.client.ping()  # fail at subscribe time, like the stream's XREVRANGE
        except redis.RedisError as exc:
            self.client.close()
            raise OSError(f"redis feed {redact_url(self.feed.client_url)}: {exc}") from None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import redis  # noqa: PLC0415

        owner = self.call_sid if self.feed.per_call else None
        key, block_ms = self.feed.key, int(BLOCK_S * 1000)
        try:
            while not self.closed and not self.ended():
                if self.feed.kind == "stream":
                    got = self.client.xread({key: self.last_id}, count=READ_COUNT, block=block_ms)
                    for _stream, entries in got or ():
                        for entry_id, fields in entries:
                            self.last_id = entry_id
                            self.sink(entry_message(fields), time.time(), owner)
                else:
                    got = self.client.blpop([key], timeout=BLOCK_S)
                    if got is not None:
                        self.sink(got[1], time.time(), owner)
        except (redis.RedisError, OSError) as exc:
            if not self.closed:
                self.error = f"redis feed {self.feed.kind} {key!r}: {type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def close(self) -> None:
        self.closed = True
        self.done.wait(BLOCK_S + CONNECT_TIMEOUT_S)  # the reader notices within one block
        self.client.close()


def redis_errors() -> type[Exception]:
    import redis  # noqa: PLC0415

    return redis.RedisError


def _last_id(entries: list[Any]) -> str:
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def open_async(url: str, call_sid: str) -> Any:
    """Connect and resolve where to start (before the call starts); returns a reader state."""
    import redis.asyncio as aredis  # noqa: PLC0415

    feed = parse_redis_url(url, call_sid)
    client = aredis.Redis.from_url(feed.client_url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                   socket_timeout=BLOCK_S + CONNECT_TIMEOUT_S)
    try:
        if feed.kind == "stream":
            last = feed.start_id or _last_id(await client.xrevrange(feed.key, count=1))
        else:
            await client.ping()
            last = ""
    except aredis.RedisError as exc:
        await client.aclose()
        raise OSError(f"redis feed {redact_url(feed.client_url)}: {exc}") from None
    except BaseException:
        await client.aclose()
        raise
    return _AsyncState(feed, client, last, call_sid)


@dataclass
class _AsyncState:
    feed: RedisFeed
    client: Any
    last_id: str
    call_sid: str


async def read_async(state: _AsyncState, sink: Sink, ended: Callable[[], bool]) -> None:
    """Read until ``ended()`` (the caller cancels the task otherwise); closes the client."""
    feed, owner = state.feed, (state.call_sid if state.feed.per_call else None)
    block_ms = int(BLOCK_S * 1000)
    try:
        while not ended():
            if feed.kind == "stream":
                got = await state.client.xread({feed.key: state.last_id}, count=READ_COUNT, block=block_ms)
                for _stream, entries in got or ():
                    for entry_id, fields in entries:
                        state.last_id = entry_id
                        sink(entry_message(fields), time.time(), owner)
            else:
                got = await state.client.blpop([feed.key], timeout=BLOCK_S)
                if got is not None:
                    sink(got[1], time.time(), owner)
    finally:
        await state.client.aclose()
