"""Fencing of provider streams by call ownership (Redis bus, docs/scale-out.md "Lease and fencing").

A worker may talk to the provider about a call only while it holds that call's lease. The lease is
checked **locally** before every provider operation (open, each audio send, KeepAlive, Finalize,
CloseStream): ``holds(interaction_id)`` is true only until ``renewed_at + lease - margin`` on this
process's monotonic clock, which runs on while the process is paused (SIGSTOP) or starved. So a worker
that resumes after its lease lapsed refuses to send before it has even talked to Redis again, and no other
worker can have been granted the lease before that local deadline (Redis expires it ``lease`` after the
renewal it acknowledged, later than ``renewed_at``).

Everything the worker does goes through the wrapped provider, so the worker code (worker.py) needs no
knowledge of leases: a refused operation raises a permanent :class:`ProviderError` (the worker then stops
using the stream) and the underlying connection is dropped.
"""
from __future__ import annotations

from typing import AsyncIterator, Callable

from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection, ProviderError
from rtaa_cli.protocols.deepgram import Result

Holds = Callable[[str], bool]

# A lease is trusted locally for this fraction of its length after the renewal that was *sent* (so Redis,
# which expires it a full lease after it *received* that renewal, cannot have granted it to anyone else);
# the watchdog (every 1/8 lease) drops the call by VALID_FRACTION + 1/8 of the lease at the latest.
VALID_FRACTION = 0.6


class LeaseClock:
    """When a worker may trust its leases and when it renews them (sans-I/O: times are ``perf_counter()``).

    Renewals go out every ``lease/4`` counted from the previous one's *send*, so a slow round trip eats
    into the margin once, not twice (counted from its completion, two 350 ms round trips under CPU load
    were enough to lapse a 2 s lease). A reply processed after the validity it extends has lapsed does not
    revive the call: provider operations may have been refused meanwhile, so the call is dropped and its
    successor resumes it from the checkpoint."""

    __slots__ = ("valid_s", "period_s")

    def __init__(self, lease_ms: int) -> None:
        self.valid_s = lease_ms * VALID_FRACTION / 1000.0
        self.period_s = lease_ms / 4000.0

    def acquired(self, sent_at: float) -> float:
        """The local validity of a lease whose acquisition was sent at ``sent_at``."""
        return sent_at + self.valid_s

    def next_renewal(self, sent_at: float, now: float) -> float:
        """How long to wait before the next renewal, the previous one having been sent at ``sent_at``."""
        return max(0.0, sent_at + self.period_s - now)

    def renewed(self, valid_until: float, sent_at: float, now: float) -> float | None:
        """The new validity after a renewal sent at ``sent_at`` was acknowledged (processed at ``now``);
        None if the old one lapsed first (drop the call)."""
        if now >= valid_until:
            return None
        return max(valid_until, sent_at + self.valid_s)


class Fenced(ProviderError):
    def __init__(self, interaction_id: str) -> None:
        super().__init__(f"not the owner of call {interaction_id} (lease lost)", permanent=True)


class FencedConnection(ProviderConnection):
    __slots__ = ("_inner", "_iid", "_holds", "_on_fenced")

    def __init__(self, inner: ProviderConnection, iid: str, holds: Holds, on_fenced: Callable[[], None]) -> None:
        self._inner = inner
        self._iid = iid
        self._holds = holds
        self._on_fenced = on_fenced

    # the worker reads these after results() ends
    @property
    def close_code(self) -> int | None:  # type: ignore[override]
        return self._inner.close_code

    @property
    def close_reason(self) -> str:  # type: ignore[override]
        return self._inner.close_reason

    @property
    def unparsable(self) -> int:  # type: ignore[override]
        return self._inner.unparsable

    async def _check(self) -> None:
        if not self._holds(self._iid):
            self._on_fenced()
            await self._inner.aclose()
            raise Fenced(self._iid)

    async def send_audio(self, pcm: bytes) -> None:
        if not self._holds(self._iid):  # inline (no await) on the hot path
            await self._check()
        await self._inner.send_audio(pcm)

    def writable(self) -> bool:
        return self._inner.writable()

    async def keep_alive(self) -> None:
        await self._check()
        await self._inner.keep_alive()

    async def finalize(self) -> None:
        await self._check()
        await self._inner.finalize()

    async def close_stream(self) -> None:
        await self._check()
        await self._inner.close_stream()

    def results(self) -> AsyncIterator[Result]:
        return self._inner.results()

    async def aclose(self) -> None:
        await self._inner.aclose()


class FencedProvider(Provider):
    """``inner`` behind the ownership check; ``abort(iid)`` drops the call's open streams at once."""

    def __init__(self, inner: Provider, holds: Holds, on_fenced: Callable[[], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self._holds = holds
        self._on_fenced = on_fenced
        self._open: dict[str, set[FencedConnection]] = {}

    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        if not self._holds(interaction_id):
            self._on_fenced()
            raise Fenced(interaction_id)
        conn = await self.inner.open(interaction_id, sample_rate)
        if not self._holds(interaction_id):  # lost while the handshake ran
            self._on_fenced()
            await conn.aclose()
            raise Fenced(interaction_id)
        fenced = FencedConnection(conn, interaction_id, self._holds, self._on_fenced)
        self._open.setdefault(interaction_id, set()).add(fenced)
        return fenced

    def forget(self, interaction_id: str) -> None:
        self._open.pop(interaction_id, None)

    async def abort(self, interaction_id: str) -> None:
        for conn in self._open.pop(interaction_id, ()):
            try:
                await conn.aclose()
            except Exception:  # noqa: BLE001 - already broken: it is closed either way
                pass

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def health(self) -> list[str]:
        return self.inner.health()
