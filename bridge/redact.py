"""Credentials out of text: messages, logs and errors never carry a password or token (docs/security.md).

One helper for the three places that need it: a database URL in a configuration error, an error
Finesse echoed back with the agent's credentials in it, and a params error that quotes the value
it refused.
"""
from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

MASK = "***"


def secrets(text: str, values: Iterable[str], mask: str = MASK) -> str:
    """``text`` with every occurrence of each non-empty value replaced by ``mask``; the longest
    first, so a secret that contains another is not left half-shown."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(value, mask)
    return text


def url(value: str) -> str:
    """``value`` without the password of its user part (``postgresql://u:***@host/db``)."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)).geturl()
