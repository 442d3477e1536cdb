"""`rtaa smoke --url ...`: post-deploy staging check (health, one call, transcript, latency, no duplicates/1011)."""
from __future__ import annotations

from typing import Optional

import typer

from rtaa_cli import robustmark
from rtaa_cli.errors import RtaaError


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def smoke(
        url: str = typer.Option(..., help="Ingest WebSocket URL, e.g. ws://staging:8080/v1/ingest."),
        health: Optional[str] = typer.Option(None, help="Health URL (default: http://HOST:PORT/health of --url; '' skips)."),
        transcripts: Optional[str] = typer.Option(None, help="Transcript feed base (default: ws://HOST:PORT/v1/transcripts; '' skips)."),
        provider_stats: Optional[str] = typer.Option(None, help="Emulator /stats URL: checks duplicates and provider 1011s for the call; 'off' when the target talks to the real Deepgram (else those checks are not measured: INVALID)."),
        audio: str = typer.Option("fixtures/audio/call.wav", help="Audio to replay (any WAV/FLAC, or 'synthetic')."),
        length: Optional[float] = typer.Option(12.0, help="Seconds of the audio to play (0 = all of it)."),
        speed: float = typer.Option(1.0, help="Pacing speed (1 = real time)."),
        wait_final: float = typer.Option(10.0, help="Seconds to wait for the final results after stop."),
        feed_map: Optional[str] = typer.Option(None, "--feed-map", metavar="FIELD=PATH,...", help="Where a foreign feed schema keeps each field, e.g. 'text=text,is_final=type==final' (docs/transcript-feed.md)."),
        max_latency_ms: float = typer.Option(2000.0, help="Limit for the p95 latency of final results (ms)."),
        json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON result here."),
        junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML (one testcase per check)."),
        watermark: bool = typer.Option(True, "--watermark/--no-watermark", help="Mark each call's audio in the samples' least significant bit (inaudible) and with a low-level spread-spectrum mark (-54 dBFS, survives resampling and gain) so the emulator attributes untagged provider connections to their call (docs/soak.md, Watermark)."),
        robust_mark: bool = typer.Option(robustmark.DEFAULT_ON, "--robust-mark/--no-robust-mark", help="With the watermark: also add a low-level spread-spectrum mark (-54 dBFS) that survives resampling and gain, so an emulator attributes connections of a pipeline that changes the audio (docs/soak.md, Robust mark; off by default: it raises the sphinx WER of the fixture)."),
    ) -> None:
        """Smoke-test a deployed pipeline: health, one replayed call, a final transcript, latency under the limit, no duplicate provider connection, no 1011.

        Exit code: 0 every check passed, 1 a check failed, 2 usage error.

        Examples:

          rtaa smoke --url ws://staging:8080/v1/ingest

          rtaa smoke --url ws://staging:8080/v1/ingest --provider-stats http://staging-emu:8765/stats --junit smoke.xml

          rtaa smoke --url wss://user:pass@bot.example.com/v1/ingest --health '' --transcripts wss://bot.example.com/v1/transcripts --json smoke.json
        """
        from rtaa_cli.smoke import SmokeOptions, run_smoke
        from rtaa_cli.soak.report import check_report_paths, write_reports
        from rtaa_cli.soak.scenario import resolve_audio
        from rtaa_cli.soak.summary import print_summary
        from rtaa_cli.verdict import EXIT_CODES

        from rtaa_cli.feeds.url import check_feed_url, parse_feed_map

        if speed < 0 or wait_final < 0:
            raise RtaaError("--speed and --wait-final must be >= 0")
        try:
            if transcripts:
                check_feed_url(transcripts)
            parse_feed_map(feed_map)
        except ValueError as exc:
            raise RtaaError(str(exc)) from None
        opts = SmokeOptions(url=url, health_url=health, transcripts_url=transcripts, provider_stats_url=provider_stats,
                            audio=resolve_audio(audio, None), length_s=(length or None), speed=speed,
                            wait_final_s=wait_final, max_latency_p95_ms=max_latency_ms, feed_map=feed_map,
                            watermark=watermark, robust_mark=robust_mark)
        check_report_paths(json_path, junit)
        doc = run_smoke(opts)
        write_reports(doc, json_path, junit, None, "smoke")
        print_summary(doc, "smoke")
        raise SystemExit(EXIT_CODES[doc["verdict"]])
