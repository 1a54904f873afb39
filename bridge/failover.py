"""Finesse node failover, as the Finesse desktop does it (docs/finesse.md 10.2, 10.6).

One ``NodeWatcher`` per process tracks whether each node is IN_SERVICE. Anything that suspects a
node (an XMPP drop, the ``finesse`` user going unavailable, a SystemInfo OUT_OF_SERVICE
notification, a REST connection failure) calls ``suspect``; the watcher then polls every node's
SystemInfo every ``poll_seconds`` until every node is in service again, and tells its listeners
when a node's status changes. Everything else asks it:

    choose(preferred, down_for)   where an agent's XMPP should go: the same node while it is in
                                  service (and has not refused XMPP for ``switch_after`` seconds),
                                  else another node in service, else None (wait)
    in_service(node)              REST goes only to nodes in service; with none, actions fail
                                  at once with Unavailable (5030) instead of hanging
    rest_slots                    a bounded semaphore for re-syncs toward Finesse

A node never probed counts as in service (the sign-in's SystemInfo has checked it).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from . import logs
from .finesse.model import SystemInfo
from .finesse.rest import FinesseNodes, NodeAddress

log = logs.get(__name__)

IN_SERVICE = "IN_SERVICE"
UNREACHABLE = "UNREACHABLE"

Probe = Callable[[NodeAddress], SystemInfo]
Listener = Callable[[NodeAddress, str], None]


class NodeWatcher:
    """Each node's service status, polled while any node is suspect; thread-safe."""

    def __init__(self, nodes: FinesseNodes, probe: Probe, *, poll_seconds: float = 5.0,
                 max_concurrent: int = 50, switch_after: float = 15.0) -> None:
        self.nodes, self._probe = nodes, probe
        self.poll_seconds, self.switch_after = poll_seconds, switch_after
        self.max_concurrent = max(1, int(max_concurrent))
        self.rest_slots = threading.BoundedSemaphore(self.max_concurrent)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._status: dict[NodeAddress, str] = {}
        self._info: dict[NodeAddress, SystemInfo] = {}
        self._learned: dict[NodeAddress, float] = {}  # when each node's SystemInfo was last read
        self._suspect: set[NodeAddress] = set()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- what others ask ---------------------------------------------------------------------

    def status(self, node: NodeAddress) -> str:
        with self._lock:
            return self._status.get(node, IN_SERVICE)

    def in_service(self, node: NodeAddress) -> bool:
        return self.status(node) == IN_SERVICE

    def any_in_service(self) -> bool:
        return any(self.in_service(n) for n in self.nodes.nodes)

    def info(self, node: NodeAddress) -> SystemInfo | None:
        """The node's last SystemInfo (its xmppDomain and pubsub domain), if it was ever read."""
        with self._lock:
            return self._info.get(node)

    def fresh_info(self, node: NodeAddress, max_age: float) -> SystemInfo | None:
        """The node's SystemInfo if read at most ``max_age`` seconds ago and the node is in service.

        A sign-in then skips its own GET SystemInfo: 2,000 agents signing in within a minute need
        one every few seconds, not 2,000 (docs/performance.md)."""
        with self._lock:
            info, at = self._info.get(node), self._learned.get(node, float("-inf"))
            fresh = info is not None and time.monotonic() - at <= max_age
            in_service = self._status.get(node, IN_SERVICE) == IN_SERVICE
        return info if fresh and in_service and info is not None and info.status == IN_SERVICE else None

    def node_at(self, host: str, port: int) -> NodeAddress | None:
        """The configured node whose XMPP endpoint is ``host:port``."""
        return next((n for n in self.nodes.nodes if (n.xmpp_host, n.xmpp_port) == (host, port)), None)

    def choose(self, preferred: NodeAddress | None, down_for: float = 0.0) -> NodeAddress | None:
        """Where to (re)connect: ``preferred`` while in service, else the next node in service, else None."""
        if preferred is not None and self.in_service(preferred) and (
                down_for < self.switch_after or len(self.nodes.nodes) == 1):
            return preferred
        order = self.nodes.others(preferred) if preferred is not None else list(self.nodes.nodes)
        if preferred is not None:
            order.append(preferred)  # it refuses XMPP but is in service: better than nothing
        return next((n for n in order if self.in_service(n)), None)

    # -- what others tell --------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """``listener(node, status)`` on every status change; runs in the watcher's thread."""
        self._listeners.append(listener)

    def learn(self, node: NodeAddress, info: SystemInfo) -> None:
        """A SystemInfo read (sign-in, poll) or notified (XMPP) for ``node``."""
        with self._lock:
            if info.xmppDomain:
                self._info[node] = info
                self._learned[node] = time.monotonic()
        self._set(node, info.status or UNREACHABLE)

    def suspect(self, node: NodeAddress | None) -> None:
        """Something went wrong with ``node`` (None: some node): poll now, then every poll_seconds."""
        with self._lock:
            if self._stopped:
                return
            if node is not None:
                self._suspect.add(node)
            else:
                self._suspect.update(self.nodes.nodes)
            self._ensure_thread()
            self._wake.notify_all()

    def refresh(self, node: NodeAddress) -> bool:
        """Probe ``node`` now (blocking: not from the XMPP loop); True when it is in service."""
        try:
            info = self._probe(node)
        except Exception as exc:
            log.info("Finesse node %s: SystemInfo failed (%s)", node.url, type(exc).__name__)
            self._set(node, UNREACHABLE)
            return False
        self.learn(node, info)
        return self.in_service(node)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        close = getattr(self._probe, "close", None)
        if close is not None:
            close()

    # -- inside ------------------------------------------------------------------------------

    def _set(self, node: NodeAddress, status: str) -> None:
        with self._lock:
            old = self._status.get(node, IN_SERVICE)
            self._status[node] = status
            if status != IN_SERVICE and not self._stopped:
                self._ensure_thread()  # keep polling until it is back
        if old != status:
            log.warning("Finesse node %s: %s -> %s", node.url, old, status)
            (self.nodes.mark_good if status == IN_SERVICE else self.nodes.mark_failed)(node)
            for listener in list(self._listeners):
                try:
                    listener(node, status)
                except Exception:
                    log.exception("failover listener raised")

    def _ensure_thread(self) -> None:
        """With the lock held: the polling thread runs."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cti-failover", daemon=True)
            self._thread.start()

    def _poll_once(self) -> None:
        for node in self.nodes.nodes:
            self.refresh(node)  # unreachable, 503, a refused document: not in service

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                self._suspect.clear()
            self._poll_once()
            with self._lock:
                if self._stopped:
                    return
                if not self._suspect and all(self._status.get(n, IN_SERVICE) == IN_SERVICE
                                             for n in self.nodes.nodes):
                    self._thread = None  # all in service and nothing new: stop polling
                    return
                deadline = time.monotonic() + self.poll_seconds
                while not self._suspect and not self._stopped and time.monotonic() < deadline:
                    self._wake.wait(max(0.0, deadline - time.monotonic()))
