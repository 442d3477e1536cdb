"""Every option from the environment and from a TOML config file.

- Environment: ``RTAA_<COMMAND>_<OPTION>`` (upper case, ``-`` -> ``_``), e.g. ``RTAA_SOAK_USERS=50`` or
  ``RTAA_FAKE_DEEPGRAM_PORT=8765``. An option that already names its own variable keeps it
  (``DEEPGRAM_API_KEY``, ``RTAA_BASIC_PASSWORD``). ``--help`` shows each variable.
- Config file: ``--config FILE`` (or ``RTAA_CONFIG``; default ``./rtaa.toml`` when it exists), one table
  per command with option names as keys (``[soak] users = 50``, ``[serve] max-calls = 200``).
Precedence (Typer's): command line > environment > config file > built-in default.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from typer.core import TyperGroup, TyperOption

from rtaa_cli.errors import RtaaError

DEFAULT_CONFIG = "rtaa.toml"


def env_name(command: str, param: str) -> str:
    return f"RTAA_{command}_{param}".upper().replace("-", "_")


def add_env_vars(group: TyperGroup) -> None:
    """Give every option of every command its ``RTAA_<COMMAND>_<OPTION>`` variable, shown in --help."""
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, TyperOption) and param.name and not param.envvar and param.name != "help":
                param.envvar = env_name(name, param.name)
                param.show_envvar = True


def load_config(path: str | None, group: TyperGroup) -> dict[str, dict[str, Any]]:
    """The click ``default_map`` from a TOML file: ``{command: {param_name: value}}``, checked
    against the commands' real options so a typo is an error that names the key."""
    explicit = path is not None
    file = Path(path) if path else Path(DEFAULT_CONFIG)
    if not file.exists():
        if explicit:
            raise RtaaError(f"--config: {file}: no such file")
        return {}
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RtaaError(f"--config: {file}: {exc}") from None
    out: dict[str, dict[str, Any]] = {}
    for command, table in data.items():
        cmd = group.commands.get(command)
        if cmd is None:
            raise RtaaError(f"{file}: [{command}]: no such command (commands: {', '.join(sorted(group.commands))})")
        if not isinstance(table, dict):
            raise RtaaError(f"{file}: {command}: expected a table of options, got {type(table).__name__}")
        names = {p.name for p in cmd.params if isinstance(p, TyperOption) and p.name}
        values: dict[str, Any] = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise RtaaError(f"{file}: [{command}] {key}: no such option of `rtaa {command}`")
            values[name] = value
        out[command] = values
    return out


def config_path_from_env() -> str | None:
    return os.environ.get("RTAA_CONFIG") or None
