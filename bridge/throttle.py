"""Failed sign-ins, limited per agent and per address before any guess can lock an agent out of Finesse.

Finesse (and the directory behind it) locks a user after a few wrong passwords in a row; every
locked agent's REST calls then fail until the lockout ends (docs/security.md). So the bridge counts
failed sign-ins itself, per agent (whoever sends them) and per client address (whichever agent they
name), in a sliding window, and answers locally with 4029 and ``retryAfter`` once either is over
its limit, so Finesse never sees enough failures to lock anyone. Inside the limit, each failure
also delays the next attempt for that agent, doubling each time (exponential back-off), so a
script cannot spend the whole budget in a second. (Not for the address: behind a proxy every
agent shares one, and one agent's typo must not make the others wait.)

Memory is bounded: a key's entry goes when its window has passed, and at most ``max_keys`` keys are
kept (the oldest go first), whatever identifiers a client invents.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

from .errors import TooManyAttempts


class _Failures:
    """The failures of one key within the window (oldest first) and when it may try again."""

    __slots__ = ("times", "not_before")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.not_before = 0.0


class SignInThrottle:
    """Counts failed sign-ins per agent and per address; ``check`` refuses with 4029 when over.

    ``per_agent`` and ``per_address`` failures are allowed within ``window`` seconds; set
    ``per_agent`` below Finesse's lockout threshold and ``window`` at least as long as the time
    Finesse (or its directory) takes to forget failures. A success of a sign-in that reached
    Finesse clears the agent's count, as Finesse clears its own. ``backoff`` seconds after the
    first failure, doubling with each further one (never past the window), the agent may try again.
    """

    def __init__(self, *, per_agent: int, per_address: int, window: float, backoff: float,
                 max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_agent, self.per_address, self.window, self.backoff = per_agent, per_address, window, backoff
        self._max_keys, self._clock = max_keys, clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()  # least recently failed first
        self._aliases: OrderedDict[str, str] = OrderedDict()  # loginName (lower case) -> agent id

    @staticmethod
    def _agent(agent: str) -> tuple[str, str]:
        return ("agent", agent.lower())

    @staticmethod
    def _address(address: str) -> tuple[str, str]:
        return ("address", address)

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        """Seconds before ``key`` may try again (0: now). Lock held."""
        entry = self._keys.get(key)
        if entry is None:
            return 0.0
        while entry.times and now - entry.times[0] >= self.window:
            entry.times.popleft()
        if not entry.times:
            del self._keys[key]
            return 0.0
        wait = entry.not_before - now
        if limit and len(entry.times) >= limit:  # over the limit: until the oldest failure leaves the window
            wait = max(wait, entry.times[0] + self.window - now)
        return max(0.0, wait)

    def check(self, agent: str, address: str) -> None:
        """Raise TooManyAttempts (4029, ``data.retryAfter`` in whole seconds) if either key must wait."""
        now = self._clock()
        with self._lock:
            wait = max(self._wait(self._agent(agent), self.per_agent, now),
                       self._wait(self._address(address), self.per_address, now))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise TooManyAttempts(f"Too many failed sign-ins; try again in {seconds} s", {"retryAfter": seconds})

    def failed(self, agent: str, address: str) -> None:
        """Count one failed sign-in against the agent and the address."""
        now = self._clock()
        with self._lock:
            for key in (self._agent(agent), self._address(address)):
                entry = self._keys.pop(key, None) or _Failures()
                entry.times.append(now)
                limit = self.per_agent if key[0] == "agent" else self.per_address
                while len(entry.times) > max(1, limit):  # only the newest ``limit`` matter
                    entry.times.popleft()
                if key[0] == "agent":  # not per address: behind a proxy, one agent's typo would stop the floor
                    delay = self.backoff * 2 ** (len(entry.times) - 1) if self.backoff else 0.0
                    entry.not_before = now + min(delay, self.window)
                self._keys[key] = entry  # most recent last
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)

    def succeeded(self, key: str, agent_id: str, login_name: str) -> None:
        """Finesse accepted the agent's credentials (given as ``key``): its count starts again, as
        Finesse's does, and its loginName is known from now on as the same agent as its id."""
        with self._lock:
            for name in (key, agent_id, login_name):
                if name:
                    self._keys.pop(self._agent(name), None)
            if login_name and login_name.lower() != agent_id.lower():
                self._aliases.pop(login_name.lower(), None)
                self._aliases[login_name.lower()] = agent_id
                while len(self._aliases) > self._max_keys:
                    self._aliases.popitem(last=False)

    def alias(self, identifier: str) -> str:
        """The agent id for a loginName a sign-in has shown, else ``identifier``: both names of an
        agent then share one count. (Until the agent has signed in once through this bridge, its
        two names count apart, so Finesse may see up to twice ``per_agent``: docs/security.md.)"""
        with self._lock:
            return self._aliases.get(identifier.lower(), identifier)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)
