"""A TCP fault proxy for tests: ``FaultProxy(host, port).start()`` listens on 127.0.0.1:0 and forwards
each connection to the target, with faults to turn on at any time:

- ``latency(seconds)``: each chunk waits this long before it is forwarded (both directions);
- ``drop()``: close every current connection (FIN on both sides);
- ``reset()``: abort every current connection (RST on both sides: SO_LINGER 0);
- ``blackhole(True)``: read and discard; nothing is forwarded, on current or new connections;
- ``refuse(True)``: new connections are reset as soon as they are accepted.

Threads, not asyncio: two pump threads per connection and one accept thread, all daemons, all
stopped by ``stop()`` (the ``with`` block or the ``fault_proxy`` fixture) within a bounded time.
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any

_CHUNK = 65536
_POLL = 0.05  # how often blocked threads look at the flags


def _abort(sock: socket.socket) -> None:
    """Close with RST rather than FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Link:
    """One client connection and its upstream (None while blackholed from the start)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client, self.upstream = client, upstream
        self.closed = False
        self.lock = threading.Lock()

    def end(self, abort: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                (_abort if abort else _close)(sock)


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._latency = 0.0
        self._blackhole = False
        self._refuse = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections accepted so far
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]

    # -- controls ------------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        self._latency = max(0.0, float(seconds))

    def blackhole(self, on: bool = True) -> None:
        self._blackhole = on

    def refuse(self, on: bool = True) -> None:
        self._refuse = on

    def drop(self) -> int:
        """Close every current connection; returns how many."""
        return self._end_all(abort=False)

    def reset(self) -> int:
        """Reset every current connection; returns how many."""
        return self._end_all(abort=True)

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.closed)

    def url(self, scheme: str = "http", path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listener.listen(128)
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._end_all(abort=False)
        try:
            self._listener.close()
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "fault proxy threads still running"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- inside --------------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _end_all(self, abort: bool) -> int:
        with self._lock:
            links, self._links = self._links, []
        ended = sum(1 for link in links if not link.closed)
        for link in links:
            link.end(abort)
        return ended

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _POLL)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed by stop()
                return
            self.accepted += 1
            if self._refuse:
                _abort(client)
                continue
            upstream = None
            if not self._blackhole:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _abort(client)
                    continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            self._spawn(self._pump, "faultproxy-up", link, True)
            self._spawn(self._pump, "faultproxy-down", link, False)

    def _pump(self, link: _Link, upward: bool) -> None:
        """Forward from one side to the other until either side closes or the proxy stops."""
        while not self._stopped.is_set() and not link.closed:
            source = link.client if upward else link.upstream
            dest = link.upstream if upward else link.client
            if source is None:  # blackholed from the start: nothing comes down
                self._stopped.wait(_POLL)
                continue
            try:
                ready, _, _ = select.select([source], [], [], _POLL)
                if not ready:
                    continue
                data = source.recv(_CHUNK)
            except (OSError, ValueError):
                break
            if not data:
                break
            if self._blackhole or dest is None:
                continue  # read and discard
            if self._latency:
                self._stopped.wait(self._latency)
            try:
                dest.sendall(data)
            except (OSError, ValueError):
                break
        link.end(abort=False)
