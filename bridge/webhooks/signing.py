"""Standard Webhooks signatures: the HMAC key from an endpoint's secret, and the signature header.

Receivers verify a delivery with any Standard Webhooks library (docs/webhooks.md, "Verifying the
signature"), so the key format and the signed text follow that specification exactly; they are
kept apart from the settings and the worker so the two halves of a signature cannot drift.
"""
from __future__ import annotations

import base64
import hashlib
import hmac


def secret_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` is decoded as Standard Webhooks does; other text is its UTF-8."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    return secret.encode("utf-8")


def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode("utf-8"), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
