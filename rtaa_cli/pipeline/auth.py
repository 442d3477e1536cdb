"""Authentication at the handshake: none, HTTP Basic (Exotel's ``wss://user:pass@host``), or an RS256 JWT
in ``Authorization: Bearer``. A failure is an HTTP 401 before any WebSocket exists.

A successful check yields a :class:`Principal`: who is calling (JWT ``sub``; the Basic user; "anonymous"
with ``--auth none``) and whether it may read every call (``reader``). Entitlement is one rule (see
:func:`may_read`, docs/security.md): a principal reads a call it streamed, a reader reads all.

- ``none``: everyone is the same "anonymous" reader (anyone may stream, read and take over any call).
- ``basic``: one credential, so one principal; it owns every call and therefore reads them all.
- ``jwt``: ``sub`` is required and names the principal; ``"rtaa_role": "reader"`` (or a list holding
  "reader") grants reading every call and the firehose. Optional audience, issuer and lifetime bounds.
"""
from __future__ import annotations

import binascii
import hmac
from dataclasses import dataclass
from typing import Callable

from rtaa_cli.errors import RtaaError

READER_ROLE = "reader"
ROLE_CLAIM = "rtaa_role"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    reader: bool = False  # may read every call (the firehose, any per-call feed)


ANONYMOUS = Principal("anonymous", reader=True)


class AuthFailed(Exception):
    """The handshake's credentials are missing or invalid; ``str(exc)`` is the reason (sent in the 401)."""


Check = Callable[[str | None], Principal]  # Authorization header -> the principal, or raises AuthFailed


def may_read(principal: Principal, owner: str | None) -> bool:
    """A call's feed is readable by the principal that streamed it, and by readers."""
    return principal.reader or (owner is not None and owner == principal.name)


def none_check(_: str | None) -> Principal:
    return ANONYMOUS


def basic_check(user: str, password: str) -> Check:
    expected = f"{user}:{password}".encode()
    principal = Principal(user, reader=True)  # the only principal: owner of every call

    def check(header: str | None) -> Principal:
        if not header or not header[:6].lower() == "basic ":
            raise AuthFailed("missing basic credentials")
        try:
            given = binascii.a2b_base64(header[6:].strip(), strict_mode=True)
        except ValueError:
            raise AuthFailed("malformed basic credentials") from None
        if not hmac.compare_digest(given, expected):
            raise AuthFailed("invalid credentials")
        return principal

    return check


def load_public_key(pem: str) -> object:
    """Parse the RS256 public key once at start: a bad file is a usage error, not 401 on every call."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise RtaaError(f"--jwt-public-key is not a PEM public key ({exc.__class__.__name__})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise RtaaError("--jwt-public-key must be an RSA public key (RS256)")
    return key


def jwt_check(public_key_pem: str, audience: str | None = None, issuer: str | None = None,
              max_lifetime_s: float | None = None) -> Check:
    try:
        import jwt  # PyJWT, with cryptography for RS256
    except ImportError:  # pragma: no cover - pinned in pyproject
        raise RtaaError("--auth jwt needs PyJWT with cryptography installed") from None
    key = load_public_key(public_key_pem)
    require = ["exp", "sub"] + (["iat"] if max_lifetime_s is not None else [])
    require += (["aud"] if audience else []) + (["iss"] if issuer else [])

    def check(header: str | None) -> Principal:
        if not header or not header[:7].lower() == "bearer ":
            raise AuthFailed("missing bearer token")
        try:
            claims = jwt.decode(header[7:].strip(), key, algorithms=["RS256"], audience=audience, issuer=issuer,
                                options={"require": require, "verify_aud": audience is not None})
        except jwt.PyJWTError as exc:
            raise AuthFailed(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthFailed("invalid token: sub must be a non-empty string")
        if max_lifetime_s is not None:
            iat, exp = claims.get("iat"), claims.get("exp")
            if not isinstance(iat, (int, float)) or exp - iat > max_lifetime_s:
                raise AuthFailed(f"invalid token: lifetime (exp - iat) above {max_lifetime_s:g} s")
        role = claims.get(ROLE_CLAIM)
        reader = role == READER_ROLE or (isinstance(role, list) and READER_ROLE in role)
        return Principal(sub, reader=reader)

    return check


def make_check(mode: str, user: str | None, password: str | None, jwt_public_key: str | None,
               jwt_audience: str | None = None, jwt_issuer: str | None = None,
               jwt_max_lifetime_s: float | None = None) -> Check:
    if mode == "none":
        return none_check
    if mode == "basic":
        if not user or not password:
            raise RtaaError("--auth basic needs --basic-user and --basic-password (or RTAA_BASIC_USER/RTAA_BASIC_PASSWORD)")
        return basic_check(user, password)
    if mode == "jwt":
        if not jwt_public_key:
            raise RtaaError("--auth jwt needs --jwt-public-key FILE (an RS256 public key in PEM)")
        return jwt_check(jwt_public_key, jwt_audience, jwt_issuer, jwt_max_lifetime_s)
    raise RtaaError(f"--auth must be none, basic or jwt, not {mode!r}")
