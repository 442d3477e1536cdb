"""JSON polling feeds, sans-I/O: an HTTP feed URL that answers ``application/json`` instead of an event
stream is polled (rtaa_cli/feeds/sse_feed.py does the I/O). Each answer is the feed's messages so far:
a JSON array of messages, or an object with one array field (``{"results": [...]}``). The feed is
taken to be append-only: the messages past the count already seen are new. An answer shorter than
that (the server trimmed or restarted its list) restarts the count: its messages are all taken as new,
and ``resets`` counts it (a report can say so)."""
from __future__ import annotations

from typing import Any

import orjson

POLL_S = 0.2  # between polls: a result's measured latency includes up to this much polling delay


class JsonPoll:
    __slots__ = ("seen", "resets", "bad")

    def __init__(self) -> None:
        self.seen = 0
        self.resets = 0
        self.bad = 0  # answers that were not JSON, or held no list of messages

    def update(self, body: bytes) -> list[Any]:
        """The new messages of one poll's answer."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.bad += 1
            return []
        if isinstance(doc, dict):
            lists = [v for v in doc.values() if isinstance(v, list)]
            doc = lists[0] if len(lists) == 1 else None
        if not isinstance(doc, list):
            self.bad += 1
            return []
        if len(doc) < self.seen:
            self.resets += 1
            self.seen = 0
        new = doc[self.seen:]
        self.seen = len(doc)
        return new
