"""Deepgram live (``/v1/listen``) emulator: in-process API used by ``rtaa fake-deepgram``, ``rtaa serve
--provider fake``, the soak and the tests. See docs/emulator.md."""
from rtaa_cli.emulator.config import ENGINES, FAULT_FIELDS, EmulatorConfig
from rtaa_cli.emulator.server import Emulator
from rtaa_cli.emulator.thread import EmulatorHandle, start_in_thread

__all__ = ["ENGINES", "FAULT_FIELDS", "Emulator", "EmulatorConfig", "EmulatorHandle", "start_in_thread"]
