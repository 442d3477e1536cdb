"""CLI commands, one module each. Add a module here to add a command."""
from rtaa_cli.commands import fake_deepgram, replay, serve, smoke, soak, version

COMMAND_MODULES = [version, fake_deepgram, replay, serve, soak, smoke]
