"""`rtaa fake-deepgram`: the Deepgram live emulator as a standalone server."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Optional

import orjson
import typer

from rtaa_cli import eventloop
from rtaa_cli.eventloop import running_loop_name
from rtaa_cli.errors import RtaaError


def _parse_range(text: str) -> tuple[float, float]:
    parts = text.replace(":", ",").split(",")
    try:
        values = [float(p) for p in parts if p.strip()]
    except ValueError:
        raise RtaaError(f"--handshake-delay-ms: expected MS or LO,HI in milliseconds, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise RtaaError(f"--handshake-delay-ms: expected LO,HI with 0 <= LO <= HI, got {text!r}")
    return values[0], values[1]


class _StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr, so rich's live view can keep log lines above its table."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


async def _serve(config, as_json: bool, live: bool) -> dict:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from rtaa_cli.emulator import Emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Emulator(config) as emu:
            info = {"url": emu.url, "listen": f"{emu.url}/v1/listen", "http": emu.http_url,
                    "stats": f"{emu.http_url}/stats", "metrics": f"{emu.http_url}/metrics",
                    "control": f"{emu.http_url}/control/faults", "engine": config.engine,
                    "loop": running_loop_name()}
            if as_json:
                sys.stdout.write(orjson.dumps({"event": "listening", **info}).decode() + "\n")
                sys.stdout.flush()
            else:
                console = Console()
                console.print(f"[bold]fake-deepgram[/] listening on [cyan]{emu.url}/v1/listen[/] "
                              f"(stats {emu.http_url}/stats, metrics {emu.http_url}/metrics). Ctrl-C to stop.")
            if live and not as_json:
                def table() -> Table:
                    t = emu.stats()["totals"]
                    tbl = Table("open", "connections", "duplicates", "1011", "dropped", "429", "audio s", "results")
                    tbl.add_row(*(str(x) for x in (t["open"], t["connections"], t["duplicates"], t["closes_1011"],
                                                   t["dropped"], t["rejected_429"], round(t["audio_seconds"], 1),
                                                   t["results_sent"])))
                    return tbl

                with Live(table(), console=console, refresh_per_second=2) as view:
                    while not stop.is_set():
                        try:
                            await asyncio.wait_for(stop.wait(), timeout=0.5)
                        except TimeoutError:
                            view.update(table())
            else:
                await stop.wait()
            return emu.stats()["totals"]
    except OSError as exc:  # the environment refused the address: exit 2, as `rtaa serve`
        raise RtaaError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


def register(app: typer.Typer) -> None:
    @app.command("fake-deepgram")
    def fake_deepgram(
        host: str = typer.Option("127.0.0.1", help="Address to bind."),
        port: int = typer.Option(8765, help="Port to bind (0 = any free port)."),
        api_key: Optional[str] = typer.Option(
            None, envvar="DEEPGRAM_API_KEY", show_envvar=True,
            help="Accept only this key (Token/Bearer/subprotocol). Unset: any key, but one is required."),
        max_concurrent: Optional[int] = typer.Option(None, min=1, help="Open streams beyond this get HTTP 429."),
        idle_timeout: float = typer.Option(10.0, min=0.05, help="Seconds without audio/text before 1011 NET-0001."),
        engine: str = typer.Option("segmenter", help="segmenter (fast placeholder words) or sphinx (real words)."),
        handshake_delay_ms: str = typer.Option("0", help="Handshake delay in ms: MS or LO,HI (uniform)."),
        result_latency_ms: float = typer.Option(0.0, min=0, help="Extra latency of every result, ms."),
        result_jitter_ms: float = typer.Option(0.0, min=0, help="Uniform 0..J ms added to the latency."),
        drop_after_s: Optional[float] = typer.Option(None, min=0, help="Drop each TCP connection after S s (no close frame)."),
        close_1011_after_s: Optional[float] = typer.Option(None, min=0, help="Close each stream with 1011 after S s."),
        refuse_429_fraction: float = typer.Option(0.0, min=0, max=1, help="Fraction of handshakes refused with 429."),
        seed: Optional[int] = typer.Option(None, help="Seed for jitter, delays and 429 draws (reproducible runs)."),
        max_closed_records: int = typer.Option(10000, min=0, help="Closed connection records kept for /stats."),
        text_mark: bool = typer.Option(True, help="Segmenter engine: start each result's text with five mark words naming its connection and audio end (rtaa matches text on any feed to the result; docs/emulator.md)."),
        as_json: bool = typer.Option(False, "--json", help="Machine output: a JSON 'listening' line, JSON logs, JSON totals."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-connection log lines."),
        live: bool = typer.Option(True, help="Live totals table (on a terminal)."),
        loop: str = typer.Option("auto", help="Event loop: auto (uvloop where installed, else asyncio's) | uvloop | asyncio."),
        print_env: Optional[str] = typer.Option(
            None, "--print-env", metavar="node|python",
            help="Print shell lines that point a Node or Python process whose Deepgram URL is hardcoded "
                 "(wss://api.deepgram.com) at this emulator's --host/--port, then exit: eval \"$(...)\"."),
    ) -> None:
        """Run a local Deepgram live endpoint (/v1/listen) with /stats, /metrics and fault control.

        Point any Deepgram client at ws://HOST:PORT (the SDK's DeepgramClientEnvironment, or a base URL). Connections are counted per interaction (tag=, else extra=interaction_id:) so duplicates are visible. See docs/emulator.md.

        Examples:

          rtaa fake-deepgram --port 8765

          DEEPGRAM_API_KEY=k rtaa fake-deepgram --max-concurrent 100 --idle-timeout 10

          rtaa fake-deepgram --result-latency-ms 300 --result-jitter-ms 50 --handshake-delay-ms 150,300

          rtaa fake-deepgram --engine sphinx --port 0 --json

          curl -X POST 'http://127.0.0.1:8765/control/faults?close_1011_after_s=5'

          eval "$(rtaa fake-deepgram --print-env node --port 8765)" && node your-pipeline.js
        """
        from rtaa_cli.emulator import ENGINES, EmulatorConfig
        from rtaa_cli.emulator.config import FAULT_FIELDS, validate_faults

        if not 0 <= port <= 65535:
            raise RtaaError(f"--port must be 0-65535, not {port}")
        if print_env is not None:
            from rtaa_cli.redirect import RUNTIMES, emulator_ws_url
            from rtaa_cli.redirect import print_env as env_lines

            if print_env not in RUNTIMES:
                raise RtaaError(f"--print-env: use one of {', '.join(RUNTIMES)}, not {print_env!r}")
            if port == 0:
                raise RtaaError("--print-env needs the emulator's real --port (0 picks a random one)")
            typer.echo(env_lines(print_env, emulator_ws_url(host, port)))
            return

        eventloop.loop_factory(loop)  # a bad or missing --loop: one line before anything listens
        if engine not in ENGINES:
            raise RtaaError(f"--engine: unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
        config = EmulatorConfig(
            host=host, port=port, api_key=api_key or None, max_concurrent=max_concurrent,
            idle_timeout_s=idle_timeout, engine=engine, handshake_delay_ms=_parse_range(handshake_delay_ms),
            result_latency_ms=result_latency_ms, result_jitter_ms=result_jitter_ms, drop_after_s=drop_after_s,
            close_1011_after_s=close_1011_after_s, refuse_429_fraction=refuse_429_fraction, seed=seed,
            max_closed_records=max_closed_records, text_mark=text_mark,
        )
        try:
            validate_faults({name: getattr(config, name) for name in FAULT_FIELDS})
        except ValueError as exc:  # e.g. --result-latency-ms inf
            raise RtaaError(f"--{str(exc).replace('_', '-')}") from None
        if not quiet:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.getLogger("rtaa.emulator")
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        totals = eventloop.run(_serve(config, as_json, live and sys.stdout.isatty() and not os.environ.get("CI")), loop)
        if as_json:
            sys.stdout.write(orjson.dumps({"event": "stopped", "totals": totals}).decode() + "\n")
        else:
            typer.echo(f"stopped: {totals['connections']} connections, {totals['duplicates']} duplicates, "
                       f"{totals['closes_1011']} closes 1011, {totals['dropped']} dropped")
