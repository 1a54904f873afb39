"""Browser WebSockets on the bridge's I/O loop: framing, the one send path, pings, dispatch.

ws.py upgrades the HTTP request (flask-sock and simple-websocket do the handshake, Origin and
limits checked first) and hands the connected socket and its wsproto state to ``SocketHost``.
From then on the socket is an asyncio transport on the same event loop that runs every agent's
XMPP client (bridge/finesse/notify.py), so a Finesse event goes from the XMPP read to the
browser's socket in one thread, with no queue and no thread switch (docs/performance.md). No
thread is held per socket: gunicorn's pool thread returns as soon as the socket is handed over.

One writer per socket: every frame is written by the loop thread, in the order ``send`` was
called, from whichever thread called it. JSON-RPC requests run on a small pool of worker
threads (they make blocking Finesse REST calls), one request at a time per socket, in order.
A socket whose browser does not read is closed with 1013 once ``queue_limit`` messages have
been sent while its buffer was full; a socket that sends faster than its requests are answered
is paused (TCP back-pressure) rather than queued without bound.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from . import rpc
from .sessions import AgentSession

log = logging.getLogger("bridge.ws")

INBOX_LIMIT = 8  # requests waiting for one socket before it is paused (its TCP window then fills)
CLOSE_WAIT = 5.0  # seconds for the browser to answer our close frame before the TCP connection is cut


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


def take_over(sock: socket.socket) -> socket.socket:
    """A socket of our own for the connection behind the WSGI server's ``sock``.

    Both gunicorn and Werkzeug shut a connection down once the handler returns (shutdown(2)
    acts on the connection, whatever descriptor it is given). So the connection moves to a new
    descriptor, and the server's descriptor is pointed (dup2) at a dead socket pair whose peer
    is closed: its writes fail with EPIPE, its reads see EOF, its shutdown and close touch
    nothing of ours. The server's bookkeeping then runs exactly as for a closed connection.
    """
    fd = os.dup(sock.fileno())
    dead, peer = socket.socketpair()
    try:
        peer.close()
        os.dup2(dead.fileno(), sock.fileno(), inheritable=False)
    except BaseException:
        os.close(fd)
        raise
    finally:
        dead.close()
    return socket.socket(fileno=fd)


class Connection(asyncio.Protocol):
    """One browser socket: the JSON-RPC context, the session's ``Socket``, an asyncio protocol."""

    def __init__(self, host: SocketHost, ws: WSConnection, bridge: Any, address: str) -> None:
        self.id = secrets.token_hex(8)
        self.bridge, self.address = bridge, address
        self.session: AgentSession | None = None
        self._host, self._ws = host, ws
        self._transport: asyncio.Transport | None = None
        self._out: deque[str | _Close] = deque()  # in send order; drained by the loop only
        self._inbox: deque[str] = deque()  # requests not yet handled (loop appends, workers take)
        self._lock = threading.Lock()  # _inbox, _busy, _lost, _finished
        self._busy = False  # a worker is handling this socket's requests
        self._closing = False  # a close frame is queued: nothing more is sent
        self._lost = False
        self._finished = False
        self._paused_writing = False
        self._sent_while_paused = 0
        self._reading_paused = False
        self._message: list[str] = []
        self._message_len = 0
        self._alive = True  # anything received since the last ping
        self._timer: asyncio.TimerHandle | None = None
        self._after: list[Callable[[], None]] = []

    # -- what sessions and methods see (any thread) ----------------------------------------------

    @property
    def socket(self) -> Connection:
        return self

    def send(self, text: str) -> bool:
        """Queue a message for this socket; never blocks. False once the socket is closing."""
        if self._closing:
            return False
        self._out.append(text)
        return self._host.on_loop(self._flush)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame after what is queued; the connection ends when the browser answers."""
        if self._closing:
            return
        self._closing = True
        self._out.append(_Close(code, reason))
        self._host.on_loop(self._flush)

    def after_reply(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def run_after_reply(self) -> None:
        while self._after:
            try:
                self._after.pop(0)()
            except Exception:
                log.exception("socket %s: after-reply action failed", self.id)

    # -- asyncio protocol (the loop) ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        interval = self._host.ping_interval
        if interval:  # spread over the interval, so thousands of sockets do not ping at once
            self._timer = self._host.loop.call_later(interval * random.uniform(0.5, 1.0), self._ping)
        self._flush()  # a close queued before the loop took the socket (drain)

    def data_received(self, data: bytes) -> None:
        self._alive = True
        try:
            self._ws.receive_data(data)
            events = list(self._ws.events())
        except LocalProtocolError:
            self._abort()
            return
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                if not self._take_fragment(event):
                    return
            elif isinstance(event, Ping):
                self._write(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                pass
            elif isinstance(event, CloseConnection):
                self._closing = True
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self._ws.send(event.response()))
                if self._transport is not None:
                    self._transport.close()
                return
        self._kick()

    def _take_fragment(self, event: TextMessage | BytesMessage) -> bool:
        if self._closing:
            return True
        data = event.data if isinstance(event.data, str) else bytes(event.data).decode("utf-8", "replace")
        self._message_len += len(data)
        limit = self._host.max_message_size
        if limit and self._message_len > limit:
            self._message.clear()
            self.close(1009, "Message is too big")
            return False
        self._message.append(data)
        if event.message_finished:
            text = "".join(self._message)
            self._message.clear()
            self._message_len = 0
            with self._lock:
                self._inbox.append(text)
                full = len(self._inbox) >= INBOX_LIMIT
            if full and not self._reading_paused and self._transport is not None:
                self._reading_paused = True
                self._transport.pause_reading()
        return True

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._sent_while_paused = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closing = True
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._inbox.clear()
            idle = not self._busy
        if idle:
            self._finish()

    def _flush(self) -> None:
        while self._out:
            item = self._out.popleft()
            if self._transport is None:  # not adopted yet: connection_made flushes
                self._out.appendleft(item)
                return
            if self._lost:
                self._out.clear()
                return
            if isinstance(item, _Close):
                self._out.clear()
                self._send_close(item)
                return
            if self._paused_writing:
                self._sent_while_paused += 1
                if self._sent_while_paused > self._host.queue_limit:
                    log.warning("socket %s: %d messages sent to a full socket, closing it as too slow",
                                self.id, self._host.queue_limit)
                    self._out.clear()
                    self._send_close(_Close(1013, "too slow; resume to catch up"))
                    return
            try:
                self._write(self._ws.send(TextMessage(data=item)))
            except LocalProtocolError:  # the browser closed first
                self._out.clear()
                return

    def _send_close(self, item: _Close) -> None:
        self._closing = True
        try:
            self._write(self._ws.send(CloseConnection(item.code, item.reason)))
        except LocalProtocolError:
            pass
        if self._transport is not None and not self._transport.is_closing():
            transport = self._transport
            self._host.loop.call_later(CLOSE_WAIT, transport.abort)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and data and not self._transport.is_closing():
            self._transport.write(data)

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _ping(self) -> None:
        if self._lost or self._closing:
            return
        if not self._alive:
            self.close(1008, "Ping/Pong timeout")
            return
        self._alive = False
        try:
            self._write(self._ws.send(Ping()))
        except LocalProtocolError:
            return
        self._timer = self._host.loop.call_later(self._host.ping_interval or 0.0, self._ping)

    # -- requests (worker threads, one at a time per socket) --------------------------------------

    def _kick(self) -> None:
        with self._lock:
            if self._busy or not self._inbox or self._lost:
                return
            self._busy = True
        try:
            self._host.workers.submit(self._work)
        except RuntimeError:  # the pool is shut down: the bridge is stopping
            with self._lock:
                self._busy = False

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._lost or not self._inbox:
                    self._busy = False
                    finish = self._lost
                    break
                text = self._inbox.popleft()
                resume = self._reading_paused and len(self._inbox) < INBOX_LIMIT // 2
            if resume:
                self._host.on_loop(self._resume_reading)
            try:
                reply = rpc.handle(text, self, self._host.max_batch)
                if reply:
                    self.send(reply)
                self.run_after_reply()
            except Exception:  # handle() answers errors itself: this is a bug of ours
                log.exception("socket %s: handling a message failed", self.id)
        if finish:
            self._finish()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()

    def _finish(self) -> None:
        """Once: the socket is gone and no request of its is running."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            if self.session is not None:
                self.session.detach(self)
        finally:
            self._host.forget(self)


class SocketHost:
    """Every adopted socket of this process, on one event loop, with the request workers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, loop_thread: threading.Thread, *, workers: int,
                 ping_interval: float | None, max_message_size: int, max_batch: int, queue_limit: int,
                 on_open: Callable[[Connection], None], on_closed: Callable[[Connection], None]) -> None:
        self.loop, self._thread = loop, loop_thread
        self.ping_interval = ping_interval or None
        self.max_message_size, self.max_batch, self.queue_limit = max_message_size, max_batch, queue_limit
        self.workers = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="rpc")
        self._on_open, self._on_closed = on_open, on_closed

    def on_loop(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the loop: now when called from it, else as soon as it can. False if stopped."""
        if threading.current_thread() is self._thread:
            fn()
            return True
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def adopt(self, sock: socket.socket, ws: WSConnection, bridge: Any, address: str,
              timeout: float = 5.0) -> Connection:
        """Move an upgraded socket (and its wsproto state) onto the loop. From a request thread."""
        own = take_over(sock)
        own.setblocking(False)
        connection = Connection(self, ws, bridge, address)
        self._on_open(connection)

        async def attach() -> None:
            await self.loop.connect_accepted_socket(lambda: connection, sock=own)
        try:
            asyncio.run_coroutine_threadsafe(attach(), self.loop).result(timeout)
        except BaseException:
            own.close()
            connection._finish()
            raise
        return connection

    def forget(self, connection: Connection) -> None:
        self._on_closed(connection)

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
