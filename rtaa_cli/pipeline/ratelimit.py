"""Token buckets (pure: the caller passes the clock) for the per-connection limits: messages per second,
and audio seconds per second (a stream may run ahead of ``speed`` x real time by ``burst`` seconds)."""
from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens; False when there are not that many (the caller exceeded ``rate`` for
        too long). A refused take spends nothing."""
        tokens = self.tokens + (now - self.last) * self.rate
        self.last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True


def audio_bucket(speed: float, burst_s: float, now: float) -> TokenBucket | None:
    """Audio seconds of one stream: refilled at ``speed`` audio seconds per wall second, holding at most
    ``burst_s`` (audio ahead of that pace, e.g. after a network stall). ``speed`` 0: no limit (None)."""
    return TokenBucket(speed, burst_s, now) if speed > 0 else None


def auto_max_connections(nofile_soft: int, reserve: int = 64) -> int:
    """A connection cap below the descriptor limit: each caller connection may need a provider socket
    too (2 descriptors), and ``reserve`` stay free for listeners, logs, the bus and the provider's
    reconnects. At least 1."""
    return max(1, (nofile_soft - reserve) // 2)
