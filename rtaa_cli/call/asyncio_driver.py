"""The asyncio driver (websockets' asyncio client) of ``rtaa replay`` and ``rtaa smoke``.

It plays one stream's :class:`~rtaa_cli.call.script.CallScript` paced by :class:`rtaa_cli.pacing.Pacer`
and tells the :class:`~rtaa_cli.call.recorder.CallRecorder` what happened. Both sockets (the Exotel
stream and the transcript feed) are read in their own tasks, so a slow or chatty server never delays
the sender.
"""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any, Callable, Literal, Sequence

import websockets
from websockets.asyncio.client import ClientConnection, connect

from rtaa_cli.call.recorder import CallRecorder, CallResult, close_of, feed_tap
from rtaa_cli.call.script import CallScript
from rtaa_cli.feeds import redis_feed, sse_feed, webhook
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.recorder import Transcript
from rtaa_cli.pacing import Pacer, wait_async
from rtaa_cli.protocols.closecodes import CLEAN_CLOSES
from rtaa_cli.wserrors import describe_connect_error

MAX_FEED_MESSAGE_BYTES = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _proxy_for(url: str) -> Literal[True] | None:
    # Never send loopback traffic through an HTTP(S)_PROXY from the environment.
    return None if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS else True


async def run_call(
    url: str,
    script: CallScript,
    *,
    speed: float = 1.0,
    headers: Sequence[tuple[str, str]] = (),
    transcripts_url: str | None = None,
    wait_final_s: float = 10.0,
    open_timeout_s: float = 10.0,
    on_progress: Callable[[CallResult, float], None] | None = None,
    on_transcript: Callable[[Transcript], None] | None = None,
    mapping: FieldMapping | None = None,
) -> CallResult:
    """Place one call: stream ``script`` to ``url`` paced at ``speed`` (0 = as fast as possible).

    Never raises for network trouble: a failed handshake, a server close mid-stream or a broken
    feed end up in the result (``connected``, ``close_code``, ``errors``). ``on_progress(result,
    lateness_s)`` is called after each media frame, ``on_transcript`` for each of this call's
    transcripts as it arrives.
    """
    if script.streams > 1:
        raise ValueError("the asyncio driver plays one stream; a script that switches streams needs the gevent driver")
    recorder = CallRecorder(script, url, transcripts_url, on_transcript, mapping=mapping)
    result, feed, call_sid = recorder.result, recorder.feed_url, script.options.call_sid
    base = transcripts_url or ""  # SSE and webhook taps apply the feed URL rule themselves
    recorder.started(time.time(), time.monotonic())
    feed_ws: ClientConnection | None = None
    feed_task: asyncio.Task[None] | None = None
    feed_done = asyncio.Event()
    pacer: Pacer | None = None
    try:
        tap = feed_tap(feed) if feed is not None else None
        if tap == "redis":  # subscribe before start: nothing of this call is missed
            try:
                state = await asyncio.wait_for(redis_feed.open_async(base, call_sid), open_timeout_s)
            except (OSError, TimeoutError) as exc:
                recorder.error(f"transcript feed: {exc or 'timed out connecting to Redis'}")
                return result
            feed_task = asyncio.create_task(_read_redis_feed(state, recorder, feed_done))
        elif tap == "webhook":  # rtaa listens, the target POSTs
            try:
                unsubscribe = webhook.subscribe_async(base, call_sid, recorder.feed_message)
            except (OSError, ValueError) as exc:
                recorder.error(f"transcript feed: {exc}")
                return result
            feed_task = asyncio.create_task(_webhook_subscription(unsubscribe))
        elif tap == "sse":
            try:
                sse = await asyncio.wait_for(sse_feed.open_async(base, call_sid, dict(headers)),
                                             open_timeout_s)
            except (OSError, TimeoutError) as exc:
                recorder.error(f"transcript feed: {exc or 'timed out subscribing'}")
                return result
            feed_task = asyncio.create_task(_read_sse_feed(sse, recorder, feed_done))
        elif tap == "ws":
            assert feed is not None
            try:
                # The ingest's credentials: with auth on, `rtaa serve` lets the streamer read its own call.
                feed_ws = await connect(feed, additional_headers=list(headers), open_timeout=open_timeout_s,
                                        proxy=_proxy_for(feed), compression=None, max_size=MAX_FEED_MESSAGE_BYTES)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                recorder.error(f"transcript feed {describe_connect_error(feed, exc)}")
                return result
            feed_task = asyncio.create_task(_read_feed(feed_ws, recorder, feed_done))
        if tap is not None:
            recorder.feed_opened()
        try:
            ws = await connect(url, additional_headers=list(headers), open_timeout=open_timeout_s,
                               proxy=_proxy_for(url), compression=None)
        except Exception as exc:  # noqa: BLE001
            recorder.error(describe_connect_error(url, exc))
            return result
        recorder.stream_opened()
        reader = asyncio.create_task(_read_exotel(ws, recorder))
        try:
            pacer = Pacer(speed)
            await _send_script(ws, script, pacer, recorder, reader, on_progress)
            if result.stop_sent and feed_task is not None:
                # rtaa's own feed ends each call with call_ended; a foreign one (Redis) may never say
                await _wait_for_end(recorder, feed_done, wait_final_s, expect_end=feed_ws is not None)
            if not reader.done():
                await ws.close(1000, "stream stopped" if result.stop_sent else "caller gave up")
            await reader
        finally:
            reader.cancel()
            recorder.stream_closed(close_of(ws.protocol))
    finally:
        if feed_ws is not None:
            await feed_ws.close()
        if feed_task is not None:
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
        recorder.finish(time.time(), time.monotonic(), pacer)
    return result


async def _send_script(ws: ClientConnection, script: CallScript, pacer: Pacer, recorder: CallRecorder,
                       reader: asyncio.Task[None],
                       on_progress: Callable[[CallResult, float], None] | None) -> None:
    pacer.start()
    hold_from: float | None = None
    for step in script:
        if step.kind == "hold":
            hold_from = time.time()
            continue
        delay = pacer.delay(step.at_s)
        if delay > 0.25:  # long waits (holds): wake up at once if the server closes meanwhile
            await asyncio.wait((reader,), timeout=delay)
        await wait_async(pacer, step.at_s)
        if hold_from is not None:
            recorder.paused("hold", hold_from, time.time())
            hold_from = None
        if reader.done():  # the server closed (or the socket broke): nothing more to send
            return
        try:
            await ws.send(step.text)  # type: ignore[arg-type]
        except websockets.ConnectionClosed:
            return
        recorder.sent(step, time.time())
        if step.kind == "media":
            late = pacer.sent(step.at_s)
            if on_progress is not None:
                on_progress(recorder.result, late)


async def _read_exotel(ws: ClientConnection, recorder: CallRecorder) -> None:
    try:
        async for message in ws:
            recorder.server_message(message, time.time())
    except websockets.ConnectionClosed:
        pass


async def _read_feed(ws: ClientConnection, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        async for message in ws:
            recorder.feed_message(message, time.time())
            if recorder.ended:
                break
    except websockets.ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code not in CLEAN_CLOSES:
            recorder.error(f"transcript feed closed with {exc.rcvd.code} {exc.rcvd.reason!r}")
    finally:
        done.set()


async def _read_redis_feed(state: Any, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        await redis_feed.read_async(state, recorder.feed_message, lambda: recorder.ended)
    except (OSError, redis_feed.redis_errors()) as exc:
        recorder.error(f"transcript feed: redis: {type(exc).__name__}: {exc}")
    finally:
        done.set()


async def _webhook_subscription(unsubscribe: Callable[[], None]) -> None:
    """Holds the call's webhook subscription (messages arrive by themselves) until cancelled."""
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        unsubscribe()


async def _read_sse_feed(state: Any, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        await sse_feed.read_async(state, recorder.feed_message, lambda: recorder.ended)
    except (OSError, *sse_feed.sse_errors()) as exc:  # type: ignore[misc]  # a tuple built at run time
        recorder.error(f"transcript feed: sse: {type(exc).__name__}: {exc}")
    finally:
        done.set()


async def _wait_for_end(recorder: CallRecorder, feed_done: asyncio.Event, timeout_s: float,
                        expect_end: bool = True) -> None:
    """After stop: until ``call_ended`` arrives or the feed closes, bounded by ``timeout_s``."""
    waiter = asyncio.create_task(feed_done.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout_s)
    finally:
        waiter.cancel()
    if expect_end and recorder.result.call_ended is None and not feed_done.is_set():
        recorder.error(f"no call_ended on the transcript feed within {timeout_s:g} s of stop")
