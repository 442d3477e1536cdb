"""Run by tests/soak/test_soak_sender.py in its own process (gevent-patched, as under Locust): plays
calls through rtaa_cli.call.gevent_driver against a websockets sync server on 127.0.0.1 in the same
process and prints one JSON line of what the server received and the calls recorded.

    python tests/helpers/soak_sender_child.py paced|stall|close
"""
from __future__ import annotations

from rtaa_cli.soak import patched  # noqa: F401  (first: gevent monkey-patching, as Locust does)

import json
import sys
import threading

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from rtaa_cli.protocols.exotel import Media, Start, StreamEncoder, parse_event
from rtaa_cli.call import gevent_driver
from rtaa_cli.call.gevent_driver import CallSpec, run_call
from rtaa_cli.soak.stats import CallRecord
from rtaa_cli.watermark import Marker

case = sys.argv[1]
received: dict[str, list[str]] = {}  # stream_sid -> raw text messages in arrival order
first_message = threading.Event()


def handler(ws) -> None:
    msgs: list[str] = []
    media = 0
    try:
        for raw in ws:
            msgs.append(raw)
            if len(msgs) == 1:
                first_message.set()
                if case == "stall":  # stop reading until the caller's socket buffer is full
                    threading.Event().wait(1.0)  # a server that stalls for 1 s (the thing under test)
            if case == "close" and raw.startswith('{"event":"media"'):
                media += 1
                if media == 5:
                    ws.close(1011, "provider failed")
                    break
    except ConnectionClosed:
        pass
    start = next(parse_event(m) for m in msgs if '"start"' in m)
    received[start.stream_sid] = msgs


counts = {"send": 0, "flush": 0}
_send, _flush, _open = gevent_driver.Stream.send, gevent_driver.Stream.flush, gevent_driver.Stream.open


def counted_send(self, text):  # the call greenlet's blocking path: begin/stop and handed-back frames
    counts["send"] += 1
    return _send(self, text)


def counted_flush(self, tail):
    counts["flush"] += 1
    return _flush(self, tail)


def open_slow_if_asked(self):  # "slow" calls: every frame goes back to the call greenlet (as over TLS)
    _open(self)
    if self.enc.call_sid.startswith("SLOW"):
        self.fast = False


gevent_driver.Stream.send, gevent_driver.Stream.flush, gevent_driver.Stream.open = counted_send, counted_flush, open_slow_if_asked

server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None, max_queue=1 if case == "stall" else 16)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/ingest"

if case == "stall":
    frames = tuple(bytes([i % 256]) * 48_000 for i in range(200))  # ~13 MB of base64: fills the buffers
    specs = [CallSpec(url=url, call_sid="CSTALL", frames=frames, speed=0, wait_final_s=0)]
elif case == "close":
    frames = tuple(bytes([i % 256]) * 576 for i in range(40))
    specs = [CallSpec(url=url, call_sid="CCLOSE", frames=frames, wait_final_s=0)]
else:
    frames = tuple(bytes([i % 256, i // 256]) * 288 for i in range(30))  # 36 ms frames at 8 kHz
    # CFAST2 sends its audio unmarked (--no-watermark): the shared payloads' path
    specs = [CallSpec(url=url, call_sid=sid, frames=frames, wait_final_s=0, watermark=sid != "CFAST2")
             for sid in ("CFAST1", "CFAST2", "SLOW1")]

records = [None] * len(specs)
threads = [threading.Thread(target=lambda i=i: records.__setitem__(i, CallRecord.from_result(run_call(specs[i])))) for i in range(len(specs))]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
server.shutdown()

out = {"counts": counts, "calls": []}
for spec, rec in zip(specs, records):
    msgs = next((m for m in received.values() if parse_event(next(x for x in m if '"start"' in x)).call_sid == spec.call_sid), [])
    start = next((parse_event(m) for m in msgs if '"start"' in m), None)
    media_texts = [m for m in msgs if m.startswith('{"event":"media"')]
    identical = None
    # the audio the call should carry: its frames, LSB-marked with its call id unless unmarked
    expected = Marker(spec.call_sid, robust=spec.robust_mark, sample_rate=spec.sample_rate).mark_frames(spec.frames) if spec.watermark else list(spec.frames)
    if isinstance(start, Start):  # what StreamEncoder (the one codec) would have sent, byte for byte
        enc = StreamEncoder(start.stream_sid, start.call_sid, start.account_sid, start.sample_rate)
        enc.sequence_number = start.sequence_number
        identical = media_texts == [enc.media(pcm) for pcm in expected[: len(media_texts)]]
    out["calls"].append({
        "call_sid": spec.call_sid, "failure": rec.failure, "frames_sent": rec.frames_sent, "streams": rec.streams,
        "closes": rec.closes,
        "audio_bytes_sent": rec.audio_bytes_sent, "lateness_count": rec.lateness.count,
        "late_max_ms": rec.lateness.max_ms, "drift_ms": rec.drift_ms,
        "received_media": len(media_texts), "identical": identical, "watermark": spec.watermark,
        "marked_differs": expected != list(spec.frames),
        "payload_ok": [isinstance(e, Media) and e.payload == expected[i] for i, e in enumerate(map(parse_event, media_texts))].count(False) == 0,
        "last": msgs[-1][:40] if msgs else None,
    })
print(json.dumps(out), flush=True)
