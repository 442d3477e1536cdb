"""Shared browser fixtures (no tests here): Debian's chromium driven by Playwright from PyPI.

`playwright install` downloads a browser and is not possible here, so the tests launch the system
chromium (`/usr/bin/chromium`, or $RTAA_CHROMIUM). A missing chromium is a FAILURE with the install
command, never a skip: CI (.ci/run) installs it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from helpers.paths import DOCS

CHROMIUM = os.environ.get("RTAA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WIDTHS = (1400, 800)  # the screenshots in docs/ (wide desktop, narrow window)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (the screenshot really has the asked width)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _launch():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium "
                    "(apt-get update && apt-get install -y chromium) or set RTAA_CHROMIUM; .ci/run does this",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    # --no-proxy-server: the pages are on 127.0.0.1 and a proxy from the environment must not see them
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-proxy-server"])
    return pw, browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    pw, b = _launch()
    try:
        yield b
    finally:
        b.close()
        pw.stop()


def screenshot(page: object, name: str, tmp_path: Path) -> list[Path]:
    """PNGs of ``page`` at each of WIDTHS, as NAME-WIDTH.png in tmp_path, or in docs/ when
    RTAA_SCREENSHOTS=docs (how the docs' pictures are made: docs/serve.md, docs/soak.md)."""
    outdir = DOCS if os.environ.get("RTAA_SCREENSHOTS") == "docs" else tmp_path
    out = []
    for w in WIDTHS:
        page.set_viewport_size({"width": w, "height": 900})  # type: ignore[attr-defined]
        path = outdir / f"{name}-{w}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        out.append(path)
    return out
