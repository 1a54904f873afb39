"""Where a webhook may go, and the HTTP session that goes there: the address guard against SSRF.

An endpoint's URL is the operator's, but its host resolves at send time, and a webhook sent from
inside the network must not reach the bridge's neighbours (loopback, private, link-local and
metadata addresses). So the destination is checked at every attempt (DNS answers change), and the
connection is checked again once made, before TLS and before any byte is sent; hosts in
``allow_hosts`` are the operator's explicit exceptions (docs/webhooks.md, "Security rules").
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter

from ..httpsession import hardened_session

Resolver = Callable[..., list[tuple[Any, ...]]]


class Refused(Exception):
    """A destination the security rules forbid: the row goes dead with this reason, never retried."""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def refusal(address: str) -> str | None:
    """Why an address may not be a webhook destination, or None for a public unicast address."""
    ip = _address(address)
    for flag in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{flag}"):
            return f"{ip} is a {flag.replace('_', '-')} address"
    return None if ip.is_global else f"{ip} is not a public address"


def check_destination(url: str, allow_hosts: frozenset[str], resolver: Resolver) -> None:
    """Raise ``Refused`` unless ``url`` is https and every address of its host is public; hosts in
    ``allow_hosts`` may use http and private addresses. ``OSError`` if the host does not resolve."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if host in allow_hosts:
        return
    if parts.scheme.lower() != "https":
        raise Refused(f"{parts.scheme}:// to {host!r}: https is required for hosts not in allow_hosts")
    infos = resolver(host, parts.port or 443, 0, socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host!r} has no address")
    for info in infos:
        reason = refusal(str(info[4][0]))
        if reason is not None:
            raise Refused(f"{host!r} resolves to {reason}; add the host to allow_hosts to allow it")


def _checked_socket(sock: socket.socket) -> socket.socket:
    """Where the connection really went, checked again: DNS may answer differently the second time."""
    reason = refusal(str(sock.getpeername()[0]))
    if reason is not None:
        sock.close()
        raise Refused(f"connected to {reason}")
    return sock


class _CheckedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _checked_socket(super()._new_conn())


class _CheckedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _checked_socket(super()._new_conn())


class _CheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    """Refuses a connection whose peer is not a public address (before TLS, before any byte)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def open_session(checked: bool) -> requests.Session:
    """A fresh hardened session (bridge/httpsession.py); ``checked``: through the address guard."""
    return hardened_session(adapter=_CheckedAdapter() if checked else None)
