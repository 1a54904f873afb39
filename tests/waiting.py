"""Waiting on a condition with a deadline: for state that has no event to wait on (another process's)."""
from __future__ import annotations

import time
from typing import Any, Callable


def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition", every: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(every)


def take_until(client: Any, method: str, predicate: Callable[[dict[str, Any]], bool] = lambda p: True,
               timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every notification a CtiClient receives up to and including the first ``method`` whose params match."""
    deadline = time.monotonic() + timeout
    notes = []
    while True:
        note = client.next_notification(max(0.01, deadline - time.monotonic()))
        notes.append(note)
        if note["method"] == method and predicate(note["params"]):
            return list(notes)
