"""bridge/throttle.py on its own, with a clock of its own: windows, back-off, memory."""
from __future__ import annotations

import pytest

from bridge.errors import TooManyAttempts
from bridge.throttle import SignInThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **limits: float) -> SignInThrottle:
    settings = {"per_agent": 2, "per_address": 5, "window": 300.0, "backoff": 1.0, **limits}
    return SignInThrottle(clock=clock, **settings)  # type: ignore[arg-type]


def retry_after(limiter: SignInThrottle, agent: str, address: str = "10.0.0.1") -> int:
    """0 if a sign-in may go on now, else the retryAfter it is refused with."""
    try:
        limiter.check(agent, address)
    except TooManyAttempts as exc:
        assert exc.code == 4029
        return int(exc.data["retryAfter"])
    return 0


def test_each_failure_doubles_the_wait_then_the_limit_holds_until_the_window_passes():
    clock = Clock()
    limiter = throttle(clock, per_agent=3)
    limiter.failed("1001", "10.0.0.1")
    assert retry_after(limiter, "1001") == 1
    clock.now += 1.0
    assert retry_after(limiter, "1001") == 0
    limiter.failed("1001", "10.0.0.1")
    assert retry_after(limiter, "1001") == 2  # doubled
    clock.now += 2.0
    limiter.failed("1001", "10.0.0.1")  # the third: the limit
    assert retry_after(limiter, "1001") == 297  # until the first failure leaves the window
    clock.now += 296.5
    assert retry_after(limiter, "1001") == 1
    clock.now += 0.5
    assert retry_after(limiter, "1001") == 0  # the first failure left the window: one more try
    limiter.failed("1001", "10.0.0.1")
    assert retry_after(limiter, "1001") == 4  # at the limit again; the back-off (4 s) outlasts the window (1 s)


def test_agents_are_counted_whatever_the_address_and_case():
    clock = Clock()
    limiter = throttle(clock, backoff=0.0)
    limiter.failed("jdoe", "10.0.0.1")
    limiter.failed("JDoe", "10.0.0.2")
    assert retry_after(limiter, "jdoe", "10.0.0.3") == 300
    assert retry_after(limiter, "1002", "10.0.0.3") == 0  # another agent from another address


def test_an_address_is_counted_across_agents_without_back_off():
    clock = Clock()
    limiter = throttle(clock, per_address=3)
    for agent in ("1001", "1002", "1003"):
        assert retry_after(limiter, "1004") == 0  # one agent's failure delays no other agent
        limiter.failed(agent, "10.0.0.1")
    assert retry_after(limiter, "1004") == 300
    assert retry_after(limiter, "1004", "10.0.0.9") == 0


def test_a_finesse_success_clears_the_agent_and_teaches_its_login_name():
    clock = Clock()
    limiter = throttle(clock, backoff=0.0)
    limiter.failed("1001", "10.0.0.1")
    limiter.succeeded("1001", "1001", "jdoe")
    assert retry_after(limiter, "1001") == 0
    assert limiter.alias("JDOE") == "1001" and limiter.alias("1002") == "1002"
    limiter.failed(limiter.alias("jdoe"), "10.0.0.1")
    limiter.failed(limiter.alias("1001"), "10.0.0.1")
    assert retry_after(limiter, limiter.alias("jdoe")) == 300  # both names, one count


def test_memory_is_bounded_by_the_window_and_by_the_number_of_keys():
    clock = Clock()
    limiter = SignInThrottle(per_agent=2, per_address=10**6, window=60.0, backoff=0.0, max_keys=100, clock=clock)
    for n in range(1000):
        limiter.failed(f"unknown-{n}", "10.0.0.1")
    assert len(limiter) == 100  # the oldest went first
    clock.now += 61.0
    for n in range(1000):
        retry_after(limiter, f"unknown-{n}")
    retry_after(limiter, "x", "10.0.0.1")
    assert len(limiter) == 0  # every entry left with its window


@pytest.mark.parametrize("limits", [{"per_agent": 1}, {"per_address": 1}])
def test_a_limit_of_one_allows_one_failure(limits):
    clock = Clock()
    limiter = throttle(clock, backoff=0.0, **limits)
    assert retry_after(limiter, "1001") == 0
    limiter.failed("1001", "10.0.0.1")
    assert retry_after(limiter, "1001") == 300
