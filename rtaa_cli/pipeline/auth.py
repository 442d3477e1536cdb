"""Ingest authentication at the handshake: none, HTTP Basic (Exotel's ``wss://user:pass@host``), or an
RS256 JWT in ``Authorization: Bearer``. A failure is an HTTP 401 before any WebSocket exists."""
from __future__ import annotations

import binascii
import hmac
from typing import Callable

from rtaa_cli.errors import RtaaError

Check = Callable[[str | None], str | None]  # Authorization header -> None if allowed, else the reason


def none_check(_: str | None) -> str | None:
    return None


def basic_check(user: str, password: str) -> Check:
    expected = f"{user}:{password}".encode()

    def check(header: str | None) -> str | None:
        if not header or not header[:6].lower() == "basic ":
            return "missing basic credentials"
        try:
            given = binascii.a2b_base64(header[6:].strip(), strict_mode=True)
        except ValueError:
            return "malformed basic credentials"
        return None if hmac.compare_digest(given, expected) else "invalid credentials"

    return check


def jwt_check(public_key_pem: str) -> Check:
    try:
        import jwt  # PyJWT, with cryptography for RS256
    except ImportError:  # pragma: no cover - pinned in pyproject
        raise RtaaError("--auth jwt needs PyJWT with cryptography installed") from None

    def check(header: str | None) -> str | None:
        if not header or not header[:7].lower() == "bearer ":
            return "missing bearer token"
        try:
            jwt.decode(header[7:].strip(), public_key_pem, algorithms=["RS256"],
                       options={"require": ["exp"], "verify_aud": False})
        except jwt.PyJWTError as exc:
            return f"invalid token: {exc}"
        return None

    return check


def make_check(mode: str, user: str | None, password: str | None, jwt_public_key: str | None) -> Check:
    if mode == "none":
        return none_check
    if mode == "basic":
        if not user or not password:
            raise RtaaError("--auth basic needs --basic-user and --basic-password (or RTAA_BASIC_USER/RTAA_BASIC_PASSWORD)")
        return basic_check(user, password)
    if mode == "jwt":
        if not jwt_public_key:
            raise RtaaError("--auth jwt needs --jwt-public-key FILE (an RS256 public key in PEM)")
        return jwt_check(jwt_public_key)
    raise RtaaError(f"--auth must be none, basic or jwt, not {mode!r}")
