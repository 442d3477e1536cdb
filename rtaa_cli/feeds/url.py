"""The one ``--transcripts`` URL rule, the same for replay, soak and smoke (docs/transcript-feed.md).

For a call with call SID ``CA1``:

* ``{call_sid}`` (or ``{interaction_id}``) anywhere in the URL is replaced by the URL-quoted SID:
  ``ws://h/feeds/{call_sid}`` -> ``ws://h/feeds/CA1``; ``redis://h/0?stream=t:{call_sid}`` ->
  ``redis://h/0?stream=t:CA1``;
* a ``ws://``/``wss://`` URL with no path, or whose path is ``/v1/transcripts`` (rtaa serve's feed
  base), gets ``/v1/transcripts/CA1``: ``ws://h:8080`` and ``ws://h:8080/v1/transcripts`` both mean
  ``ws://h:8080/v1/transcripts/CA1``;
* any other URL is used as it is, and the recorder keeps only messages whose call id is this call's
  (or that carry none).
"""
from __future__ import annotations

import functools
import urllib.parse

FEED_BASE_PATH = "/v1/transcripts"
PLACEHOLDERS = ("{call_sid}", "{interaction_id}")


def feed_url_for(url: str, call_sid: str) -> str:
    quoted = urllib.parse.quote(call_sid, safe="")
    if any(p in url for p in PLACEHOLDERS):
        for p in PLACEHOLDERS:
            url = url.replace(p, quoted)
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("ws", "wss") and parts.path.rstrip("/") in ("", FEED_BASE_PATH):
        return urllib.parse.urlunsplit(parts._replace(path=f"{FEED_BASE_PATH}/{quoted}"))
    return url


def redact_url(url: str) -> str:
    """The URL with any password replaced, for reports and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


FEED_SCHEMES = ("ws", "wss", "redis", "rediss", "http", "https", "webhook")


def check_feed_url(url: str, option: str = "--transcripts") -> None:
    """ValueError (one line) unless ``url`` is a feed rtaa can read (docs/transcript-feed.md)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in FEED_SCHEMES:
        raise ValueError(f"{option} {redact_url(url)!r}: use ws://, wss://, redis://, rediss://, http(s):// (SSE or "
                         "JSON polling) or webhook://HOST:PORT/PATH (rtaa listens, the target POSTs)")
    if scheme == "webhook":
        try:
            parse_webhook_url(url)
        except ValueError as exc:
            raise ValueError(f"{option} {url!r}: {exc}") from None
    if scheme in ("redis", "rediss"):
        from rtaa_cli.feeds.redis_feed import parse_redis_url  # noqa: PLC0415 - avoids an import cycle

        try:
            parse_redis_url(url)
        except ValueError as exc:
            raise ValueError(f"{option} {redact_url(url)!r}: {exc}") from None


def parse_webhook_url(url: str) -> tuple[str, int, str]:
    """``webhook://HOST:PORT/PATH`` -> (host, port, path template); ValueError naming what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "webhook" or not parts.hostname or parts.port is None:
        raise ValueError("a webhook feed is webhook://HOST:PORT/PATH (rtaa listens there; the target POSTs to "
                         "http://HOST:PORT/PATH)")
    return parts.hostname, parts.port, parts.path or "/"


@functools.lru_cache(maxsize=8)  # soak parses the run's one spec once, not per call
def parse_feed_map(spec: str | None, option: str = "--feed-map"):  # -> FieldMapping | None
    """``--feed-map`` text -> a FieldMapping (None when not given); ValueError naming the option."""
    if not spec:
        return None
    from rtaa_cli.feeds.parse import FieldMapping  # noqa: PLC0415

    try:
        return FieldMapping.parse(spec)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
