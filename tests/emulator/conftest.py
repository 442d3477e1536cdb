"""Fixtures of the emulator's tests: emulators in a thread, and loopback traffic kept off any proxy."""
from __future__ import annotations

import pytest

from rtaa_cli.emulator import EmulatorConfig, start_in_thread


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # The SDK's sync client honours HTTP(S)_PROXY: keep loopback traffic direct (docs/deepgram-protocol.md §5).
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def emu_factory():
    handles = []

    def start(**kw):
        handles.append(start_in_thread(EmulatorConfig(**kw)))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()
