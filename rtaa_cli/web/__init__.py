"""The live web pages (``rtaa serve`` at ``/``, ``rtaa soak --web-port``): one static HTML+JS file each,
shipped as package data. The pages build every view from the JSON the servers already publish (transcript
feeds, /health, /metrics; the soak's /api/stats and /api/events), so no page logic lives in Python."""
from __future__ import annotations

from functools import cache
from importlib.resources import files

# No inline data ever reaches the DOM as HTML (the pages use textContent): transcript text and call ids
# are caller-controlled. These headers keep the page from being framed or content-sniffed.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer"}
HTML = "text/html; charset=utf-8"


@cache
def page(name: str) -> bytes:
    """The bytes of ``rtaa_cli/web/NAME.html`` (read once)."""
    return files(__package__).joinpath(f"{name}.html").read_bytes()
