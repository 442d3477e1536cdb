"""The ASR worker: exactly one provider stream per interaction, audio forwarded as it arrives.

Per interaction (:class:`Interaction`):
- **single-flight opening**: the first caller that needs the provider stream starts one opening task;
  everyone else who needs it meanwhile awaits that same task (counted as a duplicate open prevented).
  If the opening fails, every waiter gets the error; nothing hangs, nothing opens twice.
- **forward as it arrives**: each frame is sent the moment it is consumed; frames that arrive while
  the stream is opening are sent, in order, as soon as it is open. No time-based batching.
- **KeepAlive** when no audio was sent for ``keepalive_interval_s`` (holds, mute).
- **end**: CloseStream, then wait (bounded) until the provider has sent its finals and closed 1000.
- **reconnect** when the provider closes otherwise (1011, drop): the old connection is gone before the
  new one opens (so never a duplicate), with backoff + jitter for at most ``reconnect_window_s``; while it
  reconnects the call's audio keeps flowing into the (bounded) replay buffer instead of backing up the bus.
  The audio not yet covered by a final is replayed and the new connection's timestamps are offset to
  stream audio time, so the transcript neither loses nor repeats a segment (see
  :mod:`rtaa_cli.pipeline.timeline`).

Every one of these decisions is made by the call's :class:`~rtaa_cli.pipeline.worker_rules.CallRules`
(sans I/O, tested without sockets); :class:`Interaction` is its shell: it feeds the rules events with the
time from its clock and carries out what they return (tasks, sockets, sleeps, publishing, metrics, logs).
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

from rtaa_cli import logs
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.pipeline.heap import HeapTrimmer
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection, ProviderError
from rtaa_cli.pipeline.timeline import CallTimeline
from rtaa_cli.pipeline.worker_rules import Action, CallRules, Phase, ResultVerdict
from rtaa_cli.protocols import feed
from rtaa_cli.protocols.deepgram import Result
from rtaa_cli.protocols.feed import GapCause

log = logs.get("rtaa.worker")
sampled = logs.Sampled(log)  # per-frame warnings: a bounded sample, the metrics count every frame

ACTIVE = Phase.ACTIVE
_REPLAY_CHUNK = 32 * 1024  # replayed audio goes out in messages of this size

Publish = Callable[[dict[str, Any]], None]


class CallEnded(Exception):
    """Audio pushed to an interaction that has already ended (reported, never silently dropped)."""


class Interaction:
    """One call's provider stream, the I/O shell of its :class:`~rtaa_cli.pipeline.worker_rules.CallRules`:
    it asks the rules what to do, does it (open, send, sleep, publish), counts it and logs it."""

    rules_cls: type[CallRules] = CallRules

    def __init__(self, interaction_id: str, sample_rate: int, provider: Provider, cfg: WorkerConfig,
                 metrics: PipelineMetrics, publish: Publish, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interaction_id = interaction_id
        self.sample_rate = sample_rate
        self.provider = provider
        self.cfg = cfg
        self.metrics = metrics
        self._publish = publish
        self._clock = clock  # the rules' time; frames' received_at are on the same clock
        self.finished = False  # set by the worker's _finish (exactly once per interaction)
        self.failure_reported = False  # call_failed logged and the caller told (exactly once)
        self.stream_sid = ""
        self.timeline = CallTimeline(sample_rate, cfg.replay_limit_s, cfg.latency_window_frames)
        self.rules = self.rules_cls(cfg, self.timeline, clock())
        self.seq = 0
        self._conn: ProviderConnection | None = None  # set exactly while the rules' link is OPEN
        self._conn_done: asyncio.Future[int | None] | None = None
        self._opening: asyncio.Task[ProviderConnection] | None = None  # while the rules' link is opening
        self._outage = asyncio.Event()  # mirrors rules.outage, for frames waiting on an opening
        self._tasks: set[asyncio.Task[Any]] = set()
        self._trimmed_reported = 0
        self._empty_logged = False
        # Called when the provider is given up on outside a frame's path (e.g. a reopen during a hold).
        self.on_failure: Callable[[ProviderError], None] | None = None
        self._spawn(self._keepalive_loop())

    @property
    def state(self) -> str:
        return self.rules.phase.value

    @property
    def failure(self) -> ProviderError | None:
        return self.rules.failure

    @property
    def connections_opened(self) -> int:
        return self.rules.connections_opened

    # -- provider stream: single-flight --------------------------------------------------------
    async def connection(self) -> ProviderConnection:
        conn = self._conn
        if conn is not None:
            return conn
        action = self.rules.need(self._clock())
        if action is Action.FAIL:
            assert self.rules.failure is not None
            raise self.rules.failure  # gave up on this call's provider: fail fast, do not retry per frame
        if action is Action.CALL_ENDED:
            raise CallEnded(self.interaction_id)
        # shield: a waiter that is cancelled must not cancel the opening the others wait for.
        return await asyncio.shield(self._opening_for(action))

    def _opening_for(self, action: Action) -> asyncio.Task[ProviderConnection]:
        """OPEN: start the one opening task; JOIN: the one under way."""
        if action is Action.OPEN:
            self._opening = asyncio.get_running_loop().create_task(self._open())
        else:
            self.metrics.duplicate_opens_prevented.inc()
        task = self._opening
        assert task is not None, action
        return task

    async def _join_opening(self, action: Action) -> None:
        """A frame's wait for the stream: until it is open (or the opening fails: raised), or until the
        opening starts retrying an outage (then the frame is buffered, see push_audio)."""
        task = self._opening_for(action)
        outage = asyncio.get_running_loop().create_task(self._outage.wait())
        try:
            await asyncio.wait((task, outage), return_when=asyncio.FIRST_COMPLETED)
        finally:
            outage.cancel()
        if task.done():
            task.result()  # the opening's error (ProviderError, CallEnded) reaches every waiter

    async def _open(self) -> ProviderConnection:
        """The opening: attempts, backoff sleeps and the replay, as the rules decide."""
        rules = self.rules
        try:
            while True:
                try:
                    conn = await self.provider.open(self.interaction_id, self.sample_rate)
                except ProviderError as exc:
                    self.metrics.provider_open_failures.labels(provider=self.provider.name).inc()
                    if rules.attempt == 1 or exc.permanent:  # one line per outage, not one per attempt
                        log.warning("provider_open_failed", interaction_id=self.interaction_id,
                                    attempt=rules.attempt, error=str(exc), permanent=exc.permanent)
                    retry = rules.open_failed(exc, self._clock(), random.random())
                else:
                    if await self._activate(conn):
                        return conn
                    retry = rules.replay_failed(self._clock(), random.random())
                if retry is None:
                    assert rules.failure is not None
                    raise rules.failure
                self._outage.set()
                await asyncio.sleep(retry.delay_s)
                if not rules.retry():
                    raise CallEnded(self.interaction_id)
        finally:
            self._opening = None
            rules.cancelled()  # abandoned mid-way (the call ended under it); otherwise nothing to do

    async def _activate(self, conn: ProviderConnection) -> bool:
        """Send ``conn`` the audio no final covers yet, then make it current. The replay completes before
        any live frame can use the connection (``_conn`` is set last), so audio order is kept."""
        rules = self.rules
        replay = rules.connected()
        number = replay.number
        if replay.duplicate:
            self.metrics.duplicate_connections.inc()
            log.error("provider_duplicate_connection", interaction_id=self.interaction_id, connection=number)
        self.metrics.provider_opened.labels(provider=self.provider.name).inc()
        if number > 1:
            self.metrics.provider_reconnects.inc()
        tl = self.timeline
        self._report_gap(GapCause.REPLAY_TRIM, replay.gap)
        start = replay.base
        audio = tl.since(start)
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._spawn(self._receive(conn, number, start, done))
        log.info("provider_connected", interaction_id=self.interaction_id, connection=number,
                 replay_bytes=len(audio), base_ms=round(start / tl.bytes_per_ms, 1))
        sent = start
        try:
            while audio:
                for i in range(0, len(audio), _REPLAY_CHUNK):
                    await conn.send_audio(audio[i:i + _REPLAY_CHUNK])
                sent += len(audio)
                audio = tl.since(sent)  # frames that came in during the replay (a reconnect does not block them)
        except Exception:  # noqa: BLE001 - closed during the replay; its receiver logs the close
            await conn.aclose()
            return False
        if number > 1 and sent > start:
            self.metrics.replayed_bytes.inc(sent - start)
        if done.done():
            return False
        self._conn_done = done
        self._conn = conn
        self._outage.clear()
        now = self._clock()
        attempts = rules.ready(sent, now)
        if attempts > 1:
            log.info("provider_reopened", interaction_id=self.interaction_id, attempts=attempts,
                     after_s=round(now - (rules.window_end - self.cfg.reconnect_window_s), 3))
        return True

    # -- audio in --------------------------------------------------------------------------------
    async def push_audio(self, pcm: bytes, received_at: float) -> None:
        """Forward one frame now. Must be called in frame order (the bus consumer is one task per call)."""
        if not pcm:
            self._drop_empty()
            return
        rules = self.rules
        if rules.phase is not ACTIVE:
            self.metrics.audio_after_end.inc()
            sampled.warning("audio_after_end", interaction_id=self.interaction_id, bytes=len(pcm), state=self.state)
            raise CallEnded(self.interaction_id)
        end = self._append(pcm, received_at)
        conn = self._conn
        if conn is None:
            action = rules.frame(self._clock())
            if action is Action.FAIL:
                assert rules.failure is not None
                raise rules.failure  # gave up on this call's provider: fail fast, do not retry per frame
            if action is Action.OPEN or action is Action.JOIN:
                await self._join_opening(action)
            if self._conn is None:
                # Outage: the frame stays in the bounded replay buffer and the reopening sends it. The bus
                # keeps draining, so a provider restart does not back the caller up into "pipeline overloaded".
                self.metrics.frames_waited.inc()
                return
            if end <= rules.conn_sent:
                self.metrics.frames_waited.inc()
                return  # went out with the opening's replay of pending audio
            conn = self._conn
        try:
            await conn.send_audio(pcm)
        except Exception:  # noqa: BLE001 - connection died under us: the frame stays in the replay buffer
            return
        now = self._clock()
        rules.sent(end, now)
        self.metrics.frames_out.inc()
        if received_at >= rules.ready_at:
            self.metrics.added_latency.observe(now - received_at)
        else:  # queued behind the opening: its wait is the provider handshake, counted apart
            self.metrics.frames_waited.inc()

    def _drop_empty(self) -> None:
        """A 0-byte media frame must never reach the provider: Deepgram reads an empty binary message as
        CloseStream (and the worker would reconnect). Counted; logged once per call (it can be a flood)."""
        self.metrics.empty_frames.inc()
        if not self._empty_logged:
            self._empty_logged = True
            log.warning("empty_audio_dropped", interaction_id=self.interaction_id)

    def _append(self, pcm: bytes, received_at: float) -> int:
        tl = self.timeline
        end = tl.append(pcm, received_at)
        if tl.trimmed_bytes != self._trimmed_reported:  # the replay buffer hit its limit: count what it gave up
            self.metrics.replay_trimmed_bytes.inc(tl.trimmed_bytes - self._trimmed_reported)
            self._trimmed_reported = tl.trimmed_bytes
        return end

    async def send_now(self, pcm: bytes, received_at: float) -> bool:
        """The bus's fast path: forward now if the provider stream is open and will not block; False
        (nothing done) otherwise, and the frame takes the queued path through :meth:`push_audio`."""
        if not pcm:
            self._drop_empty()
            return True
        conn = self._conn
        if conn is None or self.rules.phase is not ACTIVE or not conn.writable():
            return False
        end = self._append(pcm, received_at)
        try:
            await conn.send_audio(pcm)
        except Exception:  # noqa: BLE001 - connection died: the frame stays in the replay buffer
            return True
        now = self._clock()
        self.rules.sent(end, now)
        self.metrics.frames_out.inc()
        self.metrics.added_latency.observe(now - received_at)
        return True

    # -- results out -----------------------------------------------------------------------------
    async def _receive(self, conn: ProviderConnection, number: int, base: int,
                       done: asyncio.Future[int | None]) -> None:
        try:
            async for result in conn.results():
                self._on_result(result, number, base)
        except Exception as exc:  # noqa: BLE001 - a broken provider must not take the call down
            log.warning("provider_receive_error", interaction_id=self.interaction_id, error=repr(exc))
        code = conn.close_code
        self.metrics.provider_closes.labels(code=str(code)).inc()
        if conn.unparsable:
            self.metrics.provider_unparsable.inc(conn.unparsable)
            log.warning("provider_unparsable_messages", interaction_id=self.interaction_id, connection=number,
                        count=conn.unparsable)
        if self._conn is conn:
            self._conn = None
        action = self.rules.closed(number)
        if action is Action.REOPEN:
            self._outage.set()  # frames meanwhile go to the replay buffer
        await conn.aclose()
        if not done.done():
            done.set_result(code)
        active = self.rules.phase is Phase.ACTIVE
        if code != 1000 or active:
            log.warning("provider_closed", interaction_id=self.interaction_id, connection=number, code=code,
                        reason=conn.close_reason, state=self.state)
        if action is Action.REOPEN and active:
            # Reopen now (not on the next frame): during a hold nothing else would, and the replay of
            # unfinalized audio should not wait for the caller to speak again.
            self._spawn(self._reopen())

    async def _reopen(self) -> None:
        try:
            await self.connection()
        except CallEnded:
            pass
        except ProviderError as exc:
            if self.on_failure is not None and self.rules.phase is Phase.ACTIVE:
                self.on_failure(exc)  # tell the caller now, not on its next frame

    def _on_result(self, r: Result, number: int, base: int) -> None:
        verdict, start_ms, end_ms = self.rules.result(base, r.start, r.end, r.is_final, bool(r.text))
        if verdict is not ResultVerdict.PUBLISH:
            if verdict is ResultVerdict.DUPLICATE_FINAL:
                self.metrics.duplicate_finals_dropped.inc()
            return  # a final over silence only moves the replay point: agents need not see it
        tl = self.timeline
        offset_s = base / tl.bytes_per_ms / 1000.0
        self.seq += 1
        msg = feed.transcript_message(
            interaction_id=self.interaction_id, stream_sid=self.stream_sid, seq=self.seq, is_final=r.is_final,
            speech_final=r.speech_final, from_finalize=r.from_finalize, text=r.text, confidence=r.confidence,
            words=[feed.word(w.word, round(w.start + offset_s, 3), round(w.end + offset_s, 3), w.confidence)
                   for w in r.words],
            audio_start_ms=round(start_ms, 1), audio_end_ms=round(end_ms, 1), provider=self.provider.name,
            provider_connection=number, received_at=time.time())
        self._publish(msg)
        (self.metrics.results_final if r.is_final else self.metrics.results_interim).inc()
        frame_at = tl.received_at(end_ms)
        if frame_at is not None:
            (self.metrics.e2e_final if r.is_final else self.metrics.e2e_interim).observe(self._clock() - frame_at)

    # -- gaps --------------------------------------------------------------------------------------
    def _report_gap(self, cause: GapCause, span: tuple[int, int] | None) -> None:
        """Audio no final will cover: counted, logged, and a ``gap`` message on the call's feed
        (docs/transcript-feed.md), in order with its transcripts and before ``call_ended``."""
        if span is None:
            return
        bpm = self.timeline.bytes_per_ms
        start_ms, end_ms = span[0] / bpm, span[1] / bpm
        lost_ms = end_ms - start_ms
        self.metrics.audio_gaps.labels(cause=cause).inc()
        self.metrics.audio_gap_seconds.labels(cause=cause).inc(lost_ms / 1000.0)
        log.warning("audio_gap", interaction_id=self.interaction_id, cause=cause, audio_start_ms=round(start_ms, 1),
                    audio_end_ms=round(end_ms, 1), lost_ms=round(lost_ms, 1))
        self._publish(feed.gap_message(self.interaction_id, self.stream_sid, cause, round(start_ms, 1),
                                       round(end_ms, 1), round(lost_ms, 1), time.time()))

    async def _keepalive_loop(self) -> None:
        rules = self.rules
        while rules.phase is Phase.ACTIVE:
            action, wait = rules.keepalive(self._clock())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            conn = self._conn
            if action is Action.KEEPALIVE and conn is not None:
                try:
                    await conn.keep_alive()
                    self.metrics.provider_keepalives.inc()
                except Exception:  # noqa: BLE001 - the receiver handles the close
                    pass

    # -- end -------------------------------------------------------------------------------------
    async def end(self, reason: str) -> None:
        """CloseStream, wait (bounded) for the final results, close. Never hangs, idempotent."""
        if not self.rules.begin_end():
            return
        lost: GapCause | None = None  # why the audio after the last final will never be transcribed
        try:
            async with asyncio.timeout(self.cfg.finalize_timeout_s):
                await self._finish_stream()
        except TimeoutError:
            lost = GapCause.FINALIZE_TIMEOUT
            self.metrics.finalize_timeouts.inc()
            log.warning("finalize_timeout", interaction_id=self.interaction_id,
                        timeout_s=self.cfg.finalize_timeout_s)
        except (ProviderError, CallEnded) as exc:
            lost = GapCause.PROVIDER_UNAVAILABLE
            log.warning("finalize_failed", interaction_id=self.interaction_id, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - never let a provider fault skip the teardown or escape
            lost = GapCause.PROVIDER_UNAVAILABLE
            log.warning("finalize_failed", interaction_id=self.interaction_id, error=repr(exc))
        finally:
            if lost is not None:
                self._report_gap(lost, self.timeline.lost_tail())
            await self._teardown()
        log.info("call_finished", interaction_id=self.interaction_id, reason=reason,
                 connections=self.connections_opened, results=self.seq)

    async def _finish_stream(self) -> None:
        rules = self.rules
        while True:
            step = rules.end_step()
            if step is Action.DONE:
                return  # nothing was sent that a final has not covered: no provider stream needed
            if step is Action.FAIL:
                assert rules.failure is not None
                raise rules.failure
            conn = await self.connection()
            done = self._conn_done
            assert done is not None
            try:
                await conn.close_stream()
            except Exception:  # noqa: BLE001 - the provider closed first (e.g. 1011): its receiver
                pass  # resolves ``done`` with that code, and the loop reopens, replays, CloseStreams again
            code = await asyncio.shield(done)
            if code == 1000:
                return
            # Closed abnormally before the finals: loop, i.e. reopen, replay, CloseStream again.

    async def _teardown(self) -> None:
        self.rules.ended()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        if self._opening is not None:
            self._opening.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        self.timeline.close()  # unmap the replay buffer now, not at GC

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Worker:
    """Consumes the bus: one task per call, items in order, one :class:`Interaction` at a time per call."""

    def __init__(self, provider: Provider, cfg: WorkerConfig, metrics: PipelineMetrics,
                 bus: busmod.Bus, publish: Publish, on_call_started: Callable[[str, str], None],
                 on_call_ended: Callable[[str, str], None]) -> None:
        self.provider = provider
        self.cfg = cfg
        self.metrics = metrics
        self.bus = bus
        self.publish = publish
        self.on_call_started = on_call_started
        self.on_call_ended = on_call_ended
        self.interactions: dict[str, Interaction] = {}
        self.heap = HeapTrimmer(cfg.heap_trim_interval_s)
        bus.attach(self._consume)

    async def _consume(self, channel: busmod.CallChannel) -> None:
        iid = channel.interaction_id
        interaction: Interaction | None = None
        try:
            while True:
                channel.busy = False
                item = await channel.get()
                channel.busy = True  # until this item is handled: a fast-path frame must not overtake it
                kind = item[0]
                if kind is busmod.AUDIO:
                    if interaction is None:
                        self.metrics.audio_after_end.inc()
                        sampled.warning("audio_after_end", interaction_id=iid, bytes=len(item[1]))
                        continue
                    try:
                        await interaction.push_audio(item[1], item[2])
                    except CallEnded:
                        pass  # counted and logged by push_audio
                    except ProviderError as exc:
                        channel.fast_path = None
                        failed, interaction = interaction, None
                        await self._fail(channel, failed, exc)
                elif kind is busmod.START:
                    restart = interaction is not None and interaction.sample_rate != item[2]
                    if restart:
                        # The ingest lets a new rate through only before any audio (a silent start must not
                        # fix the rate): same call, a fresh provider stream at the new rate, no call_ended.
                        channel.fast_path = None
                        old, interaction = interaction, None
                        await old.end("sample rate changed before audio")
                    if interaction is None:
                        interaction = Interaction(iid, item[2], self.provider, self.cfg, self.metrics, self.publish)
                        self.interactions[iid] = interaction
                        resumed = len(item) > 3  # taken over from another worker (Redis bus): no call_started
                        if resumed:
                            interaction.timeline.resume_at(item[3][0])
                            interaction.seq = item[3][1]
                        if not restart:
                            self.metrics.calls_active.inc()
                            self.metrics.calls_total.inc()
                        # Open eagerly: the handshake overlaps the first frames instead of delaying them.
                        interaction._spawn(interaction._reopen())
                        channel.fast_path = interaction.send_now
                        interaction.on_failure = self._failure_reporter(channel, interaction)
                        # Here, not at the ingest: a start that arrives while the call's previous stream is
                        # still finalising begins a new call only now, after that call's call_ended.
                        if not restart and not resumed:
                            self.on_call_started(iid, item[1])
                    interaction.stream_sid = item[1]
                else:  # END
                    channel.fast_path = None
                    if interaction is not None:
                        # Cleared before the await: whatever happens inside, ``finally`` must not finish it twice.
                        ending, interaction = interaction, None
                        await self._finish(ending, item[1])
                    if self.bus.release_if_idle(channel):
                        return
        finally:
            channel.fast_path = None
            channel.busy = False
            if interaction is not None:  # cancelled (shutdown): still free everything
                await self._finish(interaction, "shutdown")

    async def _finish(self, interaction: Interaction, reason: str) -> None:
        if interaction.finished:
            return  # exactly once: one calls_active decrement, one call_ended
        interaction.finished = True
        try:
            await interaction.end(reason)
        finally:
            if self.interactions.get(interaction.interaction_id) is interaction:
                del self.interactions[interaction.interaction_id]
            self.metrics.calls_active.dec()
            self.on_call_ended(interaction.interaction_id, reason)
            self.heap.call_ended()

    @staticmethod
    def _report_failure(channel: busmod.CallChannel, interaction: Interaction, exc: ProviderError) -> None:
        """Once per call: the background opening and the next frame's send both see the same failure."""
        if interaction.failure_reported:
            return
        interaction.failure_reported = True
        log.error("call_failed", interaction_id=interaction.interaction_id, error=str(exc))
        channel.fail("transcription provider unavailable")  # the ingest closes the caller 1011

    def _failure_reporter(self, channel: busmod.CallChannel, interaction: Interaction) -> Callable[[ProviderError], None]:
        return lambda exc: self._report_failure(channel, interaction, exc)

    async def _fail(self, channel: busmod.CallChannel, interaction: Interaction, exc: ProviderError) -> None:
        self._report_failure(channel, interaction, exc)
        await self._finish(interaction, "provider unavailable")
