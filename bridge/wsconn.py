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

What one socket may hold is bounded in bytes, not in messages (a reply may be 35 bytes or
700 KB), so that a browser that does not read cannot grow the process (docs/performance.md):

- while more than its transport's write high-water mark (asyncio's 64 KiB: the kernel's
  buffers are full) waits unsent, in the transport or queued for the loop, its requests are
  neither read nor handed to a worker, so it produces no more replies (TCP back-pressure);
- a message (reply or event) that would take what it holds unsent over ``max_buffer`` bytes is
  not written: the socket is closed with 1013 (RFC 6455 section 7.4.1, "try again later"), and
  the browser resumes on a new socket from the session's replay buffer (docs/client.md);
- a socket whose browser takes no byte for ``stall_seconds`` while it is backed up is closed
  with 1013 as well, so that a socket that only sends requests does not hold its bytes forever;
- a socket that sends faster than its requests are answered is paused after ``INBOX_LIMIT``
  waiting requests.
"""
from __future__ import annotations

import asyncio
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

from . import logs, rpc
from .sessions import AgentSession

log = logs.get("bridge.ws")

INBOX_LIMIT = 8  # requests waiting for one socket before it is paused (its TCP window then fills)
CLOSE_WAIT = 5.0  # seconds for the browser to answer our close frame before the TCP connection is cut


PROTOCOL_ERRORS = {1002: "protocol error", 1007: "a text message that is not UTF-8", 1009: "Message is too big"}


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
        self._queued = 0  # characters in _out: its bytes, as json.dumps writes ASCII (_flush checks the frame)
        self._inbox: deque[str] = deque()  # requests not yet handled (loop appends, workers take)
        self._lock = threading.Lock()  # _out and _queued, _inbox, _busy, _lost, _finished
        self._busy = False  # a worker is handling this socket's requests
        self._closing = False  # a close frame is queued: nothing more is sent
        self._lost = False
        self._finished = False
        self._paused_writing = False  # the transport is over its high-water mark (the loop sets it)
        self._high_water = 64 * 1024  # the transport's, read when it is made (asyncio's default)
        self._written = 0  # bytes given to the transport, ever
        self._stalled_at = 0  # bytes the browser had taken when the stall check was last armed
        self._stall_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._message: list[str] = []
        self._message_len = 0
        self._alive = True  # anything received since the last ping
        self._eof = False  # our side of the TCP connection is shut: nothing more may be written
        self._discard = False  # the stream broke: what still arrives is read and dropped
        self._timer: asyncio.TimerHandle | None = None
        self._after: list[Callable[[], None]] = []

    # -- what sessions and methods see (any thread) ----------------------------------------------

    @property
    def socket(self) -> Connection:
        return self

    def send(self, text: str) -> bool:
        """Queue a message for this socket; never blocks. False once the socket is closing, or when
        the message would take what it holds unsent over ``max_buffer`` (it is then closed with 1013)."""
        if self._closing:
            return False
        with self._lock:
            # Counted here, not only when the loop writes: a burst from another thread (a replay, a
            # worker's replies) must not pile up in _out where the transport's bound cannot see it.
            over = self._queued + len(text) + self.buffered() > self._host.max_buffer
            if not over:
                self._queued += len(text)
                self._out.append(text)
        if over:
            self._too_slow(len(text))
            return False
        return self._host.on_loop(self._flush)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame after what is queued; the connection ends when the browser answers."""
        if self._closing:
            return
        self._closing = True
        with self._lock:
            self._out.append(_Close(code, reason))
        self._host.on_loop(self._flush)

    def _too_slow(self, size: int) -> None:
        log.warning("socket %s: %d bytes unsent and a message of %d, closing it as too slow",
                    self.id, self._queued + self.buffered(), size)
        self.close(1013, "too slow; resume to catch up")

    @property
    def closing(self) -> bool:
        """True once a close frame is queued (by either side) or the connection is gone."""
        return self._closing

    def buffered(self) -> int:
        """Bytes written to this socket that the browser has not taken yet (held by this process)."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

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
        self._high_water = transport.get_write_buffer_limits()[1]
        interval = self._host.ping_interval
        if interval:  # spread over the interval, so thousands of sockets do not ping at once
            self._timer = self._host.loop.call_later(interval * random.uniform(0.5, 1.0), self._ping)
        self._flush()  # a close queued before the loop took the socket (drain)

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._alive = True
        try:
            self._ws.receive_data(data)
            events = list(self._ws.events())
        except LocalProtocolError:
            if not self._closing:  # after our close frame, whatever else arrives is ignored
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
                elif self._ws.state is ConnectionState.OPEN:
                    # Not the browser's close: wsproto refused a frame (RFC 6455 7.4.1: 1007 for a text
                    # message that is not UTF-8, 1002 for a broken frame), and the rest of the stream
                    # cannot be parsed. Say why, end our side once that is sent, and read on without
                    # parsing until the browser ends its side (or CLOSE_WAIT cuts it). Closing at once,
                    # with the browser's next frames unread, would reset the connection and lose the
                    # close frame on its way.
                    self._send_close(_Close(event.code, PROTOCOL_ERRORS.get(event.code, "protocol error")))
                    self._discard = True
                    if self._transport is not None and not self._transport.is_closing() \
                            and self._transport.can_write_eof():
                        self._transport.write_eof()
                        self._eof = True
                    return
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
            self.close(1009, PROTOCOL_ERRORS[1009])
            return False
        self._message.append(data)
        if event.message_finished:
            text = "".join(self._message)
            self._message.clear()
            self._message_len = 0
            with self._lock:
                self._inbox.append(text)
                full = len(self._inbox) >= INBOX_LIMIT
            if full:
                self._pause_reading()
        return True

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: no more requests until the browser reads."""
        self._paused_writing = True
        self._pause_reading()
        self._arm_stall_check()

    def resume_writing(self) -> None:
        """The browser caught up (the transport is under its low-water mark): read and answer again."""
        self._paused_writing = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._resume_reading()
        self._kick()

    def _arm_stall_check(self) -> None:
        self._stalled_at = self._written - self.buffered()
        self._stall_timer = self._host.loop.call_later(self._host.stall_seconds, self._check_stall)

    def _check_stall(self) -> None:
        """Still backed up: close with 1013 if the browser took nothing since the last check."""
        self._stall_timer = None
        if not self._paused_writing or self._closing:
            return
        if self._written - self.buffered() > self._stalled_at:  # slow, but reading: wait again
            self._arm_stall_check()
            return
        log.warning("socket %s: the browser took nothing of %d bytes for %g s, closing it as too slow",
                    self.id, self.buffered(), self._host.stall_seconds)
        self.close(1013, "too slow; resume to catch up")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closing = True
        self._drop()
        if self._timer is not None:
            self._timer.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        with self._lock:
            self._inbox.clear()
            idle = not self._busy
        if idle:
            self._finish()

    def _flush(self) -> None:
        if self._transport is None:  # not adopted yet: connection_made flushes
            return
        while True:
            with self._lock:
                if not self._out:
                    break
                item = self._out.popleft()
                if isinstance(item, str):
                    self._queued -= len(item)
            if self._lost:
                self._drop()
                return
            if isinstance(item, _Close):
                self._drop()
                self._send_close(item)
                return
            try:
                frame = self._ws.send(TextMessage(data=item))
            except LocalProtocolError:  # the browser closed first
                self._drop()
                return
            if self.buffered() + len(frame) > self._host.max_buffer:
                # Not written: the session's replay buffer has the events, and the browser resumes
                # on a new socket (docs/client.md); nothing else would bound what a slow socket holds.
                log.warning("socket %s: %d bytes unsent and a message of %d, closing it as too slow",
                            self.id, self.buffered(), len(frame))
                self._drop()
                self._send_close(_Close(1013, "too slow; resume to catch up"))
                return
            self._write(frame)
        if self._inbox and not self._paused_writing:
            self._kick()  # the worker stops while its replies wait here unwritten (_work)

    def _drop(self) -> None:
        with self._lock:
            self._out.clear()
            self._queued = 0

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
        if self._transport is not None and data and not self._transport.is_closing() and not self._eof:
            self._written += len(data)
            self._transport.write(data)

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _ping(self) -> None:
        if self._lost or self._closing:
            return
        if not self._alive and not self._reading_paused:  # paused: its pong waits unread (the stall check)
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
            if self._busy or not self._inbox or self._lost or self._paused_writing:
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
                # Backed up (more than the transport's high-water mark unsent, counting the replies
                # the loop has not written yet): no more replies until the browser reads; the loop
                # kicks again (resume_writing, _flush).
                backed_up = self._paused_writing or self._queued + self.buffered() > self._high_water
                if self._lost or not self._inbox or backed_up:
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

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        """Read again once neither the requests waiting nor the bytes unsent hold it back (the loop)."""
        with self._lock:
            backlog = len(self._inbox)
        if (self._reading_paused and not self._paused_writing and backlog < INBOX_LIMIT // 2
                and self._transport is not None and not self._lost):
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
                 ping_interval: float | None, max_message_size: int, max_batch: int, max_buffer: int,
                 stall_seconds: float, on_open: Callable[[Connection], None],
                 on_closed: Callable[[Connection], None]) -> None:
        self.loop, self._thread = loop, loop_thread
        self.ping_interval = ping_interval or None
        self.max_message_size, self.max_batch = max_message_size, max_batch
        self.max_buffer, self.stall_seconds = max_buffer, stall_seconds
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
