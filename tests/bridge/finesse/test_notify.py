"""NotifyHub against a real simulator over loopback: sign-in, notifications, failures, reconnects, TLS.

Callbacks land in queues; tests wait on them with deadlines, never sleep.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest
import requests

from bridge.errors import BadCredentials, Timeout, Unavailable
from bridge.finesse.model import Agent as UserModel
from bridge.finesse import model, xmppclient
from bridge.finesse.model import Update
from bridge.finesse.notify import AgentConnection, NotifyHub, backoff_delay
from simulator.config import SimConfig
from simulator.server import Node, Simulator
from simulator.tls import make_certificate
from simulator.xmpp import XmppServer

PASSWORD = "notify-pass"
WAIT = 5.0
GOOD = "<Update><event>PUT</event><requestId></requestId><source>/finesse/api/User/1001</source></Update>"


class Agent:
    """One agent's notification callbacks as queues, and the verbs the tests need."""

    def __init__(self, sim: Simulator, user: str = "1001", node: str = "primary") -> None:
        self.sim, self.user = sim, user
        self.node = sim.primary if node == "primary" else sim.secondary
        self.base = f"http://127.0.0.1:{self.node.rest_port}"
        self.updates: queue.Queue[tuple[str, Update]] = queue.Queue()
        self.states: queue.Queue[tuple[str, str]] = queue.Queue()

    def on_update(self, node: str, update: Update) -> None:
        self.updates.put((node, update))

    def on_state(self, kind: str, state: str) -> None:
        self.states.put((kind, state))

    def connect(self, hub: NotifyHub, **overrides: Any) -> AgentConnection:
        args: dict[str, Any] = dict(user=self.user, password=PASSWORD, host="127.0.0.1", port=self.node.xmpp_port,
                                    domain=self.node.host, tls="none", on_update=self.on_update,
                                    on_state=self.on_state)
        args.update(overrides)
        return hub.connect(**args)

    def login(self) -> None:
        body = f"<User><state>LOGIN</state><extension>7{self.user}</extension></User>"
        response = requests.put(f"{self.base}/finesse/api/User/{self.user}", data=body, auth=(self.user, PASSWORD),
                                headers={"Content-Type": "application/xml"}, timeout=WAIT)
        assert response.status_code == 202, response.text

    def publish(self, payload: str, node: str | None = None) -> None:
        """Publish a raw ``<Update>`` text through the simulator, as Finesse would."""
        node = node or f"/finesse/api/User/{self.user}"
        self.sim.call(lambda: xmpp(self.node).publish(node, payload, [self.user]))

    def next_update(self, timeout: float = WAIT) -> tuple[str, Update]:
        try:
            return self.updates.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.user}: no update within {timeout} s") from None

    def wait_update(self, match: Callable[[Update], bool], timeout: float = WAIT) -> Update:
        seen = []
        while True:
            node, update = self.next_update(timeout)
            if match(update):
                return update
            seen.append((node, update.kind, update.event))

    def wait_user(self, timeout: float = WAIT) -> UserModel:
        update = self.wait_update(lambda u: u.kind == "user", timeout)
        assert update.user is not None
        return update.user

    def wait_state(self, kind: str, state: str, timeout: float = WAIT) -> list[tuple[str, str]]:
        """Every state reported up to and including (kind, state)."""
        seen: list[tuple[str, str]] = []
        while True:
            try:
                seen.append(self.states.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"{self.user}: no {kind} {state} within {timeout} s; saw {seen}") from None
            if seen[-1] == (kind, state):
                return seen


def xmpp(node: Node) -> XmppServer:
    """A node's XMPP endpoint; call its methods in the simulator's loop (``sim.call``)."""
    assert node.xmpp is not None
    return node.xmpp


def control(sim: Simulator, path: str, body: Any) -> None:
    response = requests.post(f"http://127.0.0.1:{sim.primary.rest_port}/sim/api{path}", json=body, timeout=WAIT)
    assert response.status_code in (200, 201), response.text


def config(**overrides: Any) -> SimConfig:
    base: dict[str, Any] = dict(rest_port=0, xmpp_port=0, password=PASSWORD, outbound_answer_seconds=None)
    base.update(overrides)
    return SimConfig(**base)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(config()).start_in_thread()
    yield simulator
    simulator.stop_thread()


@pytest.fixture
def tls_sim(tmp_path: Any) -> Iterator[Simulator]:
    simulator = Simulator(config(xmpp_tls=True, xmpp_require_tls=True, tls_dir=str(tmp_path / "sim"),
                                 agent_count=50)).start_in_thread()
    yield simulator
    simulator.stop_thread()


@pytest.fixture
def hub() -> Iterator[NotifyHub]:
    notify = NotifyHub(connect_timeout=WAIT, reconnect_min=0.05, reconnect_max=0.2).start()
    yield notify
    notify.stop()


def test_sign_in_notification_reaches_on_update(sim: Simulator, hub: NotifyHub) -> None:
    agent = Agent(sim)
    conn = agent.connect(hub)
    assert conn.connected and hub.client_count() == 1
    assert conn.jid.startswith(f"1001@{sim.primary.host}/cti-")
    assert ("xmpp", "connected") in agent.wait_state("xmpp", "connected")
    agent.login()
    node, update = agent.next_update()
    assert node == "/finesse/api/User/1001" and update.kind == "user" and update.event == "PUT"
    assert update.user is not None and update.user.id == "1001" and update.user.state == "NOT_READY"
    assert update.user.extension == "71001"


def test_each_connection_has_its_own_resource(sim: Simulator, hub: NotifyHub) -> None:
    first, second = Agent(sim).connect(hub), Agent(sim).connect(hub)
    assert first.jid != second.jid and hub.client_count() == 2


def test_inbound_call_arrives_as_a_dialogs_update(sim: Simulator, hub: NotifyHub) -> None:
    agent = Agent(sim)
    agent.connect(hub)
    agent.login()
    agent.wait_update(lambda u: u.kind == "user")
    control(sim, "/calls", {"to": "1001", "from": "5551234"})
    update = agent.wait_update(lambda u: u.kind == "dialogs")
    assert update.event == "POST" and update.source == "/finesse/api/User/1001/Dialogs"
    assert len(update.dialogs) == 1 and model.text(update.dialogs[0], "state") == "ALERTING"
    assert model.text(update.dialogs[0], "fromAddress") == "5551234"


def test_wrong_password_is_bad_credentials(sim: Simulator, hub: NotifyHub) -> None:
    with pytest.raises(BadCredentials):
        Agent(sim).connect(hub, password="wrong")
    assert hub.client_count() == 0


def test_nothing_listening_is_unavailable(hub: NotifyHub) -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused, and no one can take the port
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(Unavailable, match="cannot connect"):
            hub.connect(user="1001", password=PASSWORD, host="127.0.0.1", port=port, domain="finesse-a.local",
                        tls="none", on_update=lambda n, u: None, on_state=lambda k, s: None)
    assert hub.client_count() == 0


def test_a_server_that_never_answers_is_a_timeout() -> None:
    notify = NotifyHub(connect_timeout=0.3).start()
    try:
        with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody speaks XMPP
            with pytest.raises(Timeout):
                notify.connect(user="1001", password=PASSWORD, host="127.0.0.1", port=silent.getsockname()[1],
                               domain="finesse-a.local", tls="none", on_update=lambda n, u: None,
                               on_state=lambda k, s: None)
        assert notify.client_count() == 0
    finally:
        notify.stop()


def test_plaintext_only_to_loopback_and_tls_modes_checked(hub: NotifyHub) -> None:
    args: dict[str, Any] = dict(user="1001", password=PASSWORD, port=5222, domain="finesse-a.local",
                                on_update=lambda n, u: None, on_state=lambda k, s: None)
    with pytest.raises(ValueError, match="loopback"):
        hub.connect(host="192.0.2.10", tls="none", **args)
    with pytest.raises(ValueError, match="tls must be"):
        hub.connect(host="127.0.0.1", tls="direct", **args)


def test_the_hub_refuses_unverified_tls_and_calls_before_start() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="verify"):
        NotifyHub(ssl_context=unverified)
    with pytest.raises(RuntimeError, match="start"):
        NotifyHub().connect(user="1001", password=PASSWORD, host="127.0.0.1", port=5222, domain="x", tls="none",
                            on_update=lambda n, u: None, on_state=lambda k, s: None)


def test_starttls_with_the_simulator_certificate_as_ca(tls_sim: Simulator) -> None:
    notify = NotifyHub(ca_bundle=tls_sim.cert_path, connect_timeout=WAIT).start()
    try:
        agent = Agent(tls_sim)
        conn = agent.connect(notify, tls="starttls")
        assert conn.connected and conn.ssl_context is notify.ssl_context
        agent.login()
        assert agent.wait_user().state == "NOT_READY"
    finally:
        notify.stop()


def test_a_tls_connection_reads_through_a_small_buffer_and_large_notifications_arrive_whole(
        tls_sim: Simulator) -> None:
    notify = NotifyHub(ca_bundle=tls_sim.cert_path, connect_timeout=WAIT).start()
    try:
        agent = Agent(tls_sim)
        conn = agent.connect(notify, tls="starttls")
        protocol = conn._xmpp.transport._ssl_protocol  # asyncio's SSLProtocol under slixmpp
        assert len(protocol._ssl_buffer) == xmppclient.TLS_READ_BUFFER < 256 * 1024
        big = "x" * 200_000  # more than ten TLS records, each read through the small buffer
        agent.publish(GOOD.replace("<requestId></requestId>", f"<requestId>{big}</requestId>"))
        agent.publish(GOOD.replace("PUT", "DELETE"))
        assert agent.next_update()[1].requestId == big
        assert agent.next_update()[1].event == "DELETE"
        assert conn.connected
    finally:
        notify.stop()


# SCRAM's Hi (RFC 5802 2.2) is PBKDF2's first block: RFC 6070's PBKDF2-HMAC-SHA1 vectors and the first
# 32 bytes of RFC 7914's PBKDF2-HMAC-SHA256 one.
@pytest.mark.parametrize("name, password, salt, iterations, expect", [
    ("sha1", "password", b"salt", 1, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),
    ("sha1", "password", b"salt", 4096, "4b007901b765489abead49d926f721d065a429c1"),
    ("sha256", "passwd", b"salt", 1, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"),
])
def test_scram_hi_is_pbkdf2(name: str, password: str, salt: bytes, iterations: int, expect: str) -> None:
    from slixmpp.util.sasl.mechanisms import SCRAM
    mech = SCRAM.__new__(SCRAM)  # Hi needs only the hash
    mech.hash = getattr(hashlib, name)
    assert SCRAM.Hi is not xmppclient.SLIXMPP_HI  # the C PBKDF2 is installed...
    assert mech.Hi(password, salt, iterations).hex() == expect
    assert xmppclient.SLIXMPP_HI(mech, password, salt, iterations).hex() == expect  # ...and agrees with slixmpp's


@pytest.mark.parametrize("trust", ["system", "other-ca"])
def test_starttls_with_an_untrusted_certificate_fails_fast(tls_sim: Simulator, tmp_path: Any, trust: str) -> None:
    other_ca = make_certificate([tls_sim.primary.host], str(tmp_path / "other"))[0] if trust == "other-ca" else None
    notify = NotifyHub(ca_bundle=other_ca, connect_timeout=WAIT).start()
    try:
        with pytest.raises(Unavailable, match="not trusted"):
            Agent(tls_sim).connect(notify, tls="starttls")
        assert notify.client_count() == 0
    finally:
        notify.stop()


def test_starttls_required_never_signs_in_without_it(sim: Simulator, hub: NotifyHub) -> None:
    # The plaintext simulator offers no STARTTLS: refuse rather than send the password in clear.
    with pytest.raises(Unavailable, match="STARTTLS"):
        Agent(sim).connect(hub, tls="starttls")


HOSTILE = {
    "internal entity": "<!DOCTYPE x [<!ENTITY a 'aaa'>]><Update>&a;CANARY</Update>",
    "billion laughs": ("<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;'>"
                       "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]><Update>&lol3;CANARY</Update>"),
    "external entity": '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Update>&e;CANARY</Update>',
    "malformed": "<Update><data>CANARY",
    "wrong root": "<User><state>CANARY</state></User>",
    "oversized": "<Update><requestId>" + "CANARY" * 50_000 + "</requestId></Update>",
}


def test_hostile_payloads_are_dropped_and_the_session_goes_on(sim: Simulator, hub: NotifyHub,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.finesse.notify")
    agent = Agent(sim)
    conn = agent.connect(hub)
    for payload in HOSTILE.values():
        agent.publish(payload)
    agent.login()
    node, update = agent.next_update()  # the first thing through is the good notification
    assert update.kind == "user" and update.user is not None and update.user.state == "NOT_READY"
    assert conn.connected and agent.updates.empty()
    dropped = [r for r in caplog.records if "dropped a notification" in r.getMessage()]
    assert len(dropped) == len(HOSTILE)
    assert "CANARY" not in caplog.text  # the reason is logged, never the payload


def test_an_on_update_that_raises_does_not_kill_the_client(sim: Simulator, hub: NotifyHub,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(sim)
    calls = []

    def on_update(node: str, update: Update) -> None:
        calls.append(update)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")
        agent.on_update(node, update)
    conn = agent.connect(hub, on_update=on_update)
    agent.publish(GOOD)
    agent.publish(GOOD.replace("PUT", "DELETE"))
    assert agent.next_update()[1].event == "DELETE"
    assert conn.connected and "on_update raised" in caplog.text


def test_pubsub_events_from_anyone_but_the_pubsub_service_are_ignored(sim: Simulator, hub: NotifyHub) -> None:
    wary, trusting = Agent(sim), Agent(sim)
    wary.connect(hub, pubsub="pubsub.elsewhere.example")
    wary.publish(GOOD)  # from pubsub.finesse-a.local, which this connection was told not to trust
    trusting.connect(hub)  # signing in takes round trips through the same loop, after the event above
    trusting.publish(GOOD.replace("PUT", "POST"))  # both sessions of 1001 get it; only one may report it
    assert trusting.next_update()[1].event == "POST"
    assert wary.updates.empty()


def test_xmpp_down_then_up_reconnects_and_notifications_flow_again(sim: Simulator, hub: NotifyHub) -> None:
    agent = Agent(sim)
    conn = agent.connect(hub)
    agent.wait_state("xmpp", "connected")
    control(sim, "/nodes/primary", {"xmpp": "down"})
    seen = agent.wait_state("xmpp", "reconnecting")
    assert ("xmpp", "disconnected") in seen and not conn.connected
    agent.wait_state("xmpp", "reconnecting")  # at least one refused attempt while the port is closed
    control(sim, "/nodes/primary", {"xmpp": "up"})
    agent.wait_state("xmpp", "connected")
    assert conn.connected and hub.client_count() == 1
    agent.login()
    assert agent.wait_user().state == "NOT_READY"


def test_close_sends_unavailable_and_leaves_no_client(sim: Simulator, hub: NotifyHub) -> None:
    agent = Agent(sim)
    conn = agent.connect(hub)
    assert sim.call(lambda: xmpp(sim.primary).users()) == {"1001"}
    conn.close()
    assert hub.client_count() == 0 and not conn.connected
    assert sim.call(lambda: (xmpp(sim.primary).users(), xmpp(sim.primary).session_count())) == (set(), 0)
    conn.close()  # idempotent
    states = [agent.states.get_nowait() for _ in range(agent.states.qsize())]
    assert ("xmpp", "disconnected") not in states  # closing is not a drop: no report, no reconnect


def test_fifty_agents_share_one_ssl_context_and_get_their_own_notifications(tls_sim: Simulator) -> None:
    notify = NotifyHub(ca_bundle=tls_sim.cert_path, connect_timeout=WAIT).start()
    try:
        agents = [Agent(tls_sim, str(1001 + k)) for k in range(50)]
        with ThreadPoolExecutor(max_workers=10) as pool:  # connect is called from many request threads
            conns = list(pool.map(lambda a: a.connect(notify, tls="starttls"), agents))
        assert notify.client_count() == 50
        assert all(c.ssl_context is notify.ssl_context for c in conns)
        assert len({c.jid for c in conns}) == 50
        for agent in agents:
            agent.login()
        for agent in agents:
            node, update = agent.next_update()
            assert node == f"/finesse/api/User/{agent.user}"
            assert update.user is not None and update.user.id == agent.user and update.user.state == "NOT_READY"
    finally:
        notify.stop()
    assert notify.client_count() == 0


def test_finesse_presence_follows_the_webapp(sim: Simulator, hub: NotifyHub) -> None:
    agent = Agent(sim)
    agent.connect(hub)
    agent.wait_state("finesse", "available")
    control(sim, "/nodes/primary", {"webapp": "down"})
    agent.wait_state("finesse", "unavailable")
    control(sim, "/nodes/primary", {"webapp": "up"})
    agent.wait_state("finesse", "available")


def test_stop_closes_every_connection(sim: Simulator) -> None:
    notify = NotifyHub().start()
    for user in ("1001", "1002", "1003"):
        Agent(sim, user).connect(notify)
    notify.stop()
    assert notify.client_count() == 0
    assert sim.call(lambda: xmpp(sim.primary).session_count()) == 0


def test_backoff_grows_with_jitter_inside_its_bounds() -> None:
    assert backoff_delay(0, 1.0, 30.0, rand=lambda: 0.0) == 1.0
    assert backoff_delay(0, 1.0, 30.0, rand=lambda: 1.0) == 2.0
    assert backoff_delay(3, 1.0, 30.0, rand=lambda: 1.0) == 16.0
    assert backoff_delay(50, 1.0, 30.0, rand=lambda: 1.0) == 30.0
    assert all(1.0 <= backoff_delay(n, 1.0, 30.0) <= 30.0 for n in range(100))
