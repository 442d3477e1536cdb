"""CLI commands, one module each. Add a module here to add a command."""
from rtaa_cli.commands import fake_deepgram, replay, version

COMMAND_MODULES = [version, replay, fake_deepgram]
