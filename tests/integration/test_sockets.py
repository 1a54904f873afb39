"""Browser sockets on the I/O loop (bridge/ws.py, bridge/wsconn.py), on the wire: no thread per
socket, a browser that stops reading is closed with 1013 before it holds more than its byte bound,
permessage-deflate as configured."""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
from typing import Any

import pytest
import requests
import websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from bridge import config as bridge_config
from tests.waiting import until

from .conftest import PASSWORD


def _upgrade(stack: Any, extensions: str | None) -> dict[str, str]:
    """A raw upgrade request; the 101's headers (lower-case names)."""
    port = int(stack.base.rsplit(":", 1)[1])
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /rpc HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed before the 101"
            head += chunk
    status, *fields = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert status.startswith("HTTP/1.1 101"), status
    return {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}


def test_the_browsers_deflate_offer_is_declined_by_default(stack):
    headers = _upgrade(stack, "permessage-deflate; client_max_window_bits")
    assert "sec-websocket-extensions" not in headers
    client = stack.agent("1001")  # and the socket works
    assert client.call("agent.get")["id"] == "1001"


@pytest.mark.bridge(WS_COMPRESSION="stateless")
def test_stateless_compression_asks_the_browser_for_no_context_takeover_and_every_message_decodes(stack):
    headers = _upgrade(stack, "permessage-deflate; client_max_window_bits")
    accepted = headers["sec-websocket-extensions"]
    assert accepted.startswith("permessage-deflate") and "client_no_context_takeover" in accepted

    # A browser-like client that keeps its own context: three compressed requests, three replies it decodes.
    port = int(stack.base.rsplit(":", 1)[1])
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/rpc",
                                     extensions=[PerMessageDeflate(client_max_window_bits=15)])))
        replies: list[Any] = []
        accepted_deflate = False
        sent = 0
        while len(replies) < 3:
            data = sock.recv(65536)
            assert data, "the bridge closed the socket"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted_deflate = any(e.name == "permessage-deflate" for e in event.extensions)
                elif isinstance(event, TextMessage):
                    replies.append(json.loads(event.data))
                elif isinstance(event, CloseConnection):
                    pytest.fail(f"closed: {event.code} {event.reason}")
            while sent < 3 and sent <= len(replies):
                sent += 1
                sock.sendall(ws.send(TextMessage(data=json.dumps(
                    {"jsonrpc": "2.0", "id": sent, "method": "session.ping"}))))
    assert accepted_deflate
    assert [r["id"] for r in replies] == [1, 2, 3] and all("at" in r["result"] for r in replies)


def _server_threads() -> int:
    """Threads of the bridge in this process (the test's own clients each have a reader thread)."""
    return sum(1 for t in threading.enumerate() if t.name != "cti-client-reader")


@pytest.mark.bridge(RPC_THREADS=4)
def test_a_socket_holds_no_thread(stack):
    first = stack.agent("1001")
    first.call("session.ping")
    before = _server_threads()
    clients = [stack.client() for _ in range(40)]
    for client in clients:
        assert "at" in client.call("session.ping")
    assert stack.app.extensions["cti_bridge"].sockets == 41
    # The request threads of the 40 upgrades end once their socket is handed over; at most the 4
    # request workers are new.
    until(lambda: _server_threads() <= before + 4, what="threads back near where they were")
    for client in clients:
        client.close()
    until(lambda: stack.app.extensions["cti_bridge"].sockets == 1, what="closed sockets counted off")
    assert first.call("agent.get")["id"] == "1001"


def _raw_client(stack: Any, rcvbuf: int = 4096) -> tuple[socket.socket, WSConnection]:
    """A browser-like socket past its 101, with a small receive buffer (so its kernel holds little)."""
    port = int(stack.base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/rpc")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        data = sock.recv(4096)
        assert data, "closed before the 101"
        ws.receive_data(data)
    return sock, ws


def _read(sock: socket.socket, ws: WSConnection, messages: int | None = None) -> tuple[list[Any], int | None]:
    """Messages read until ``messages`` of them, the close frame or the end: (messages, close code)."""
    got: list[Any] = []
    parts: list[str] = []
    while messages is None or len(got) < messages:
        data = sock.recv(65536)
        if not data:
            return got, None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    got.append(json.loads("".join(parts)))
                    parts.clear()
            elif isinstance(event, CloseConnection):
                return got, event.code
    return got, None


def _sign_in(sock: socket.socket, ws: WSConnection, agent_id: str) -> None:
    sock.sendall(ws.send(TextMessage(data=json.dumps({
        "jsonrpc": "2.0", "id": "login", "method": "session.login",
        "params": {"agentId": agent_id, "password": PASSWORD, "extension": "7" + agent_id}}))))
    replies, _ = _read(sock, ws, 1)
    assert replies[0]["result"]["agent"]["id"] == agent_id


@pytest.mark.bridge(WS_MAX_BUFFER_BYTES=256 * 1024, WS_STALL_SECONDS=60.0)
def test_a_browser_that_stops_reading_events_is_closed_with_1013_at_the_byte_bound_and_the_session_lives(stack):
    bound = 256 * 1024
    bridge = stack.app.extensions["cti_bridge"]
    sock, ws = _raw_client(stack)
    with sock:
        _sign_in(sock, ws, "1002")
        session = bridge.registry.get("1002")
        (connection,) = session.sockets.values()
        # The browser reads nothing more while the agent's notifications pile up (each about 20 KB, 8 MB in
        # all): only the byte bound can close it (the stall check is a minute away).
        filler = "x" * 20_000
        for _ in range(400):
            session.emit("connection.changed", {"state": "connected", "node": filler})
        until(lambda: connection.closing, what="the socket closed at the byte bound")
        assert connection.buffered() <= bound + 128  # what it holds: at most the bound and the close frame
        notes, code = _read(sock, ws)  # what was sent before the close, then the close frame
        assert code == 1013
        assert 0 < len(notes) < 400
        # The session stays for its grace period: the agent signs in again on a new socket and has it.
        again = stack.agent("1002")
        assert again.call("agent.get")["id"] == "1002"
        assert bridge.registry.get("1002") is session


@pytest.mark.bridge(WS_STALL_SECONDS=0.5)
def test_a_browser_that_sends_requests_and_never_reads_stops_being_answered_and_is_closed_with_1013(stack):
    bridge = stack.app.extensions["cti_bridge"]
    bystander = stack.agent("1001")
    sock, ws = _raw_client(stack)
    with sock:
        _sign_in(sock, ws, "1002")
        (connection,) = bridge.registry.get("1002").sockets.values()
        # 400 requests whose replies are about 35 KB each (14 MB), none of them read.
        for n in range(400):
            sock.sendall(ws.send(TextMessage(data=json.dumps({"jsonrpc": "2.0", "id": n, "method": "rpc.discover"}))))
        until(lambda: connection.closing, timeout=20, what="the socket that never reads closed")
        # It was answered only while less than the transport's high-water mark (64 KiB) waited unsent:
        # it holds that and one reply (about 35 KB) at most, however many requests it sent.
        assert connection.buffered() <= 64 * 1024 + 40_000
        replies, code = _read(sock, ws)
        assert code == 1013
        # Once its buffers were full, the bridge read no more of its requests: most were never answered.
        assert all("openrpc" in r["result"] for r in replies)
        assert len(replies) < 400
        assert bystander.call("agent.get")["id"] == "1001"  # the bridge serves the other sockets meanwhile
    until(lambda: bridge.sockets == 1, what="the closed socket counted off")


def _try_upgrade(port: int, headers: str = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
                 start: threading.Barrier | None = None) -> tuple[int, socket.socket]:
    """An upgrade request (sent once ``start`` lets every thread go): the status code, the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if start is not None:
        start.wait(10)
    sock.sendall(f"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]) if head else 0, sock


@pytest.mark.bridge(MAX_SOCKETS_PER_IP=5)
def test_a_burst_of_upgrades_gets_exactly_the_per_address_limit_and_every_slot_comes_back(stack):
    bridge = stack.app.extensions["cti_bridge"]
    port = stack.server.server_port
    start = threading.Barrier(30)
    results: list[tuple[int, socket.socket]] = []
    lock = threading.Lock()

    def one() -> None:
        outcome = _try_upgrade(port, start=start)
        with lock:
            results.append(outcome)
    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    try:
        codes = sorted(code for code, _ in results)
        assert codes == [101] * 5 + [429] * 25
        until(lambda: bridge.sockets == 5, what="the five sockets adopted")
    finally:
        for _, sock in results:
            sock.close()
    until(lambda: bridge.sockets == 0, what="the closed sockets counted off")
    # Requests that pass the check but never become a socket give their slot back: a GET that is no
    # upgrade, a handshake the WebSocket library refuses (no key: a clear 400), a POST (405).
    for headers in ("", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"):
        for _ in range(6):
            code, sock = _try_upgrade(port, headers)
            sock.close()
            assert code == 400
    for _ in range(6):
        assert requests.post(stack.base + "/rpc", timeout=5).status_code == 405
    # Every slot is back, and no more: five sockets again, the sixth refused.
    again = [_try_upgrade(port) for _ in range(6)]
    try:
        assert [code for code, _ in again] == [101] * 5 + [429]
        until(lambda: bridge.sockets == 5, what="the five sockets adopted")
    finally:
        for _, sock in again:
            sock.close()
    until(lambda: bridge.sockets == 0, what="the closed sockets counted off")


@pytest.mark.parametrize("key, value", [("WS_COMPRESSION", "gzip"), ("RPC_THREADS", 0), ("WS_MAX_BUFFER_BYTES", 0),
                                        ("WS_STALL_SECONDS", 0)])
def test_socket_settings_are_checked_at_start(key, value):
    with pytest.raises(bridge_config.ConfigError, match=key):
        bridge_config.load({key: value, "FINESSE_NODES": [{"url": "http://127.0.0.1:1"}]}, file="/dev/null",
                           environ={})


@pytest.mark.parametrize("frame, code", [
    (b"\x81\x82" + b"\x00" * 4 + b"\xff\xfe", 1007),  # a text frame that is not UTF-8
    (b"\x83\x80" + b"\x00" * 4, 1002),  # opcode 3: reserved
])
def test_a_broken_frame_gets_a_close_frame_saying_why_and_the_bridge_serves_on(stack, frame, code):
    sock, ws = _raw_client(stack)
    ping = json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": 1}).encode()
    more = (b"\x81" + bytes([0x80 | len(ping)]) + b"\x00" * 4 + ping) * 200  # frames the bridge will not read
    with sock:
        sock.sendall(frame + more)  # masked with a zero key: the payload as is
        replies, closed = _read(sock, ws)
    assert (replies, closed) == ([], code)
    assert stack.agent("1001").call("agent.get")["id"] == "1001"
