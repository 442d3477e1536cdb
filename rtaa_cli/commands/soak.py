"""`rtaa soak SCENARIO`: Locust-driven soak of a pipeline, with a verdict and reports."""
from __future__ import annotations

from typing import List, Optional

import typer

from rtaa_cli import robustmark
from rtaa_cli.errors import RtaaError


def _headers(values: list[str]) -> dict[str, str]:
    out = {}
    for h in values:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise RtaaError(f"--header: expected 'Name: value', got {h!r}")
        out[name.strip()] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def soak(
        scenario: Optional[str] = typer.Argument(None, help="Scenario TOML (or a name in scenarios/, e.g. steady)."),
        users: Optional[int] = typer.Option(None, help="Concurrent virtual callers (overrides the file)."),
        spawn_rate: Optional[float] = typer.Option(None, help="Callers started per second (overrides the file)."),
        duration: Optional[str] = typer.Option(None, help="How long new calls start: 30s, 2m, 1h (overrides the file)."),
        processes: Optional[int] = typer.Option(None, help="Locust processes on this host (master + N workers)."),
        target: Optional[str] = typer.Option(None, help="Ingest URL ws://host/v1/ingest; default: start a local rtaa serve + emulator."),
        transcripts: Optional[str] = typer.Option(None, help="Transcript feed (with --target): ws://host:port or ws://host/v1/transcripts mean the per-call feed /v1/transcripts/CALL_SID; also redis://HOST:PORT/DB?stream=KEY, http(s)://... (SSE or polled JSON) and webhook://HOST:PORT/PATH (rtaa listens; {call_sid} for a feed per call); see docs/transcript-feed.md."),
        feed_map: Optional[str] = typer.Option(None, "--feed-map", metavar="FIELD=PATH,...", help="Where a foreign feed schema keeps each field, e.g. 'text=text,is_final=type==final' (overrides the scenario's [feed] map; docs/transcript-feed.md)."),
        metrics: Optional[str] = typer.Option(None, help="Target's Prometheus /metrics: its resident memory over the run, and provider 1011s (and duplicates, if it counts them) without --provider-stats."),
        provider_stats: Optional[str] = typer.Option(None, help="Emulator /stats URL: duplicates, provider 1011s, audio loss."),
        provider_control: Optional[str] = typer.Option(None, help="Emulator /control/faults URL: apply the scenario's faults."),
        threshold: List[str] = typer.Option([], "--threshold", "-t", help="NAME=VALUE (NAME=off disables) or an expression like 'latency.final.p99<1500', 'closes_1011.rate<=1%'; repeatable (docs/soak.md)."),
        header: List[str] = typer.Option([], "--header", help="Extra ingest handshake header 'Name: value'; repeatable."),
        json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here."),
        junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML (one testcase per threshold)."),
        html: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML report with plots."),
        csv_prefix: Optional[str] = typer.Option(None, "--csv", metavar="PREFIX", help="Write PREFIX_calls.csv (one row per call, as calls finish) and PREFIX_timeline.csv (one row per interval), like Locust's --csv."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table or progress lines; just the summary."),
        watch_after: str = typer.Option("3s", help="With provider stats: watch the provider this long after the last call (leaked streams, reconnect loops)."),
        master: bool = typer.Option(False, "--master", help="Distributed: be the master and wait for --expect-workers."),
        expect_workers: int = typer.Option(1, help="With --master: workers (on any host) to wait for."),
        master_bind: str = typer.Option("127.0.0.1", help="With --master: address to listen on for workers."),
        master_port: int = typer.Option(5557, help="With --master/--worker: the master's port (--master: 0 = any free port, printed)."),
        worker: bool = typer.Option(False, "--worker", help="Distributed: be a Locust worker of --master-host."),
        master_host: str = typer.Option("127.0.0.1", help="With --worker: the master's address."),
        metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="Serve this run's own figures in Prometheus text at http://HOST:PORT/metrics while it runs (0: any free port, printed): calls, latency histograms, 1011s, duplicates, pacing (docs/soak.md)."),
        metrics_host: str = typer.Option("127.0.0.1", help="With --metrics-port: the address to listen on."),
        web: bool = typer.Option(False, "--web", help="Serve a live page of the run on any free port (printed); the same as --web-port 0."),
        web_port: Optional[int] = typer.Option(None, min=0, max=65535, help="Serve a live page of the run at http://HOST:PORT/ (0: any free port, printed): active, completed and failed calls, duplicates, 1011s, latency p50/p95 over time, failing calls, and the verdict at the end (docs/soak.md, Live page)."),
        web_host: str = typer.Option("127.0.0.1", help="With --web/--web-port: the address to listen on."),
        watermark: bool = typer.Option(True, "--watermark/--no-watermark", help="Mark each call's audio in the samples' least significant bit (inaudible) and with a low-level spread-spectrum mark (-54 dBFS, survives resampling and gain) so the emulator attributes untagged provider connections to their call (docs/soak.md, Watermark)."),
        robust_mark: bool = typer.Option(robustmark.DEFAULT_ON, "--robust-mark/--no-robust-mark", help="With the watermark: also add a low-level spread-spectrum mark (-54 dBFS) that survives resampling and gain, so an emulator attributes connections of a pipeline that changes the audio (docs/soak.md, Robust mark; off by default: it raises the sphinx WER of the fixture)."),
    ) -> None:
        """Soak-test a pipeline with Locust: paced virtual callers, a live table, then a verdict and reports.

        Without --target the soak starts a local pipeline (rtaa serve + a Deepgram emulator with Deepgram-like timing) and stops it at the end. Thresholds default to the incident reviews' rollback triggers (docs/incidents.md): duplicates > 0, 1011 rate > 5 %, final p95 > 2 s, delivery < 80 % (plus audio loss > 1 %). Exit code: 0 pass, 1 a threshold was breached, 2 invalid run (a threshold in effect could not be measured, or the load generator was the bottleneck: each reason is printed) or usage error, 3 internal error. See docs/soak.md.

        Examples:

          rtaa soak scenarios/steady.toml

          rtaa soak burst --users 200 --spawn-rate 200 --duration 2m --json out.json --html out.html

          rtaa soak scenarios/steady.toml --target ws://staging:8080/v1/ingest \\
              --transcripts ws://staging:8080/v1/transcripts --provider-stats http://emu:8765/stats

          rtaa soak steady --processes 4 --users 1000 --duration 1h --junit soak.xml

          rtaa soak memory --duration 2h --html memory.html    (the target's RSS growth over time)

          rtaa soak steady --duration 1h --metrics-port 9646    (watch it in Grafana: http://127.0.0.1:9646/metrics)

          rtaa soak steady --duration 10m --web-port 8089    (watch it live: http://127.0.0.1:8089/)

          rtaa soak steady --master --expect-workers 3 --master-bind 0.0.0.0

          rtaa soak --worker --master-host 10.0.0.5    (on each load host)
        """
        if worker:
            from rtaa_cli.soak.session import worker_main  # imports Locust (gevent patching): only here

            worker_main(master_host, master_port)
            return
        if scenario is None:
            raise RtaaError("a scenario file is required (e.g. scenarios/steady.toml)")
        from rtaa_cli.soak.scenario import load_scenario, parse_duration
        from rtaa_cli.soak.stats import parse_threshold_override

        sc = load_scenario(scenario).with_overrides(users=users, spawn_rate=spawn_rate, duration=duration,
                                                   processes=processes)
        overrides = {}
        for t in threshold:
            try:
                name, value = parse_threshold_override(t)
            except ValueError as exc:
                raise RtaaError(str(exc)) from None
            overrides[name] = value
        if feed_map is not None:
            from rtaa_cli.feeds.url import parse_feed_map

            try:
                parse_feed_map(feed_map)
            except ValueError as exc:
                raise RtaaError(str(exc)) from None
            sc.feed_map = feed_map
        if transcripts is not None:
            from rtaa_cli.feeds.url import check_feed_url

            try:
                check_feed_url(transcripts)
            except ValueError as exc:
                raise RtaaError(str(exc)) from None
        if (transcripts or provider_stats or metrics or provider_control) and not target:
            raise RtaaError("--transcripts/--metrics/--provider-stats/--provider-control need --target")
        from rtaa_cli.soak import runner  # imports Locust (gevent patching): only when a soak runs
        from rtaa_cli.soak.summary import print_summary
        from rtaa_cli.soak.target import Target

        tgt = None
        if target:
            tgt = Target(url=target, transcripts_url=transcripts, metrics_url=metrics,
                         provider_stats_url=provider_stats, provider_control_url=provider_control,
                         exclusive_provider=provider_control is not None, description="--target")
        opts = runner.SoakOptions(
            scenario=sc, target=tgt, thresholds=overrides, json_path=json_path, junit_path=junit, html_path=html,
            csv_prefix=csv_prefix,
            live=not quiet, quiet=quiet, headers=_headers(header),
            expect_workers=(expect_workers if master else (sc.processes if sc.processes > 1 else 0)),
            spawn_local_workers=not master, master_bind_host=master_bind if master else "127.0.0.1",
            master_port=master_port if master else 0, watch_after_s=parse_duration(watch_after),
            watermark=watermark, robust_mark=robust_mark, metrics_port=metrics_port, metrics_host=metrics_host,
            web_port=web_port if web_port is not None else (0 if web else None), web_host=web_host,
        )
        code, doc = runner.run_soak(opts)
        print_summary(doc, "soak")
        raise SystemExit(code)  # click returns (not raises) typer.Exit under standalone_mode=False
