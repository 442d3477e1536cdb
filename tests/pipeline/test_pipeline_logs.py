"""Every close is counted and logged, and no input can flood the log (issue 10 items 7 and 12):

* the closes websockets makes by itself (1009 oversize, 1007 invalid UTF-8) are counted and logged with
  the call, like the ones the ingest makes;
* unknown events are counted one by one but logged as a bounded sample; a connection that sends only
  unknown events (no start) is closed 1003;
* a call whose provider fails logs ``call_failed`` once, not once per path that saw the failure, and the
  frames that arrive after it ended are counted one by one but logged as a sample;
* the sampler itself (rtaa_cli.logs.Sampled): the first lines of each window, then a count of the rest.
"""
from __future__ import annotations

import asyncio
import base64
import logging

import orjson
import pytest

from rtaa_cli import logs
from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.pipeline import ingest as ingest_mod
from rtaa_cli.pipeline import worker as worker_mod
from helpers.pipeline import FRAME, Caller, pipeline, run, until

GOOD_FRAME = b"\x01\x00" * (FRAME // 2)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, event: str, **fields: object) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == event
                and all(getattr(r, k, None) == v for k, v in fields.items())]


@pytest.fixture
def records(monkeypatch):
    """The pipeline's log records, with fresh samplers (a window is 10 s: no test sees another's lines)."""
    monkeypatch.setattr(ingest_mod, "sampled", logs.Sampled(ingest_mod.log), raising=False)
    monkeypatch.setattr(worker_mod, "sampled", logs.Sampled(worker_mod.log), raising=False)
    handler = Records()
    root = logging.getLogger("rtaa")
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


def _media_json(payload: str) -> str:
    return orjson.dumps({"event": "media", "stream_sid": "S", "sequence_number": "3",
                         "media": {"chunk": "1", "timestamp": "36", "payload": payload}}).decode()


def test_closes_made_by_websockets_itself_are_counted_and_logged_with_the_call(records) -> None:
    async def main():
        async with pipeline() as (server, _emu):
            big = await Caller.open(server, "CA-big")
            await big.start()
            await big.ws.send(_media_json(base64.b64encode(b"\x00" * 300_000).decode()))
            utf8 = await Caller.open(server, "CA-utf8")
            await utf8.start()
            await utf8.ws.send(b'{"event": "\xff\xfe"}', text=True)  # a text frame that is not UTF-8
            out = await big.closed(), await utf8.closed()
            m = server.metrics
            await until(lambda: m.value("rtaa_bad_input_total", kind="invalid_utf8") == 1, 5, "the 1007 count")
            return out, m

    (big, utf8), m = run(main(), 60)
    assert big[0] == 1009 and utf8[0] == 1007
    assert m.value("rtaa_caller_closes_total", code="1009") == 1
    assert m.value("rtaa_caller_closes_total", code="1007") == 1
    assert m.value("rtaa_bad_input_total", kind="oversize") == 1
    assert m.value("rtaa_bad_input_total", kind="invalid_utf8") == 1
    assert len(records.events("bad_input", kind="oversize", interaction_id="CA-big", close_code=1009)) == 1
    assert len(records.events("bad_input", kind="invalid_utf8", interaction_id="CA-utf8", close_code=1007)) == 1


def test_an_unknown_event_flood_is_counted_exactly_logged_as_a_sample_and_the_call_goes_on(records) -> None:
    n = 300

    async def main():
        async with pipeline() as (server, emu):
            c = await Caller.open(server, "CA-noisy")
            await c.start()
            for i in range(n):
                await c.ws.send(orjson.dumps({"event": "brand_new_event", "n": i}).decode())
                if i % 50 == 0:
                    await c.media(GOOD_FRAME)
            await c.stop()
            await until(lambda: records.events("call_finished", interaction_id="CA-noisy"), 15, "the call to end")
            await c.ws.close()
            return server.metrics, emu.stats()

    m, stats = run(main(), 60)
    assert m.value("rtaa_bad_input_total", kind="unknown_event") == n  # every one counted
    lines = records.events("bad_input", kind="unknown_event")
    assert len(lines) == logs.Sampled(ingest_mod.log).burst  # only a sample logged (was one per event)
    assert m.value("rtaa_bad_input_total", kind="garbage_only") == 0  # a started call is never garbage
    assert stats["interactions"]["CA-noisy"]["connections"] == 1
    assert records.events("call_finished", interaction_id="CA-noisy")


def test_a_connection_that_sends_only_unknown_events_is_closed(records) -> None:
    async def main():
        async with pipeline() as (server, _emu):
            c = await Caller.open(server, "CA-garbage")
            closed = asyncio.ensure_future(c.closed())
            for i in range(ingest_mod.GARBAGE_ONLY_LIMIT + 20):
                try:
                    await c.ws.send(orjson.dumps({"event": f"junk{i}"}).decode())
                except Exception:  # noqa: BLE001 - the server closed while we were still sending
                    break
            return await closed, server.metrics

    (code, reason), m = run(main(), 60)
    assert (code, reason) == (1003, ingest_mod.GARBAGE_REASON)
    assert m.value("rtaa_bad_input_total", kind="garbage_only") == 1
    assert m.value("rtaa_bad_input_total", kind="unknown_event") == ingest_mod.GARBAGE_ONLY_LIMIT
    assert m.value("rtaa_caller_closes_total", code="1003") == 1


def test_a_failed_provider_logs_call_failed_once_and_its_late_frames_as_a_sample(records) -> None:
    async def main():
        # the emulator wants another key: every opening is a 401 (a permanent failure), after 300 ms in which
        # frames arrive and wait for the opening too: both paths see the failure
        async with pipeline(EmulatorConfig(seed=7, api_key="not-the-test-key", handshake_delay_ms=(300.0, 300.0))) as (server, _emu):
            c = await Caller.open(server, "CA-refused")
            await c.start()
            closed = asyncio.ensure_future(c.closed(30))
            for _ in range(100):  # frames keep coming while the failure is reported
                if closed.done():
                    break
                try:
                    await c.media(GOOD_FRAME)
                except Exception:  # noqa: BLE001 - closed under us
                    break
                await asyncio.sleep(0.005)  # a caller streaming audio, not synchronisation
            code = await closed
            await until(lambda: "CA-refused" not in server.bus.channels, 15, "the call to end")
            return code, server.metrics

    code, m = run(main(), 60)
    assert code == (1011, "transcription provider unavailable")
    assert len(records.events("call_failed", interaction_id="CA-refused")) == 1
    # the frames that waited for the opening all end up after the call: each counted, a sample logged
    burst = logs.Sampled(worker_mod.log).burst
    assert m.value("rtaa_audio_after_end_total") > burst
    assert len(records.events("audio_after_end", interaction_id="CA-refused")) == burst


def test_the_sampler_writes_the_first_lines_of_each_window_then_says_how_many_it_left_out() -> None:
    now = [0.0]
    handler = Records()
    logger = logging.getLogger("rtaa.test.sampled")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        s = logs.Sampled(logs.get("rtaa.test.sampled"), burst=3, window_s=10.0, clock=lambda: now[0])
        for i in range(1000):
            now[0] = i * 0.001  # 1000 events in one second
            s.warning("flood", key="a", n=i)
        s.warning("other", key="b")  # keys are apart
        now[0] = 10.5
        s.warning("flood", key="a", n=1000)
    finally:
        logger.removeHandler(handler)
    flood = handler.events("flood")
    assert [r.n for r in flood] == [0, 1, 2, 1000]
    assert getattr(flood[-1], "suppressed") == 997 and not hasattr(flood[0], "suppressed")
    assert len(handler.events("other")) == 1
