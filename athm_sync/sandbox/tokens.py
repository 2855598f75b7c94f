"""The auth tokens the payment API hands out: HS256 JWTs that name the ecommerceId.

The real ones are JWTs too, valid for 15 minutes; the shop passes one back to ``authorization``
to capture a confirmed payment. Each sandbox signs with its own random key, so a token from
another sandbox run is rejected as garbled, as a real foreign token would be.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import timedelta

from athm_sync.sandbox.clock import SandboxClock
from athm_sync.sandbox.errors import SandboxError

AUTH_TOKEN_LIFETIME = timedelta(minutes=15)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuthTokens:
    """Issues and checks payment auth tokens against the sandbox clock."""

    def __init__(self, clock: SandboxClock) -> None:
        """Tokens signed with a fresh random key, expiring by ``clock``."""
        self._clock = clock
        self._secret = secrets.token_bytes(32)

    def issue(self, ecommerce_id: str, issued: float) -> str:
        """A token for ``ecommerce_id`` issued at epoch ``issued``, valid for 15 minutes."""
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        exp = int(issued + AUTH_TOKEN_LIFETIME.total_seconds())
        claims = {
            "iss": "athm-sandbox",
            "ecommerceId": ecommerce_id,
            "iat": int(issued),
            "exp": exp,
        }
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64url(signature.digest())}"

    def verify(self, authorization: str | None) -> str:
        """The ecommerceId of a valid ``Bearer`` auth token; raise the API's token errors."""
        garbled = SandboxError(
            "token.invalid.header", "Invalid or missing authorization header", 401
        )
        if not authorization or not authorization.startswith("Bearer "):
            raise garbled
        token = authorization[len("Bearer ") :].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise garbled
        expected = hmac.new(self._secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
        try:
            signature = _b64url_decode(parts[2])
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            raise garbled from None
        if not hmac.compare_digest(signature, expected.digest()) or not isinstance(claims, dict):
            raise garbled
        if claims.get("exp", 0) <= self._clock.timestamp():
            raise SandboxError("token.expired", "The authorization token has expired", 401)
        return str(claims.get("ecommerceId", ""))
