"""rtaa's Deepgram redirect for Python processes (stdlib only: it runs in the target's interpreter).

On PYTHONPATH (``eval "$(rtaa fake-deepgram --print-env python)"``), it rewrites WebSocket URLs whose host
is in RTAA_DEEPGRAM_HOSTS (default api.deepgram.com) to RTAA_DEEPGRAM_URL, keeping path and query, in:
websockets' asyncio ``connect``, sync ``connect`` and legacy ``connect`` (deepgram-sdk uses them) and
aiohttp's ``ClientSession.ws_connect``. Each module is patched as it is imported, before any code can
bind its functions. A sitecustomize found further on sys.path still runs.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from urllib.parse import urlsplit, urlunsplit

_TARGET = os.environ.get("RTAA_DEEPGRAM_URL", "")
_HOSTS = {h.strip().lower() for h in os.environ.get("RTAA_DEEPGRAM_HOSTS", "api.deepgram.com").split(",") if h.strip()}
_announced = False


def redirect(url):
    """``url`` with the emulator's scheme and host when it points at a redirected host (else unchanged)."""
    global _announced
    text = str(url)
    parts = urlsplit(text)
    if (parts.hostname or "").lower() not in _HOSTS or parts.scheme not in ("ws", "wss", "http", "https"):
        return url
    target = urlsplit(_TARGET)
    new = urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))
    if not _announced:
        _announced = True
        print(f"rtaa redirect: {parts.scheme}://{parts.netloc} -> {target.scheme}://{target.netloc}", file=sys.stderr)
    return new


def _wrap_first_arg(fn, method: bool):
    """``fn`` with its URL argument (first, or first after self) passed through :func:`redirect`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        i = 1 if method else 0
        if len(args) > i:
            args = (*args[:i], redirect(args[i]), *args[i + 1:])
        for key in ("uri", "url"):
            if key in kwargs:
                kwargs[key] = redirect(kwargs[key])
        return fn(*args, **kwargs)
    wrapper.__rtaa_redirect__ = True
    return wrapper


def _patch_method(cls, name: str) -> None:
    fn = getattr(cls, name, None)
    if fn is not None and not getattr(fn, "__rtaa_redirect__", False):
        setattr(cls, name, _wrap_first_arg(fn, method=True))


def _patch_asyncio_client(mod) -> None:
    _patch_method(mod.connect, "__init__")


def _patch_sync_client(mod) -> None:
    if not getattr(mod.connect, "__rtaa_redirect__", False):
        mod.connect = _wrap_first_arg(mod.connect, method=False)


def _patch_legacy_client(mod) -> None:
    _patch_method(mod.Connect, "__init__")


def _patch_aiohttp_client(mod) -> None:
    _patch_method(mod.ClientSession, "_ws_connect")


PATCHES = {
    "websockets.asyncio.client": _patch_asyncio_client,
    "websockets.sync.client": _patch_sync_client,
    "websockets.legacy.client": _patch_legacy_client,
    "aiohttp.client": _patch_aiohttp_client,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner, patch) -> None:
        self._inner, self._patch = inner, patch

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        try:
            self._patch(module)
        except Exception as exc:  # noqa: BLE001 - a library version we do not know: say so, never break it
            print(f"rtaa redirect: could not patch {module.__name__}: {exc!r}", file=sys.stderr)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def _install() -> None:
    if not _TARGET:
        print("rtaa redirect: RTAA_DEEPGRAM_URL is not set; nothing redirected", file=sys.stderr)
        return
    sys.meta_path.insert(0, _PatchingFinder())
    for name, patch in PATCHES.items():  # already imported (unusual this early): patch in place
        if name in sys.modules:
            patch(sys.modules[name])


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize this one shadows (a virtualenv's or the distribution's), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and os.path.abspath(spec.origin or "") != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
_chain_next_sitecustomize()
