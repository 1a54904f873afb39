"""The WebSocket route at /rpc (the only module that imports flask-sock).

The upgrade is checked before the handshake (draining; Origin, whose own is ``PUBLIC_URL``'s or a
loopback one, never the Host header's; a slot of ``MAX_SOCKETS_PER_IP``, taken at the check: a
refused page never gets a 101), flask-sock and simple-websocket answer the handshake, and the socket
then moves to the I/O loop (bridge/wsconn.py): no thread is held per socket. The handshake
negotiates permessage-deflate as ``WS_COMPRESSION`` says (docs/performance.md):

- "off" (default): the offer is declined (RFC 7692 lets a server do so); messages are a few
  hundred bytes, and compression cost memory per socket or time on the loop per message;
- "stateless": compressed, but each message on its own, both ways (the server keeps no
  compressor between messages, and asks the browser for client_no_context_takeover, which
  RFC 7692 section 7.1.1.2 lets a server add), so an idle socket holds no zlib state;
- "context": compressed with context takeover (smaller frames, about 300 KB more per socket).
"""
from __future__ import annotations

import ipaddress
import ssl
import threading
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, g, jsonify, request
from flask_sock import Sock
from wsproto.utilities import RemoteProtocolError

from . import logs
from .wsconn import Connection, SocketHost

log = logs.get("bridge.ws")

EXTENSIONS = "HTTP_SEC_WEBSOCKET_EXTENSIONS"
SLOT = "cti_socket_slot"  # flask.g: the address whose per-address slot this request holds


class _NoThread:
    """simple-websocket's ``thread_class``: the socket is read by the I/O loop, not by a thread."""

    def __init__(self, target: Any = None, **_: Any) -> None:
        self.name = "rpc-socket"

    def start(self) -> None:
        pass


def _stateless_offer(header: str) -> str:
    """The browser's permessage-deflate offers, each asking for client_no_context_takeover."""
    offers = []
    for offer in header.split(","):
        params = [p.strip() for p in offer.split(";")]
        if params[0].lower() == "permessage-deflate" and "client_no_context_takeover" not in params:
            params.append("client_no_context_takeover")
        offers.append("; ".join(params))
    return ", ".join(offers)


def _stateless(ws: Any) -> None:
    """Our side of "stateless": a fresh compressor for every message (valid whatever was negotiated)."""
    proto = getattr(ws.ws.connection, "_proto", None)
    for extension in getattr(proto, "extensions", ()):
        if getattr(extension, "name", "") == "permessage-deflate":
            extension.server_no_context_takeover = True


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(url: str, with_path: bool = False) -> tuple[str, str, int] | None:
    """Scheme, lower-case host and port (the scheme's default when absent) of a URL: the origin as
    RFC 6454 section 4 compares them. None when it is not one (``null``, a bad port, a user name,
    or a path unless ``with_path``: a browser's Origin never has one, PUBLIC_URL may)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (not parts.hostname or scheme not in DEFAULT_PORTS or parts.username is not None or parts.query
            or parts.fragment or (parts.path not in ("", "/") and not with_path)):
        return None
    return scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: names only this machine answers to (RFC 6761 section 6.3)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _own_origin(public_url: str | None) -> tuple[str, str, int] | None:
    """The bridge's own origin: ``PUBLIC_URL``'s when set; else the request's, only on a loopback host.

    Not the Host header of any request: a DNS-rebinding page (evil.example resolved to this bridge)
    sends Host and Origin that match each other, so Host proves nothing about which page is asking
    (RFC 6455 section 10.2: the server decides which origins it serves). A loopback host cannot be a
    foreign page's; anywhere else PUBLIC_URL names the bridge (docs/gadgets.md) or ALLOWED_ORIGINS does.
    """
    if public_url:
        return _origin_tuple(public_url, with_path=True)
    own = _origin_tuple(f"{request.scheme}://{request.host}")
    return own if own is not None and _is_loopback(own[1]) else None


def _origin_allowed(origin: str | None, allowed: list[str], public_url: str | None) -> bool:
    """No Origin (a server-side client) is allowed; a browser's must be ours or listed."""
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    own = _own_origin(public_url)
    return own is not None and _origin_tuple(origin) == own


def init_app(app: Flask, bridge: Any) -> None:
    per_ip: Counter[str] = Counter()
    per_ip_lock = threading.Lock()
    open_connections: set[Connection] = set()  # closed with 1012 when the bridge drains
    config = bridge.config
    compression = config["WS_COMPRESSION"]
    host_lock = threading.Lock()
    hosts: list[SocketHost] = []

    # MAX_SOCKETS_PER_IP counts slots: one is taken at the check, under the lock, so that a burst of
    # upgrades cannot all pass the check before any is counted. The request holds it until its socket
    # is adopted (remember), then the socket does until it closes (forget); a request that ends without
    # a socket (refused handshake, TLS, an error) gives it back when it is torn down.
    def reserve(address: str) -> bool:
        with per_ip_lock:
            if per_ip[address] >= config["MAX_SOCKETS_PER_IP"]:
                return False
            per_ip[address] += 1
            return True

    def release(address: str) -> None:
        with per_ip_lock:
            per_ip[address] -= 1
            if per_ip[address] <= 0:
                del per_ip[address]

    def remember(connection: Connection) -> None:
        with per_ip_lock:
            open_connections.add(connection)
            bridge.sockets += 1
        g.pop(SLOT, None)  # the socket holds its address's slot now (adopt runs in the upgrade request)

    def forget(connection: Connection) -> None:
        with per_ip_lock:
            if connection not in open_connections:
                return
            open_connections.discard(connection)
            bridge.sockets -= 1
        release(connection.address)

    def socket_host() -> SocketHost:
        """Made on the first socket, on the XMPP hub's loop (nothing starts at app creation)."""
        with host_lock:
            if not hosts:
                hub = bridge.hub
                hosts.append(SocketHost(hub.loop, hub.thread, workers=config["RPC_THREADS"],
                                        ping_interval=config["WS_PING_SECONDS"],
                                        max_message_size=config["MAX_MESSAGE_BYTES"], max_batch=config["MAX_BATCH"],
                                        max_buffer=config["WS_MAX_BUFFER_BYTES"],
                                        stall_seconds=config["WS_STALL_SECONDS"], on_open=remember,
                                        on_closed=forget))
                bridge.close_hooks = [*getattr(bridge, "close_hooks", []), hosts[0].close]
            return hosts[0]

    def close_all() -> None:
        with per_ip_lock:
            connections = list(open_connections)
        for connection in connections:
            connection.close(1012, "service restart")

    bridge.drain_hooks = [*getattr(bridge, "drain_hooks", []), close_all]
    # The handshake only: the I/O loop reads, pings and limits the socket (wsconn.py).
    app.config["SOCK_SERVER_OPTIONS"] = {"thread_class": _NoThread}

    @app.before_request
    def check_upgrade() -> Any:
        if request.path != "/rpc":
            return None
        if getattr(current_app.extensions["cti_bridge"], "draining", False):
            return jsonify(error="the bridge is shutting down; connect to another instance"), 503
        origin = request.headers.get("Origin")
        if not _origin_allowed(origin, config["ALLOWED_ORIGINS"], config["PUBLIC_URL"]):
            log.warning("refused a WebSocket from origin %s", origin)
            return jsonify(error=f"origin {origin} is not allowed"), 403
        offer = request.environ.get(EXTENSIONS)
        if offer and compression == "off":
            del request.environ[EXTENSIONS]
        elif offer and compression == "stateless":
            request.environ[EXTENSIONS] = _stateless_offer(offer)
        address = request.remote_addr or ""
        if not reserve(address):  # the last check: nothing after it refuses, so nothing to give back here
            return jsonify(error="too many sockets from this address"), 429
        setattr(g, SLOT, address)
        return None

    @app.errorhandler(RemoteProtocolError)
    def bad_handshake(exc: RemoteProtocolError) -> Any:
        """An upgrade the WebSocket library refuses (a header missing, RFC 6455 section 4.2.1): 400."""
        return jsonify(error=f"not a valid WebSocket upgrade: {exc}"), 400

    @app.teardown_request
    def release_unused_slot(_: BaseException | None) -> None:
        address = g.pop(SLOT, None)
        if address is not None:  # no socket took it: the handshake failed or the request was not one
            release(address)

    sock = Sock(app)

    @sock.route("/rpc")
    def rpc_socket(ws: Any) -> None:
        bridge = current_app.extensions["cti_bridge"]
        if isinstance(ws.sock, ssl.SSLSocket):  # TLS inside this process cannot move to the loop
            log.error("/rpc over TLS terminated by the WSGI server is not supported: terminate TLS in front "
                      "of the bridge (docs/operations.md)")
            ws.close(1011, "TLS must terminate in front of the bridge")
            return
        if compression == "stateless":
            _stateless(ws)
        address = request.remote_addr or ""
        connection = socket_host().adopt(ws.sock, ws.ws, bridge, address)
        ws.connected = False  # the loop owns the connection now: flask-sock must not close it
        if getattr(bridge, "draining", False):  # it drained between the check and the upgrade
            connection.close(1012, "service restart")
