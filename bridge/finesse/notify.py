"""Finesse notifications over XMPP: one client per agent, every client in one asyncio thread.

``NotifyHub`` owns one event loop in one daemon thread and one ``ssl.SSLContext`` that every client
shares (slixmpp's default builds one per client, about 860 KB and 40 ms each). Other threads reach
the loop only through ``run_coroutine_threadsafe`` (docs/performance.md, the server model).
Certificate checking stays on: there is no switch to turn it off. The per-agent session is
``xmppclient.AgentConnection``; slixmpp is imported there and nowhere else.

Callbacks run in the loop thread, which carries every agent's XMPP traffic: they must not block
(hand the work to a queue) and must not call ``hub.connect`` (``close()`` from a callback only
schedules the close). Exceptions they raise are logged and swallowed.

    on_update(node, update)   a parsed ``<Update>`` and the pubsub node it came on (docs/finesse.md 9.4);
                              malformed or hostile payloads are logged (never their text) and dropped
    on_state(kind, state)     ("xmpp", "connected" | "disconnected" | "reconnecting" | "waiting" |
                               "failover" | "failed")
                              ("finesse", "available" | "unavailable"): the ``finesse`` user (9.7)

"connected" comes after every sign-in, the first included. After an unexpected drop: "disconnected",
then "reconnecting" before each attempt (``backoff_delay``), then "connected". With a ``route``
(failover, bridge/failover.py) each attempt goes where it says: "failover" when that is another
node (new JID in its domain), "waiting" once while no node is in service. Reconnect attempts run
at most ``max_concurrent`` at a time per hub.
"failed": the server refused the credentials while reconnecting; retrying would only lock the
account out, so the connection gives up. After ``close()`` returns no callback fires.

A stanza over ``max_stanza_bytes`` (counted from the end of the previous one), nested deeper than
``max_depth`` elements or holding more than ``max_elements`` is a drop like any other: the connection is cut and reconnects as above.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from typing import Any, Coroutine, TypeVar

from ..errors import Timeout
from .model import is_loopback
from .xmppclient import (CLOSE_WAIT, MAX_DEPTH, MAX_ELEMENTS, MAX_STANZA_BYTES, SASL_FILTER, AgentConnection,
                         OnState, OnUpdate, Route, backoff_delay)

__all__ = ["NotifyHub", "AgentConnection", "OnUpdate", "OnState", "Route", "backoff_delay"]

T = TypeVar("T")




class NotifyHub:
    """One asyncio thread running every agent's XMPP client, all sharing one SSLContext."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, ca_bundle: str | None = None,
                 ping_interval: float = 10.0, connect_timeout: float = 10.0,
                 reconnect_min: float = 1.0, reconnect_max: float = 30.0, max_concurrent: int = 50,
                 max_stanza_bytes: int = MAX_STANZA_BYTES, max_depth: int = MAX_DEPTH,
                 max_elements: int = MAX_ELEMENTS) -> None:
        if ssl_context is not None and ca_bundle is not None:
            raise ValueError("give ssl_context or ca_bundle, not both")
        context = ssl_context or ssl.create_default_context(cafile=ca_bundle)  # the bundle replaces the system's
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            raise ValueError("the XMPP SSLContext must verify certificates and host names")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if max_stanza_bytes < 1 or max_depth < 1 or max_elements < 1:
            raise ValueError("need max_stanza_bytes, max_depth and max_elements of at least 1")
        self.ssl_context = context
        self.ping_interval, self.connect_timeout = ping_interval, connect_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.max_stanza_bytes, self.max_depth, self.max_elements = max_stanza_bytes, max_depth, max_elements
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[AgentConnection] = set()
        self.max_concurrent = max(1, int(max_concurrent))
        self._slots: asyncio.Semaphore | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (the bridge's WebSockets live on it too: bridge/wsconn.py)."""
        if self._loop is None:
            raise RuntimeError("NotifyHub is not running (call start())")
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        """The loop's thread."""
        if self._thread is None:
            raise RuntimeError("NotifyHub is not running (call start())")
        return self._thread

    def _reconnect_slots(self) -> asyncio.Semaphore:
        """Bounds the reconnects in flight toward Finesse (in the loop only)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        return self._slots

    def start(self) -> NotifyHub:
        """Start the loop thread (nothing connects until ``connect``)."""
        if self._thread is not None:
            raise RuntimeError("NotifyHub already started")
        logging.getLogger("slixmpp.xmlstream.xmlstream").addFilter(SASL_FILTER)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cti-xmpp", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection, stop the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            await asyncio.gather(*(c._close() for c in self._snapshot()), return_exceptions=True)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self._run(shutdown(), timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def connect(self, *, user: str, password: str, host: str, port: int, domain: str, tls: str,
                on_update: OnUpdate, on_state: OnState, pubsub: str | None = None,
                route: Route | None = None) -> AgentConnection:
        """Sign ``user`` in to the notification service and return once presence is sent.

        ``tls`` is "starttls" (required, certificate verified against ``domain``) or "none" (loopback
        hosts only). ``pubsub`` is the pubsub service JID (SystemInfo ``xmppPubSubDomain``; default
        ``pubsub.{domain}``): events from anyone else are ignored. ``route`` (failover) says where
        each reconnect goes; without it, always the same host and port. Raises BadCredentials,
        Unavailable or Timeout. Thread-safe; not from the hub's own thread.
        """
        if tls not in ("starttls", "none"):
            raise ValueError(f"tls must be 'starttls' or 'none', not {tls!r}")
        if tls == "none" and not is_loopback(host):
            raise ValueError(f"plaintext XMPP is allowed only to a loopback address, not {host!r}")
        conn = AgentConnection(self, user=user, password=password, host=host, port=port, domain=domain,
                               tls=tls, pubsub=pubsub or f"pubsub.{domain}", on_update=on_update,
                               on_state=on_state, route=route)

        async def open_() -> AgentConnection:
            with self._lock:
                self._connections.add(conn)
            try:
                conn._build()
                await conn._sign_in()
            except BaseException:
                await conn._close()
                raise
            return conn
        return self._run(open_(), self.connect_timeout + CLOSE_WAIT + 2)

    def client_count(self) -> int:
        """Connections open or reconnecting."""
        with self._lock:
            return len(self._connections)

    def _snapshot(self) -> list[AgentConnection]:
        with self._lock:
            return list(self._connections)

    def _forget(self, conn: AgentConnection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        if self._loop is None or self._loop.is_closed():
            coro.close()
            raise RuntimeError("NotifyHub is not running (call start())")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` in the loop from another thread and wait for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking NotifyHub call from its own loop thread (from a callback?)")
        future = self._submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Timeout(f"the XMPP thread did not answer within {timeout} s") from None
