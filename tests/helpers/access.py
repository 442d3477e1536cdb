"""RS256 tokens made in the tests, and requests that carry them (access control of `rtaa serve`)."""
from __future__ import annotations

import time
import urllib.error
import urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(sub: str, role: str | None = None, **claims) -> str:
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + 300, **claims}
    if role:
        body["rtaa_role"] = role
    return jwt.encode(body, KEY, algorithm="RS256")


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {tok}")]


def http_status(url: str, headers: list[tuple[str, str]]) -> int:
    req = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
