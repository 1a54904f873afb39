"""Garbage collection for a process that holds thousands of long-lived sessions (docs/performance.md).

Each signed-in agent keeps thousands of objects for hours (its XMPP client, session, socket). CPython
3.11's full collection walks every tracked object, and runs again each time the old generation has
grown by a quarter: with 2,000 agents that is about a second during which the I/O loop, and so every
agent's events, stands still. Every ``every`` seconds the young generations are collected and
everything that survived is moved to the permanent generation (``gc.freeze``), so that full
collections only walk what was made since. The price: a reference cycle that survived a freeze and
became garbage afterwards is not collected until ``thaw`` (reference counting frees everything else,
which is nearly all of the bridge's garbage); the benchmark's memory after its call storm shows it.
"""
from __future__ import annotations

import gc
import threading
from . import logs

log = logs.get("bridge.gc")


class GcFreezer:
    """A daemon timer thread that freezes the survivors every ``every`` seconds (0: never)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.freezes = 0

    def start(self) -> GcFreezer:
        if self.every > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gc-freeze", daemon=True)
            self._thread.start()
        return self

    def freeze_now(self) -> None:
        """Collect the young generations, then move every survivor out of the collector's sight."""
        gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.freeze_now()
            except Exception:  # never let the timer die
                log.exception("gc freeze failed")

    def thaw(self) -> None:
        """Stop, and give the frozen objects back to the collector (at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        gc.unfreeze()
