"""NodeWatcher (bridge/failover.py) without a network: where agents go, when polling stops, and
REST failing fast with 5030 while no node is in service."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from bridge.errors import Unavailable
from bridge.failover import IN_SERVICE, UNREACHABLE, NodeWatcher
from bridge.finesse.model import SystemInfo
from bridge.finesse.rest import FinesseNodes, FinesseRest, NodeAddress
from bridge.finesse.xmppclient import backoff_delay

A = NodeAddress("http://127.0.0.1:9001", "127.0.0.1", 5222)
B = NodeAddress("http://127.0.0.1:9002", "127.0.0.1", 5223)


def _info(status: str, domain: str) -> SystemInfo:
    return SystemInfo(status=status, deploymentType="UCCE", xmppDomain=domain, pubsubDomain=f"pubsub.{domain}")


class FakeFinesse:
    """Each node's SystemInfo status, as the probe sees it; counts the probes."""

    def __init__(self) -> None:
        self.status = {A: IN_SERVICE, B: IN_SERVICE}
        self.probes = 0
        self.lock = threading.Lock()

    def __call__(self, node: NodeAddress) -> SystemInfo:
        with self.lock:
            self.probes += 1
        status = self.status[node]
        if status == UNREACHABLE:
            raise Unavailable()
        return _info(status, "finesse-a.local" if node == A else "finesse-b.local")


def _out(watcher: NodeWatcher, finesse: FakeFinesse, node: NodeAddress) -> None:
    """``node`` goes out of service, as its SystemInfo notification and its polls say."""
    finesse.status[node] = "OUT_OF_SERVICE"
    watcher.learn(node, _info("OUT_OF_SERVICE", "finesse-a.local" if node == A else "finesse-b.local"))


def _until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.01)


@pytest.fixture
def finesse() -> FakeFinesse:
    return FakeFinesse()


@pytest.fixture
def watcher(finesse: FakeFinesse) -> Any:
    w = NodeWatcher(FinesseNodes([A, B]), finesse, poll_seconds=0.05, max_concurrent=3, switch_after=10.0)
    yield w
    w.stop()


def test_same_node_while_in_service_else_the_other_else_none(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    assert watcher.choose(A) == A  # never probed: in service (sign-in checked it)
    _out(watcher, finesse, A)
    assert watcher.choose(A) == B
    _out(watcher, finesse, B)
    assert watcher.choose(A) is None and watcher.choose(B) is None
    assert not watcher.any_in_service()


def test_xmpp_refused_too_long_on_an_in_service_node_moves_to_the_other(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    assert watcher.choose(A, down_for=9.0) == A
    assert watcher.choose(A, down_for=11.0) == B
    _out(watcher, finesse, B)
    assert watcher.choose(A, down_for=11.0) == A  # in service, though refusing XMPP: better than nothing


def test_a_suspect_node_is_polled_until_every_node_is_back(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    changes: list[tuple[NodeAddress, str]] = []
    watcher.add_listener(lambda node, status: changes.append((node, status)))
    finesse.status[A] = "OUT_OF_SERVICE"
    watcher.suspect(A)
    _until(lambda: (A, "OUT_OF_SERVICE") in changes)
    info = watcher.info(B)
    assert info is not None and info.xmppDomain == "finesse-b.local"
    probes = finesse.probes
    _until(lambda: finesse.probes > probes + 2)  # still polling while A is out
    finesse.status[A] = IN_SERVICE
    _until(lambda: (A, IN_SERVICE) in changes)
    _until(lambda: watcher._thread is None)  # every node in service: polling stopped
    assert changes == [(A, "OUT_OF_SERVICE"), (A, IN_SERVICE)]


def test_an_unreachable_node_is_not_in_service(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    finesse.status[B] = UNREACHABLE
    assert not watcher.refresh(B)
    assert watcher.status(B) == UNREACHABLE and watcher.choose(B) == A


def test_rest_fails_fast_with_5030_while_no_node_is_in_service(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    nodes = watcher.nodes
    nodes.gate = watcher
    _out(watcher, finesse, A)
    _out(watcher, finesse, B)
    rest = FinesseRest(nodes, "1001", "secret")
    sent: list[str] = []
    rest._exchange = lambda node, *a: sent.append(node.url)  # type: ignore[method-assign, assignment]
    started = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        rest.dialog_action("1", "ANSWER", "71001")
    assert refused.value.code == 5030 and sent == [] and time.monotonic() - started < 0.5
    rest.close()


def test_rest_goes_only_to_nodes_in_service(watcher: NodeWatcher, finesse: FakeFinesse) -> None:
    nodes = watcher.nodes
    nodes.gate = watcher
    _out(watcher, finesse, A)
    rest = FinesseRest(nodes, "1001", "secret")
    sent: list[str] = []

    def exchange(node: NodeAddress, *args: Any) -> tuple[int, bytes]:
        sent.append(node.url)
        return 202, b""
    rest._exchange = exchange  # type: ignore[method-assign, assignment]
    rest.dialog_action("1", "ANSWER", "71001")
    assert sent == [B.url]
    rest.close()


def test_reconnect_delays_are_jittered_per_agent() -> None:
    delays = {round(backoff_delay(0, 1.0, 30.0), 6) for _ in range(200)}
    assert len(delays) > 150 and all(1.0 <= d <= 2.0 for d in delays)


def test_max_concurrent_bounds_the_slots(watcher: NodeWatcher) -> None:
    taken = [watcher.rest_slots.acquire(blocking=False) for _ in range(4)]
    assert taken == [True, True, True, False]
    for _ in range(3):
        watcher.rest_slots.release()
