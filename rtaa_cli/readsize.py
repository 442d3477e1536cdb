"""Smaller socket reads for servers that receive many small WebSocket frames.

asyncio's selector transport reads with ``sock.recv(256 KiB)``: CPython allocates that much per read,
above glibc's mmap threshold, so every 576-byte audio frame costs an mmap/mremap/munmap (measured on
the emulator: 19 us per read vs 3 us). Frames are small; 64 KiB reads stay on the heap and still take
a whole burst in one call. Event loops without the attribute (uvloop) ignore it.
"""
from __future__ import annotations

from typing import Any

from websockets.asyncio.server import ServerConnection

from rtaa_cli.internals import READ_SIZE, limit_read_size  # noqa: F401  (asyncio's transport internals)


class SmallReadConnection(ServerConnection):
    """websockets' ServerConnection with :func:`limit_read_size` applied (``serve(create_connection=...)``)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        limit_read_size(transport)
