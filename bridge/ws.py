"""The WebSocket route at /rpc (the only module that imports flask-sock).

A thin loop: receive a message, ``rpc.handle`` it, queue the reply. Each socket has one send
queue and one sender thread, the only writer on the socket, so replies (request thread) and
events (XMPP thread) never interleave frames and a slow browser never blocks anyone else.
The Origin is checked before the upgrade: a refused page never gets a 101.
"""
from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections import Counter
from typing import Any, Callable
from urllib.parse import urlsplit

from flask import Flask, current_app, jsonify, request
from flask_sock import ConnectionClosed, Sock

from . import rpc
from .sessions import AgentSession

log = logging.getLogger("bridge.ws")


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class Connection:
    """One browser socket: the JSON-RPC context and the session's ``Socket``."""

    def __init__(self, ws: Any, bridge: Any, queue_limit: int) -> None:
        self.id = secrets.token_hex(8)
        self.ws, self.bridge = ws, bridge
        self.session: AgentSession | None = None
        self._limit = queue_limit
        self._queue: queue.SimpleQueue[str | _Close] = queue.SimpleQueue()
        self._closing = False
        self._after: list[Callable[[], None]] = []
        self._sender = threading.Thread(target=self._send_loop, name=f"ws-send-{self.id}", daemon=True)
        self._sender.start()

    @property
    def socket(self) -> "Connection":
        return self

    def send(self, text: str) -> bool:
        """Queue a message for this socket; never blocks. A socket too far behind is closed."""
        if self._closing:
            return False
        if self._queue.qsize() >= self._limit:
            log.warning("socket %s: %d messages waiting, closing it as too slow", self.id, self._limit)
            self.close(1013, "too slow; resume to catch up")
            return False
        self._queue.put(text)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closing:
            self._closing = True
            self._queue.put(_Close(code, reason))

    def after_reply(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def run_after_reply(self) -> None:
        while self._after:
            try:
                self._after.pop(0)()
            except Exception:
                log.exception("socket %s: after-reply action failed", self.id)

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Close):
                try:
                    self.ws.close(item.code, item.reason)
                except Exception:  # already closed by the peer
                    pass
                return
            try:
                self.ws.send(item)
            except Exception:  # the peer went away: the receive loop notices and cleans up
                self._closing = True
                return

    def stop(self) -> None:
        self.close()
        self._sender.join(timeout=5)


def _origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """No Origin (a server-side client) is allowed; a browser's must be ours or listed."""
    if origin is None:
        return True
    own = f"{urlsplit(request.host_url).scheme}://{request.host}"
    return origin == own or origin in allowed or "*" in allowed


def init_app(app: Flask, bridge: Any) -> None:
    per_ip: Counter[str] = Counter()
    per_ip_lock = threading.Lock()
    open_connections: set[Connection] = set()  # closed with 1012 when the bridge drains
    config = bridge.config

    def close_all() -> None:
        with per_ip_lock:
            connections = list(open_connections)
        for connection in connections:
            connection.close(1012, "service restart")

    bridge.drain_hooks = [*getattr(bridge, "drain_hooks", []), close_all]
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": config["WS_PING_SECONDS"] or None,
                                         "max_message_size": config["MAX_MESSAGE_BYTES"]}

    @app.before_request
    def check_upgrade() -> Any:
        if request.path != "/rpc":
            return None
        if getattr(current_app.extensions["cti_bridge"], "draining", False):
            return jsonify(error="the bridge is shutting down; connect to another instance"), 503
        origin = request.headers.get("Origin")
        if not _origin_allowed(origin, config["ALLOWED_ORIGINS"]):
            log.warning("refused a WebSocket from origin %s", origin)
            return jsonify(error=f"origin {origin} is not allowed"), 403
        with per_ip_lock:
            if per_ip[request.remote_addr or ""] >= config["MAX_SOCKETS_PER_IP"]:
                return jsonify(error="too many sockets from this address"), 429
        return None

    sock = Sock(app)

    @sock.route("/rpc")
    def rpc_socket(ws: Any) -> None:
        bridge = current_app.extensions["cti_bridge"]
        address = request.remote_addr or ""
        connection = Connection(ws, bridge, config["SEND_QUEUE_LIMIT"])
        with per_ip_lock:
            per_ip[address] += 1
            bridge.sockets += 1
            open_connections.add(connection)
        if getattr(bridge, "draining", False):  # it drained between the check and the upgrade
            connection.close(1012, "service restart")
        try:
            while True:
                message = ws.receive()
                if message is None:
                    continue
                if isinstance(message, bytes):
                    message = message.decode("utf-8", "replace")
                reply = rpc.handle(message, connection, config["MAX_BATCH"])
                if reply:
                    connection.send(reply)
                connection.run_after_reply()
        except ConnectionClosed:
            pass
        finally:
            if connection.session is not None:
                connection.session.detach(connection)
            connection.stop()
            with per_ip_lock:
                open_connections.discard(connection)
                per_ip[address] -= 1
                if per_ip[address] <= 0:
                    del per_ip[address]
                bridge.sockets -= 1
