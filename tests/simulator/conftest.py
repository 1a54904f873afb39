"""Fixtures: a real simulator on free loopback ports, per test, and verbs to drive it."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from simulator.config import SimConfig
from simulator.server import Simulator

from .harness import AsyncThread, Control, Rest, XmppAgent

PASSWORD = "test-pass"


@pytest.fixture(scope="session")
def xmpp_loop() -> Iterator[AsyncThread]:
    loop = AsyncThread()
    yield loop
    loop.close()


class Harness:
    """A running simulator with helpers: ``h.agent("1001")`` signs in over REST and XMPP."""

    def __init__(self, simulator: Simulator, loop: AsyncThread) -> None:
        self.simulator = simulator
        self.loop = loop
        self.primary = f"http://127.0.0.1:{simulator.primary.rest_port}"
        self.secondary = f"http://127.0.0.1:{simulator.secondary.rest_port}"
        self.control = Control(self.primary)
        self.clients: list[XmppAgent] = []

    def rest(self, user: str, password: str = PASSWORD, node: str = "primary") -> Rest:
        return Rest(self.primary if node == "primary" else self.secondary, user, password)

    def xmpp(self, user: str, password: str = PASSWORD, node: str = "primary", resource: str | None = None) -> XmppAgent:
        n = self.simulator.primary if node == "primary" else self.simulator.secondary
        client = XmppAgent(self.loop, user, password, n.xmpp_port, n.host, resource)
        self.clients.append(client)
        return client

    def agent(self, user: str, ready: bool = False, node: str = "primary") -> tuple[Rest, XmppAgent]:
        """Connect XMPP, sign in with the seeded extension, and wait for NOT_READY (and READY)."""
        xmpp = self.xmpp(user, node=node)
        assert xmpp.connect()
        rest = self.rest(user, node=node)
        rest.login("7" + user)
        xmpp.wait_user("NOT_READY")
        if ready:
            assert rest.state("READY").status_code == 202
            xmpp.wait_user("READY")
        return rest, xmpp

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()


def make_config(**overrides: Any) -> SimConfig:
    base = dict(rest_port=0, xmpp_port=0, password=PASSWORD, outbound_answer_seconds=None,
                wrap_up_seconds=30.0, presence_grace_seconds=60.0, lockout_seconds=300.0)
    base.update(overrides)
    return SimConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def h(request: pytest.FixtureRequest, xmpp_loop: AsyncThread) -> Iterator[Harness]:
    marker = request.node.get_closest_marker("sim")
    config = make_config(**(marker.kwargs if marker else {}))
    simulator = Simulator(config).start_in_thread()
    harness = Harness(simulator, xmpp_loop)
    try:
        yield harness
    finally:
        harness.close()
        simulator.stop_thread()
