"""`rtaa replay FILE`: a virtual Exotel caller streaming an audio file (docs/replay.md)."""
from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rtaa_cli import robustmark
from rtaa_cli.audio import DEFAULT_FRAME_MS, frame_bytes, load_audio
from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.recorder import CallResult
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.feeds.recorder import Transcript
from rtaa_cli.latency import latency_summary
from rtaa_cli.protocols.closecodes import describe
from rtaa_cli.embedded import PROVIDERS, EmbeddedTarget, embedded_pipeline
from rtaa_cli.errors import RtaaError
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.url import check_feed_url, parse_feed_map, redact_url
from rtaa_cli.protocols.exotel import SAMPLE_RATES
from rtaa_cli.wer import wer

PROVIDER_NOTES = {
    "fake": "Deepgram emulator with pocketsphinx, through deepgram-sdk",
    "sphinx": "pocketsphinx in the pipeline, finals only",
    "deepgram": "Deepgram, DEEPGRAM_API_KEY",
}
WAIT_FINAL_S = 10.0
EMBEDDED_WAIT_FINAL_S = 30.0  # ends at call_ended; offline decoding on a busy 2-core machine trails by 5-15 s
LOG_TAIL_LINES = 20  # of the embedded pipeline's stderr, shown when the replay failed
DTMF_DIGITS = frozenset("0123456789*#ABCD")
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus"})
_STDOUT = "-"


class _OptionalJsonValue(typer.core.TyperCommand):
    """Lets ``--json`` take an optional value: ``--json`` alone (or before another option) = stdout."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                fixed.extend(args[i:])
                break
            fixed.append(arg)
            if arg == "--json":
                following = args[i + 1] if i + 1 < len(args) else None
                if following is None or (following.startswith("-") and following != _STDOUT):
                    fixed.append(_STDOUT)
        return super().parse_args(ctx, fixed)


def _pairs(values: list[str], sep: str, what: str, example: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        left, found, right = value.partition(sep)
        if not found or not left.strip():
            raise RtaaError(f"{what} {value!r}: expected {example}")
        out.append((left.strip(), right.strip()))
    return out


def _seconds(text: str, what: str, value: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise RtaaError(f"{what} {value!r}: {text!r} is not a number of seconds") from None
    if not 0 <= seconds < 1e6:
        raise RtaaError(f"{what} {value!r}: seconds must be >= 0")
    return seconds


def parse_dtmf(values: list[str]) -> list[tuple[str, float]]:
    out = []
    for (digit, at), raw in zip(_pairs(values, "@", "--dtmf", "DIGIT@SECONDS, e.g. 5@3.5"), values):
        if digit not in DTMF_DIGITS:
            raise RtaaError(f"--dtmf {raw!r}: {digit!r} is not a DTMF key (0-9, *, #, A-D)")
        out.append((digit, _seconds(at, "--dtmf", raw)))
    return out


def parse_holds(values: list[str]) -> list[tuple[float, float]]:
    return [(_seconds(d, "--hold", raw), _seconds(at, "--hold", raw))
            for (d, at), raw in zip(_pairs(values, "@", "--hold", "SECONDS@OFFSET, e.g. 15@4"), values)]


def parse_headers(values: list[str]) -> list[tuple[str, str]]:
    headers = _pairs(values, ":", "--header", '"Name: value"')
    for name, _ in headers:
        if any(c in name for c in " \t\r\n"):
            raise RtaaError(f"--header {name!r}: header names cannot contain spaces")
    return headers


def parse_custom(values: list[str]) -> dict[str, str]:
    return dict(_pairs(values, "=", "--custom", "KEY=VALUE"))


def register(app: typer.Typer) -> None:
    @app.command(cls=_OptionalJsonValue)
    def replay(
        file: Path = typer.Argument(..., help="Audio file (WAV, FLAC, OGG; any rate, channels, sample format)."),
        url: Optional[str] = typer.Option(None, "--url", help="Exotel ingest WebSocket URL (ws://user:pass@host/path). Default: the embedded pipeline."),
        frame_ms: int = typer.Option(DEFAULT_FRAME_MS, "--frame-ms", help="Media frame duration in ms (Exotel: 20-100)."),
        sample_rate: int = typer.Option(8000, "--sample-rate", help="Stream sample rate: 8000, 16000 or 24000."),
        call_sid: Optional[str] = typer.Option(None, "--call-sid", help="Call SID (random by default)."),
        stream_sid: Optional[str] = typer.Option(None, "--stream-sid", help="Stream SID (random by default)."),
        account_sid: str = typer.Option("rtaa-replay", "--account-sid", help="Account SID."),
        from_: str = typer.Option("+910000000001", "--from", help="Caller number."),
        to: str = typer.Option("+910000000002", "--to", help="Called number."),
        custom: list[str] = typer.Option([], "--custom", metavar="KEY=VALUE", help="Custom parameter in start (repeatable)."),
        header: list[str] = typer.Option([], "--header", metavar='"NAME: VALUE"', help="Extra handshake header (repeatable)."),
        dtmf: list[str] = typer.Option([], "--dtmf", metavar="DIGIT@SECONDS", help="Send a DTMF key at this audio offset (repeatable)."),
        hold: list[str] = typer.Option([], "--hold", metavar="SECONDS@OFFSET", help="Pause media for SECONDS at audio OFFSET (repeatable)."),
        speed: float = typer.Option(1.0, "--speed", help="Pacing: 1.0 = real time, 2 = twice as fast, 0 = as fast as possible."),
        transcripts: Optional[str] = typer.Option(None, "--transcripts", metavar="URL", help="Transcript feed to subscribe to: ws://host:port, a full feed URL, redis://HOST:PORT/DB?stream=KEY, or http(s)://... (server-sent events, or JSON polled every 0.2 s), or webhook://HOST:PORT/PATH (rtaa listens, the target POSTs; see docs/transcript-feed.md)."),
        feed_map: Optional[str] = typer.Option(None, "--feed-map", metavar="FIELD=PATH,...", help="Where a foreign feed schema keeps each field, e.g. 'text=text,is_final=type==final,seq=seq' (docs/transcript-feed.md)."),
        wait_final: Optional[float] = typer.Option(None, "--wait-final", metavar="SECONDS", help="After stop, wait this long at most for the call's final transcripts (default 10; 30 for the embedded pipeline, whose pocketsphinx can trail real time)."),
        json_out: Optional[str] = typer.Option(None, "--json", metavar="[FILE]", help="Write the result as JSON to FILE, or to stdout (then stdout has JSON only)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, transcript lines or summary."),
        watermark: bool = typer.Option(False, "--watermark/--no-watermark", help="Mark the call's audio in the samples' least significant bit (inaudible) and with a low-level spread-spectrum mark (-54 dBFS), as soak and smoke do by default, so an emulator attributes the provider connection without a tag (docs/soak.md, Watermark)."),
        robust_mark: bool = typer.Option(robustmark.DEFAULT_ON, "--robust-mark/--no-robust-mark", help="With the watermark: also add a low-level spread-spectrum mark (-54 dBFS) that survives resampling and gain, so an emulator attributes connections of a pipeline that changes the audio (docs/soak.md, Robust mark; off by default: it raises the sphinx WER of the fixture)."),
        provider: str = typer.Option("fake", "--provider", help="Embedded pipeline's provider when no --url: fake (offline Deepgram emulator with pocketsphinx), sphinx or deepgram (DEEPGRAM_API_KEY)."),
    ) -> None:
        """Replay an audio file as an Exotel call: connected, start, paced media, dtmf, stop.

        Prints transcripts with their latency as they arrive and a summary at the end. Without --url it starts the embedded pipeline (rtaa serve, provider fake: offline, real words) in a child process. When FILE has a transcript next to it (call.wav -> call.txt) the summary reports the word error rate of the finals.

        Exit code: 0 after a clean close (1000/1001 after stop), 1 on an abnormal close or a connection failure, 2 for bad options or an unreadable file.

        Examples:

          rtaa replay fixtures/audio/call.wav

          DEEPGRAM_API_KEY=... rtaa replay fixtures/audio/call.wav --provider deepgram

          rtaa replay fixtures/audio/call.wav --url ws://127.0.0.1:8080/exotel

          rtaa replay call.flac --url wss://user:secret@ingest.example.com/media --sample-rate 16000 --frame-ms 100

          rtaa replay call.wav --url ws://localhost:8080/exotel --transcripts ws://localhost:8080 --json result.json

          rtaa replay call.wav --url ws://localhost:8080/exotel --dtmf 5@3.5 --hold 15@4 --custom agent=42 --header "X-Env: staging"

          rtaa replay call.wav --url ws://localhost:8080/exotel --speed 0 --quiet --json
        """
        if sample_rate not in SAMPLE_RATES:
            raise RtaaError(f"--sample-rate {sample_rate}: use one of {', '.join(map(str, SAMPLE_RATES))}")
        frame_bytes(sample_rate, frame_ms)  # validates
        if speed < 0:
            raise RtaaError("--speed must be >= 0 (0 = as fast as possible)")
        if wait_final is None:
            wait_final = WAIT_FINAL_S if url is not None else EMBEDDED_WAIT_FINAL_S
        if wait_final < 0:
            raise RtaaError("--wait-final must be >= 0")
        if provider not in PROVIDERS:
            raise RtaaError(f"--provider {provider!r}: use one of {', '.join(PROVIDERS)}")
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise RtaaError(f"--url {redact_url(url)!r}: must start with ws:// or wss://")
        try:
            if transcripts is not None:
                check_feed_url(transcripts)
            mapping = parse_feed_map(feed_map)
        except ValueError as exc:
            raise RtaaError(str(exc)) from None
        options = CallOptions(
            call_sid=call_sid or "CA" + uuid.uuid4().hex,
            stream_sid=stream_sid or "ST" + uuid.uuid4().hex,
            account_sid=account_sid, from_=from_, to=to, custom_parameters=parse_custom(custom),
            sample_rate=sample_rate, frame_ms=frame_ms, dtmf=parse_dtmf(dtmf), holds=parse_holds(hold),
            watermark=watermark, robust_mark=robust_mark,
        )
        headers = parse_headers(header)
        if json_out not in (None, _STDOUT) and Path(json_out).suffix.lower() in AUDIO_SUFFIXES:
            raise RtaaError(f"--json {json_out}: refusing to write JSON over an audio file (put --json after FILE)")
        audio = load_audio(file, sample_rate)
        script = CallScript.from_pcm(audio.pcm, options)

        reference = sidecar_transcript(file)

        json_to_stdout = json_out == _STDOUT
        console = Console(stderr=json_to_stdout, highlight=False, soft_wrap=True)
        view = _LiveView(console, script, quiet)
        result, embedded = asyncio.run(_replay(url, transcripts, provider, script, speed, headers, wait_final, view,
                                               mapping))
        accuracy = _wer_report(result, reference)

        if not quiet and result.connected:
            _print_summary(console, result, str(file), accuracy)
        if embedded is not None:
            _report_embedded_failure(result, embedded)
        if json_out is not None:
            data = _json_report(result, file, script, speed, accuracy, embedded)
            if json_to_stdout:
                sys.stdout.write(data.decode() + "\n")
                sys.stdout.flush()
            else:
                try:
                    Path(json_out).write_bytes(data + b"\n")
                except OSError as exc:
                    raise RtaaError(f"cannot write {json_out}: {exc.strerror or exc}") from None
        if not result.connected:
            raise RtaaError(result.errors[0] if result.errors else "connection failed", exit_code=1)
        if not result.clean:
            raise RtaaError(_failure_line(result), exit_code=1)


def sidecar_transcript(file: Path) -> Path | None:
    """The reference transcript next to an audio file: ``call.wav`` -> ``call.txt`` (or ``call.wav.txt``)."""
    for candidate in (file.with_suffix(".txt"), file.with_name(file.name + ".txt")):
        if candidate != file and candidate.is_file():
            return candidate
    return None


async def _replay(url: str | None, transcripts: str | None, provider: str, script: CallScript, speed: float,
                  headers: list[tuple[str, str]], wait_final: float,
                  view: _LiveView, mapping: FieldMapping | None = None) -> tuple[CallResult, EmbeddedTarget | None]:
    if url is not None:
        with view:
            return await run_call(url, script, speed=speed, headers=headers, transcripts_url=transcripts,
                                  wait_final_s=wait_final, on_progress=view.progress,
                                  on_transcript=view.transcript, mapping=mapping), None
    view.note(f"starting the embedded pipeline (provider {provider}: {PROVIDER_NOTES[provider]}) ...")
    async with embedded_pipeline(provider, script.options.sample_rate) as target:
        view.note(f"embedded pipeline listening on {target.url}")
        with view:
            result = await run_call(target.url, script, speed=speed, headers=headers,
                                    transcripts_url=transcripts or target.transcripts_url, wait_final_s=wait_final,
                                    on_progress=view.progress, on_transcript=view.transcript, mapping=mapping)
    return result, target


def _wer_report(result: CallResult, reference: Path | None) -> dict[str, Any] | None:
    """WER of the finals against the sidecar transcript (rtaa_cli/wer.py); None without feed or sidecar."""
    if reference is None or result.feed_url is None:
        return None
    try:
        text = reference.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {"reference": str(reference), "value": None, "error": f"cannot read: {getattr(exc, 'strerror', None) or exc}"}
    r = wer(text, " ".join(t.text for t in result.finals() if t.text))
    return {"reference": str(reference), "value": round(r.value, 4), "errors": r.errors,
            "reference_words": r.reference_words, "hypothesis_words": r.hypothesis_words}


def _report_embedded_failure(result: CallResult, target: EmbeddedTarget) -> None:
    """The embedded pipeline's captured stderr, only when something went wrong (never during the progress bar)."""
    tail = [line for line in list(target.log)[-LOG_TAIL_LINES:] if line.strip()]
    if target.exit_code == 0 and (result.clean or not tail):
        return
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[yellow]embedded pipeline (provider {target.provider}) exited with code {target.exit_code}"
              + (f"; its last {len(tail)} log lines:" if tail else "; it logged nothing") + "[/]")
    for line in tail:
        err.print(Text(line, style="dim"))


class _LiveView:
    """Progress bar (audio seconds, frames, lateness) and transcript lines while streaming.

    On a terminal, finals are printed as they arrive and the latest partial is shown under the progress
    bar, replaced by the next one (a call has ~5x more partials than finals); elsewhere (a pipe, a log
    file) every partial is printed as its own line.
    """

    def __init__(self, console: Console, script: CallScript, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.total_s = script.audio_ms / 1000.0
        self.frames_total = len(script.frames)
        self._progress: Progress | None = None
        self._live: Live | None = None
        self._partial = Text("", style="dim", overflow="ellipsis", no_wrap=True)
        self._task: Any = None
        self._worst_ms = 0.0

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{text}[/]", highlight=False)

    def __enter__(self) -> _LiveView:
        if not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]streaming"), BarColumn(),
                TextColumn("{task.completed:6.1f}/{task.total:.1f} s audio"),
                TextColumn("frames {task.fields[frames]}/" + str(self.frames_total)),
                TextColumn("late {task.fields[late]:5.1f} ms (max {task.fields[worst]:.1f})"),
                TimeElapsedColumn(), console=self.console)
            self._task = self._progress.add_task("stream", total=self.total_s, frames=0, late=0.0, worst=0.0)
            self._live = Live(Group(self._progress, self._partial), console=self.console, transient=True,
                              refresh_per_second=10)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def progress(self, result: CallResult, late_s: float) -> None:
        if self._progress is None:
            return
        late_ms = late_s * 1000.0
        self._worst_ms = max(self._worst_ms, late_ms)
        self._progress.update(self._task, completed=result.audio_ms_sent / 1000.0, frames=result.frames_sent,
                              late=late_ms, worst=self._worst_ms)

    def transcript(self, t: Transcript) -> None:
        if self.quiet:
            return
        span = (f"{(t.audio_start_ms or 0) / 1000:7.2f}-{t.audio_end_ms / 1000:7.2f} s"
                if t.audio_end_ms is not None else " " * 17 + " s")
        latency = f"{t.latency_ms:6.0f} ms" if t.latency_ms is not None else "     ? ms"
        if not t.is_final and self._live is not None and self.console.is_terminal:
            self._partial.plain = f"{span}  partial {latency}  {t.text}"
            return
        kind = "[green]final  [/]" if t.is_final else "[dim]partial[/]"
        line = Text.from_markup(f"{span}  {kind} {latency}  ")
        line.append(t.text)  # provider text is not markup
        self.console.print(line, highlight=False)
        if t.is_final:
            self._partial.plain = ""


def _failure_line(result: CallResult) -> str:
    if result.close_code is None:
        return "the stream ended without a close frame"
    who = {"server": "server", "caller": "caller"}.get(result.closed_by or "", "connection")
    when = "after stop" if result.stop_sent else f"mid-stream after {result.frames_sent}/{result.frames_total} frames"
    reason = f" {result.close_reason!r}" if result.close_reason else ""
    return f"{who} closed the stream {when} with {describe(result.close_code)}{reason}"


def _json_report(result: CallResult, file: Path, script: CallScript, speed: float,
                 accuracy: dict[str, Any] | None, embedded: EmbeddedTarget | None) -> bytes:
    data = result.to_dict()
    data.update(
        file=str(file), sample_rate=script.options.sample_rate, frame_ms=script.options.frame_ms,
        frame_bytes=frame_bytes(script.options.sample_rate, script.options.frame_ms), speed=speed,
        wer=accuracy,
        embedded=None if embedded is None else {
            "provider": embedded.provider, "exit_code": embedded.exit_code,
            "log_tail": list(embedded.log)[-LOG_TAIL_LINES:]},
    )
    return orjson.dumps(data, option=orjson.OPT_INDENT_2)


def transcripts_line(result: CallResult) -> str:
    """The summary's transcripts row: results, finals (with text) and their latency, or why none."""
    samples = result.latency
    line = f"{samples.results} results ({samples.finals} final)"
    lat = latency_summary(samples)["final"]
    if lat["count"]:
        line += f", final latency p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms"
    elif samples.finals:
        line += ", final latency not measured (the feed carries no audio offsets)"
    if result.feed_unrecognised:
        line += f"; {result.feed_unrecognised} of {result.feed_messages} feed messages not understood"
    if result.repeated_finals:
        line += f"; {result.repeated_finals} finals arrived more than once"
    if result.gaps:
        line += f"; the pipeline reported {result.gaps} gap(s), {result.gap_ms:.0f} ms of audio not transcribed"
    return line


def _print_summary(console: Console, result: CallResult, file: str, accuracy: dict[str, Any] | None) -> None:
    table = Table(title=f"replay {file}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("call / stream", f"{result.call_sid} / {result.stream_sid}")
    table.add_row("sent", f"{result.frames_sent}/{result.frames_total} frames, {result.audio_ms_sent / 1000:.2f} s audio, "
                          f"{result.bytes_sent} bytes (last frame padded with {result.padding_bytes} B)")
    extras = []
    if result.dtmf_sent:
        extras.append(f"{result.dtmf_sent} dtmf")
    if result.holds_done:
        extras.append(f"{result.holds_done} holds")
    if extras:
        table.add_row("events", ", ".join(extras))
    table.add_row("duration", f"{result.duration_s:.2f} s")
    if result.pacing is not None and result.pacing.frames:
        p = result.pacing
        table.add_row("pacing", f"late p50 {p.late_p50_ms:.2f} ms, p99 {p.late_p99_ms:.2f} ms, "
                                f"max {p.late_max_ms:.2f} ms, drift {p.drift_ms:.2f} ms")
    close = describe(result.close_code)
    if result.close_reason:
        close += f" {result.close_reason!r}"
    if result.closed_by:
        close += f" (by {result.closed_by})"
    table.add_row("close", f"[{'green' if result.clean else 'red'}]{close}[/]")
    if result.server_message_counts:
        table.add_row("server sent", ", ".join(f"{n} {k}" for k, n in sorted(result.server_message_counts.items())))
    if result.feed_url is not None:
        table.add_row("transcripts", transcripts_line(result))
        text = " ".join(t.text for t in result.finals() if t.text)
        if text:
            table.add_row("text", Text(text))
    if accuracy is not None:
        if accuracy["value"] is None:
            table.add_row("wer", f"[yellow]{accuracy['reference']}: {accuracy['error']}[/]")
        else:
            table.add_row("wer", f"{accuracy['value']:.3f} ({accuracy['errors']} word errors / "
                                 f"{accuracy['reference_words']} words of {accuracy['reference']})")
    for error in result.errors[:5]:
        table.add_row("[red]error[/]", error)
    console.print(table)
