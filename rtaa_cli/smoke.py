"""``rtaa smoke``: the post-deploy check -- health, one replayed call (the asyncio caller ``rtaa replay``
uses, with the same feed rule and latency definition as soak), a final transcript arrived, latency under the limit, no duplicate
provider connection and no 1011 on either side.

The result document has the soak report's shape (``verdict``, ``thresholds`` rows, ``latency_ms``,
``duplicates``, ``closes_1011``), so the JUnit writer and the summary table are shared.
"""
from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from rtaa_cli import robustmark, verdict

from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.errors import RtaaError
from rtaa_cli.feeds.url import parse_feed_map
from rtaa_cli.soak.audioset import call_frames
from rtaa_cli.soak.stats import LATENCY_RESOLUTION_MS, Histogram, provider_counts_from_emulator

HEALTH_TIMEOUT_S = 5.0


@dataclass
class SmokeOptions:
    url: str
    health_url: str | None = None  # None: derived from url (http://host:port/health); "" = skip
    transcripts_url: str | None = None  # None: derived (ws://host:port/v1/transcripts); "" = skip
    provider_stats_url: str | None = None
    audio: str = "fixtures/audio/call.wav"
    length_s: float | None = 12.0
    frame_ms: int = 36
    sample_rate: int = 8000
    speed: float = 1.0
    wait_final_s: float = 10.0
    max_latency_p95_ms: float = 2000.0
    call_prefix: str = "rtaa-smoke-"
    feed_map: str | None = None  # --feed-map: field mapping of a foreign feed schema
    watermark: bool = True  # mark the call's audio (rtaa_cli.watermark)
    robust_mark: bool = robustmark.DEFAULT_ON  # with watermark: also the robust mark (rtaa_cli.robustmark)


def _base(url: str, scheme: str, path: str) -> str:
    p = urlsplit(url)
    return urlunsplit((scheme, p.netloc.rsplit("@", 1)[-1], path, "", ""))


def _one_line(status: int, body: bytes) -> str:
    """A health answer for the table: one line, no markup (an error page's HTML would fill the terminal)."""
    text = " ".join(re.sub(rb"<[^>]*>", b" ", body[:2000]).decode("utf-8", "replace").split())
    text = text if len(text) <= 120 else text[:117] + "..."
    return text if status == 200 else f"HTTP {status}: {text}" if text else f"HTTP {status}"


def derive_urls(url: str) -> tuple[str, str]:
    """``ws://h:p/v1/ingest`` -> (``http://h:p/health``, ``ws://h:p/v1/transcripts``)."""
    p = urlsplit(url)
    if p.scheme not in ("ws", "wss") or not p.hostname:
        raise RtaaError(f"--url must be a ws:// or wss:// URL, got {url!r}")
    http = "https" if p.scheme == "wss" else "http"
    return _base(url, http, "/health"), _base(url, p.scheme, "/v1/transcripts")


def _get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HEALTH_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _row(name: str, passed: bool | None, value: Any, limit: Any, kind: str = "max", detail: str = "",
         reason: str = "", off: bool = False) -> dict[str, Any]:
    return verdict.row(name, value, limit, kind, passed, reason=reason, detail=detail, off=off)


def run_smoke(opts: SmokeOptions) -> dict[str, Any]:
    health_url, feed_url = derive_urls(opts.url)
    health_url = health_url if opts.health_url is None else opts.health_url
    feed_url = feed_url if opts.transcripts_url is None else opts.transcripts_url
    frames = call_frames(opts.audio, opts.sample_rate, opts.frame_ms, opts.length_s)  # RtaaError if unreadable
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"scenario": {"name": "smoke"}, "run": {"target": opts.url, "started": time.time()}}

    # 1. health
    if health_url:
        try:
            status, body = _get(health_url)
            rows.append(_row("health", status == 200, status, 200, "eq", _one_line(status, body)))
        except OSError as exc:
            rows.append(_row("health", False, None, 200, "eq", f"{health_url}: {exc}"))
        doc["health"] = {"url": health_url, "status": rows[-1]["value"]}

    # 2. one call
    call_sid = f"{opts.call_prefix}{uuid.uuid4().hex[:12]}"
    script = CallScript(list(frames), CallOptions(call_sid=call_sid, stream_sid="ST" + uuid.uuid4().hex[:24],
                                                 account_sid="AC_rtaa_smoke", sample_rate=opts.sample_rate,
                                                 frame_ms=opts.frame_ms, custom_parameters={"rtaa": "smoke"},
                                                 watermark=opts.watermark, robust_mark=opts.robust_mark))
    result = asyncio.run(run_call(opts.url, script, speed=opts.speed, transcripts_url=feed_url or None,
                                  wait_final_s=opts.wait_final_s, mapping=parse_feed_map(opts.feed_map)))  # feed URL: rtaa_cli.feeds.url rule
    samples = result.latency
    code = result.close_code
    why = "; ".join(result.errors[:3]) or (result.close_reason or "")
    if not result.connected:
        why = f"{why} at handshake" if why else "no stream could be opened"
    rows.append(_row("call_clean", result.clean, code, "1000/1001", "eq", why))
    rows.append(_row("caller_1011", None if not result.connected else code != 1011,
                     int(code == 1011), 0, detail=result.close_reason or "",
                     reason="no stream was opened (see call_clean)"))
    finals = result.finals()
    if feed_url:
        not_understood = result.feed_messages > 0 and result.feed_unrecognised >= result.feed_messages
        feed_why = (f"{result.feed_messages} feed messages arrived, none understood (a foreign schema): map its "
                    f"fields, see docs/transcript-feed.md") if not_understood else ""
        rows.append(_row("transcript_received", None if not_understood else len(finals) > 0, len(finals), 1, "min",
                         " ".join(t.text for t in finals)[:200] or "no final result arrived on the feed",
                         reason=feed_why))
        h, fp = _histogram(samples.final), _histogram(samples.first_partial)
        p95 = h.percentile(95)
        rows.append(_row("latency_final_p95_ms", None if p95 is None else p95 <= opts.max_latency_p95_ms, p95,
                         opts.max_latency_p95_ms,
                         reason=feed_why or _latency_why(samples)))
        doc["latency_ms"] = {"first_partial": fp.summary(), "final": h.summary()}
    # 3. provider side (the emulator's accounting for this call)
    dup = prov_1011 = None
    provider_why = ("no provider evidence: pass --provider-stats URL (the /stats of the rtaa fake-deepgram the "
                    "target uses), or --provider-stats off when it talks to the real Deepgram")
    provider_off = opts.provider_stats_url == "off"
    if opts.provider_stats_url and not provider_off:
        try:
            status, body = _get(opts.provider_stats_url)
            counts = provider_counts_from_emulator(orjson.loads(body), call_sid)
            dup, prov_1011 = counts.duplicates, counts.closes_1011
            doc["provider"] = {"connections": counts.connections, "audio_bytes": counts.audio_bytes}
            if counts.connections == 0 and result.connected:
                dup = prov_1011 = None
                provider_why = ("the provider saw no connection tagged with this call "
                                f"({call_sid}): make the target tag its connections (docs/soak.md)")
        except (OSError, ValueError) as exc:
            doc["provider_error"] = str(exc)
            provider_why = f"{opts.provider_stats_url} could not be read: {exc}"
    rows.append(_row("duplicates", None if dup is None else dup == 0, dup, 0, reason=provider_why, off=provider_off))
    rows.append(_row("provider_1011", None if prov_1011 is None else prov_1011 == 0, prov_1011, 0,
                     reason=provider_why, off=provider_off))

    doc.update({
        "call": {"call_sid": call_sid, "connected": result.connected, "frames_sent": result.frames_sent,
                 "audio_ms_sent": result.audio_ms_sent, "close": {"code": code, "reason": result.close_reason},
                 "pacing": result.pacing.as_dict() if result.pacing else None, "errors": result.errors[:20],
                 "finals": len(finals), "transcript": " ".join(t.text for t in finals),
                 "feed_messages": result.feed_messages, "feed_unrecognised": result.feed_unrecognised,
                 "gaps": result.gaps, "gap_ms": result.gap_ms},
        "duplicates": dup,
        "closes_1011": {"provider": prov_1011, "caller": int(code == 1011), "rate": None},
        "thresholds": rows,
    })
    doc["verdict"], doc["invalid_reasons"] = verdict.judge(rows, [])
    return doc


def _histogram(values: list[tuple[float, float]]) -> Histogram:
    h = Histogram(LATENCY_RESOLUTION_MS)
    h.extend(ms for _, ms in values)
    return h


def _latency_why(samples) -> str:
    """Why the final latency has no value (one rule with soak's reason lines, docs/soak.md)."""
    if samples.finals and samples.final_audio_end_ms is None:
        return (f"{samples.finals} finals arrived but carry no audio offsets, so their latency cannot be computed: "
                "map audio_end_ms=PATH (or audio_end_s) with --feed-map, see docs/transcript-feed.md")
    return "no final result with text arrived on the call's feed"
