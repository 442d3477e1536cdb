"""Thin Typer app: each command lives in ``rtaa_cli/commands/<name>.py`` with a ``register(app)``."""
from __future__ import annotations

import os
import sys

from typing import Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from rtaa_cli.cliconfig import add_env_vars, load_config

from rtaa_cli.errors import RtaaError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    # -h as well as --help, on every command (click passes it down to sub-contexts).
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Replay, emulate, serve and soak-test real-time call transcription (Exotel -> Deepgram).",
)

_err = Console(stderr=True, soft_wrap=True)

# 1 means "a threshold was breached" (soak, smoke) and 2 "usage error / run invalid": an internal
# error must be neither, so scripts can tell a broken tool from a broken target.
EXIT_INTERNAL = 3


def _print_version(value: bool) -> None:
    if value:
        from rtaa_cli import __version__

        typer.echo(f"rtaa {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="Print rtaa's version and exit."),
    config: Optional[str] = typer.Option(
        None, "--config", envvar="RTAA_CONFIG", show_envvar=True, metavar="FILE",
        help="TOML file of option defaults, one table per command ([soak] users = 50); default ./rtaa.toml "
             "if present. Every option also reads RTAA_<COMMAND>_<OPTION> from the environment."),
) -> None:
    """Replay, emulate, serve and soak-test real-time call transcription (Exotel -> Deepgram)."""
    # Set before Typer builds the sub-command's context, which takes its defaults from here.
    if isinstance(ctx.command, TyperGroup):
        ctx.default_map = load_config(config, ctx.command)


def _register_commands() -> None:
    from rtaa_cli.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        module.register(app)


def main() -> None:
    """Console entry point: user errors are one line on stderr, never a traceback."""
    _register_commands()
    try:
        # standalone_mode=False makes typer *return* the exit code of `raise typer.Exit(n)`.
        group = typer.main.get_command(app)
        assert isinstance(group, TyperGroup)
        add_env_vars(group)
        sys.exit(group(standalone_mode=False) or 0)
    except RtaaError as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        sys.exit(code if code is not None else getattr(exc, "code", 0))
    except typer.Abort:
        _err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI promises no tracebacks
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage errors
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("RTAA_DEBUG"):
            raise
        _err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (set RTAA_DEBUG=1 for a traceback)", highlight=False)
        sys.exit(EXIT_INTERNAL)
