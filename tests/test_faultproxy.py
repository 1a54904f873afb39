"""The test fault proxy (tests/faultproxy.py) against an echo server on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from tests.faultproxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return

    threads: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conns.append(conn)
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    stop.set()
    acceptor.join(5)
    listener.close()
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for thread in threads:
        thread.join(5)


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo) as p:
        yield p


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock


def _roundtrip(sock: socket.socket, data: bytes = b"hello") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _wait(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_it_forwards_both_ways(proxy):
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
        _wait(lambda: proxy.connections == 1)


def test_latency_delays_each_chunk(proxy):
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"
        proxy.latency(0.2)
        started = time.monotonic()
        assert _roundtrip(sock) == b"hello"
        assert time.monotonic() - started >= 0.4  # up and down
        proxy.latency(0)
        assert _roundtrip(sock) == b"hello"


def test_drop_closes_current_connections_and_new_ones_work(proxy):
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"
        assert proxy.drop() == 1
        assert sock.recv(10) == b""  # FIN
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"


def test_reset_aborts_current_connections(proxy):
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
            sock.sendall(b"more")  # if the RST had not arrived before recv
            sock.recv(10)


def test_blackhole_forwards_nothing_then_resumes(proxy):
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"
        proxy.blackhole(True)
        sock.sendall(b"lost")
        sock.settimeout(0.3)
        with pytest.raises((TimeoutError, socket.timeout)):
            sock.recv(10)
        with _connect(proxy) as fresh:  # new connections are accepted and swallowed too
            fresh.settimeout(0.3)
            fresh.sendall(b"lost too")
            with pytest.raises((TimeoutError, socket.timeout)):
                fresh.recv(10)
        proxy.blackhole(False)
        sock.settimeout(5)
        assert _roundtrip(sock) == b"hello"


def test_refuse_resets_new_connections(proxy):
    proxy.refuse(True)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with _connect(proxy) as sock:  # the RST may come before connect() returns, or on the first recv
            sock.recv(10)
            sock.sendall(b"x")  # (never reached when the RST is seen)
            sock.recv(10)
    proxy.refuse(False)
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"hello"


def test_stop_ends_every_thread(echo):
    proxy = FaultProxy("127.0.0.1", echo).start()
    socks = [_connect(proxy) for _ in range(5)]
    for sock in socks:
        assert _roundtrip(sock) == b"hello"
    proxy.stop()  # asserts the threads ended
    for sock in socks:
        assert sock.recv(10) == b""
        sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
