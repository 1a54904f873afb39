"""Waiting before a retry: exponential back-off with full jitter, one formula for the whole bridge.

Every retry loop (XMPP reconnects, call-record writes, webhook deliveries) waits a random time
between a floor and an exponentially growing ceiling, so that many agents, records or deliveries
that failed together (a Finesse node restarting, the database back) do not retry together
(docs/operations.md).
"""
from __future__ import annotations

import random
from typing import Callable


def delay(attempt: int, base: float, cap: float, *, floor: float = 0.0,
          rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``attempt`` (0-based): uniform in [floor, max(floor, min(cap, base * 2**attempt))]."""
    ceiling = max(floor, min(cap, base * 2 ** min(max(attempt, 0), 60)))
    return floor + (ceiling - floor) * rand()
