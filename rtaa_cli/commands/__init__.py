"""CLI commands, one module each. Add a module here to add a command."""
from rtaa_cli.commands import fake_deepgram, replay, serve, version

COMMAND_MODULES = [version, replay, serve, fake_deepgram]
