"""FinesseRest against a real simulator on loopback: calls, node failover, error translation, secrets."""
from __future__ import annotations

import base64
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import requests

from bridge.errors import (ActionRefused, BadCredentials, InvalidParams, NoSuchCall, Timeout, TooManyAttempts,
                           Unavailable)
from bridge.finesse.model import ReasonCode
from bridge.finesse.rest import FinesseNodes, FinesseReply, FinesseRest, NodeAddress
from simulator.config import SimConfig
from simulator.server import Simulator

PASSWORD = "Corr3ct-Horse-Battery"
WRONG = "Wr0ng-Staple-Password"
USER, EXT = "1001", "71001"


class Sim:
    """A running simulator and verbs to drive it: its nodes, a client per agent, the control API."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.primary, self.secondary = (
            NodeAddress(f"http://127.0.0.1:{n.rest_port}", "127.0.0.1", n.xmpp_port)
            for n in (simulator.primary, simulator.secondary))
        self.nodes = FinesseNodes([self.primary, self.secondary])
        self.clients: list[FinesseRest] = []

    def rest(self, user: str = USER, password: str = PASSWORD, nodes: FinesseNodes | None = None,
             **options: Any) -> FinesseRest:
        client = FinesseRest(nodes or self.nodes, user, password, **options)
        self.clients.append(client)
        return client

    def control(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = requests.post(f"{self.primary.url}/sim/api/{path}", json=body, timeout=5)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def set_node(self, name: str, status: str) -> None:
        self.control(f"nodes/{name}", {"status": status})

    def ring(self, to: str = USER, ani: str = "4155550100", **extra: Any) -> str:
        return str(self.control("calls", {"to": to, "from": ani, **extra})["dialogId"])

    def agent(self, user: str, name: str) -> Any:
        """A field of the simulator's agent, read in the simulator's own loop."""
        sim = self.simulator.sim
        assert sim is not None
        return self.simulator.call(lambda: getattr(sim.agents[user], name))


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[Sim]:
    marker = request.node.get_closest_marker("sim")
    config = SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD, outbound_answer_seconds=None,
                       **(marker.kwargs if marker else {}))
    simulator = Simulator(config).start_in_thread()
    harness = Sim(simulator)
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.close()
        simulator.stop_thread()


@pytest.fixture
def dead_node() -> Iterator[NodeAddress]:
    """A loopback port that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield NodeAddress(f"http://127.0.0.1:{sock.getsockname()[1]}", "127.0.0.1", 5222)
    finally:
        sock.close()


@pytest.fixture
def stalled_node() -> Iterator[NodeAddress]:
    """A loopback port that accepts connections (in the backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield NodeAddress(f"http://127.0.0.1:{sock.getsockname()[1]}", "127.0.0.1", 5222)
    finally:
        sock.close()


class Stub(BaseHTTPRequestHandler):
    """A fake Finesse that answers every request with ``body`` (or hangs up) and records the headers."""

    body = b""
    hang_up = False
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        if self.hang_up:  # read the request, then close without a word
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[NodeAddress, type[Stub]]]:
    handler = type("StubHandler", (Stub,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield NodeAddress(f"http://127.0.0.1:{server.server_address[1]}", "127.0.0.1", 5222), handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- calls ------------------------------------------------------------------------------------------

def test_system_info_picks_the_in_service_node(sim: Sim) -> None:
    rest = sim.rest()
    assert (rest.system_info().status, rest.system_info().xmppDomain) == ("IN_SERVICE", "finesse-a.local")
    sim.set_node("primary", "OUT_OF_SERVICE")
    info = rest.system_info()
    assert (info.status, info.xmppDomain, info.deploymentType) == ("IN_SERVICE", "finesse-b.local", "UCCE")
    assert sim.nodes.current() == sim.secondary
    assert rest.system_info(sim.primary).status == "OUT_OF_SERVICE"


def test_sign_in_then_get_user(sim: Sim) -> None:
    rest = sim.rest()
    assert rest.get_user(USER).state == "LOGOUT"
    rest.sign_in(USER, EXT, request_id="login-1")
    agent = rest.get_user(USER)
    assert (agent.id, agent.state, agent.extension, agent.teamName) == (USER, "NOT_READY", EXT, "Sales")


def test_set_state_ready_then_not_ready_with_reason(sim: Sim) -> None:
    rest = sim.rest()
    rest.sign_in(USER, EXT)
    rest.set_state(USER, "READY")
    assert rest.get_user(USER).state == "READY"
    rest.set_state(USER, "NOT_READY", "2")
    agent = rest.get_user(USER)
    assert agent.state == "NOT_READY"
    assert agent.reasonCode == {"id": "2", "code": "11", "label": "Lunch", "category": "NOT_READY"}
    with pytest.raises(InvalidParams):
        rest.set_state(USER, "LOGIN")


def test_reason_codes_and_wrap_up_reasons(sim: Sim) -> None:
    rest = sim.rest()
    not_ready = rest.reason_codes(USER, "NOT_READY")
    assert not_ready[0] == ReasonCode(id="1", code="10", label="Break", category="NOT_READY")
    assert [r.id for r in not_ready] == ["1", "2", "3", "4"]
    assert [r.to_json() for r in rest.reason_codes(USER, "LOGOUT")] == [
        {"id": "11", "code": "20", "label": "End of shift"}, {"id": "12", "code": "21", "label": "Personal"}]
    assert rest.wrap_up_reasons(USER) == [{"id": "1", "label": "Sale"}, {"id": "2", "label": "Resolved"},
                                          {"id": "3", "label": "Callback requested"},
                                          {"id": "4", "label": "Wrong number"}]


def test_inbound_call_ringing_then_answered(sim: Sim) -> None:
    rest = sim.rest()
    rest.sign_in(USER, EXT)
    dialog_id = sim.ring(variables={"callVariable1": "case-42"})
    [call] = rest.get_dialogs(USER, EXT)
    assert (call.id, call.state, call.direction, call.ani) == (dialog_id, "ringing", "inbound", "4155550100")
    assert call.variables["callVariable1"] == "case-42"
    assert "answer" in call.actions
    rest.dialog_action(dialog_id, "ANSWER", EXT, request_id="answer-1")  # 202
    assert rest.get_dialog(dialog_id, EXT).state == "active"


def test_make_call(sim: Sim) -> None:
    rest = sim.rest()
    rest.sign_in(USER, EXT)
    rest.make_call(USER, EXT, "4155550123", {"callVariable2": "ticket-77"})
    [call] = rest.get_dialogs(USER, EXT)
    assert (call.direction, call.state, call.to) == ("outbound", "dialing", "4155550123")
    assert call.variables["callVariable2"] == "ticket-77"


def test_refused_action_carries_finesse_error(sim: Sim) -> None:
    rest = sim.rest()
    rest.sign_in(USER, EXT)
    dialog_id = sim.ring()
    with pytest.raises(ActionRefused) as caught:
        rest.dialog_action(dialog_id, "HOLD", EXT)
    assert caught.value.code == 4090
    assert caught.value.data["errorType"] == "Invalid State"
    assert set(caught.value.data) == {"errorType", "errorMessage", "errorData"}
    assert isinstance(caught.value.__cause__, FinesseReply) and caught.value.__cause__.status == 400
    with pytest.raises(ActionRefused) as self_call:
        rest.make_call(USER, EXT, EXT)
    assert self_call.value.data["errorType"] == "Invalid Destination"
    with pytest.raises(NoSuchCall):
        rest.get_dialog("99999999", EXT)
    with pytest.raises(InvalidParams):
        rest.get_dialog("..", EXT)


# -- credentials --------------------------------------------------------------------------------------

@pytest.mark.sim(lockout_attempts=2)
def test_wrong_password_is_tried_once_on_one_node(sim: Sim) -> None:
    with pytest.raises(BadCredentials) as caught:
        sim.rest(password=WRONG).get_user(USER)
    assert caught.value.code == 4010
    assert sim.agent(USER, "failed_logins") == 1  # a retry on the secondary would have locked the account
    assert sim.agent(USER, "locked_until") == 0
    assert sim.nodes.current() == sim.primary


@pytest.mark.sim(lockout_attempts=2)
def test_locked_account_gives_too_many_attempts(sim: Sim) -> None:
    with pytest.raises(BadCredentials):
        sim.rest(password=WRONG).sign_in(USER, EXT)
    with pytest.raises(TooManyAttempts) as caught:
        sim.rest(password=WRONG).sign_in(USER, EXT)
    assert caught.value.code == 4029
    with pytest.raises(TooManyAttempts):
        sim.rest().get_user(USER)


def test_credentials_never_leak(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good, bad = sim.rest(), sim.rest(password=WRONG)
    good.sign_in(USER, EXT)
    with pytest.raises(BadCredentials) as caught:
        bad.get_user(USER)
    sim.set_node("primary", "OUT_OF_SERVICE")
    sim.set_node("secondary", "OUT_OF_SERVICE")
    with pytest.raises(Unavailable) as down:
        bad.sign_in(USER, EXT)
    token = sim.rest(token="tok-" + PASSWORD)
    texts = [caplog.text, repr(good), repr(bad), repr(token), str(caught.value), repr(caught.value),
             str(caught.value.to_json()), str(caught.value.__cause__), str(down.value), repr(down.value.__cause__)]
    for secret in (PASSWORD, WRONG, base64.b64encode(f"{USER}:{WRONG}".encode()).decode()):
        assert not any(secret in text for text in texts)
    assert "1001" in repr(good)
    assert "GET http://127.0.0.1" in caplog.text and "401" in caplog.text  # DEBUG was captured


# -- nodes and failover -------------------------------------------------------------------------------

def test_primary_out_of_service_fails_over_transparently(sim: Sim) -> None:
    rest = sim.rest()
    rest.sign_in(USER, EXT)
    sim.set_node("primary", "OUT_OF_SERVICE")
    assert rest.get_user(USER).state == "NOT_READY"
    assert sim.nodes.current() == sim.secondary
    rest.set_state(USER, "READY")  # a PUT answered 503 never happened: it may go to the other node
    assert rest.get_user(USER).state == "READY"


def test_both_nodes_out_of_service(sim: Sim) -> None:
    rest = sim.rest()
    sim.set_node("primary", "OUT_OF_SERVICE")
    sim.set_node("secondary", "OUT_OF_SERVICE")
    with pytest.raises(Unavailable) as caught:
        rest.get_user(USER)
    assert caught.value.code == 5030
    with pytest.raises(Unavailable):
        rest.system_info()


def test_nothing_listening(sim: Sim, dead_node: NodeAddress) -> None:
    with pytest.raises(Unavailable) as caught:
        sim.rest(nodes=FinesseNodes([dead_node])).get_user(USER)
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert caught.value.__cause__.request is None  # the prepared request holds the Authorization header
    nodes = FinesseNodes([dead_node, sim.primary])
    sim.rest(nodes=nodes).sign_in(USER, EXT)  # refused before sending: safe to send elsewhere
    assert nodes.current() == sim.primary
    assert sim.agent(USER, "state") == "NOT_READY"


def test_read_timeout_is_not_retried(sim: Sim, stalled_node: NodeAddress) -> None:
    nodes = FinesseNodes([stalled_node, sim.primary])
    with pytest.raises(Timeout) as caught:
        sim.rest(nodes=nodes, timeout=(1, 0.2)).sign_in(USER, EXT)
    assert caught.value.code == 5040
    assert sim.agent(USER, "state") == "LOGOUT"  # the other node was not asked to sign in again
    assert nodes.current() == stalled_node


def test_connection_lost_after_sending_a_put_is_not_retried(sim: Sim, stub: tuple[NodeAddress, type[Stub]]) -> None:
    node, handler = stub
    handler.hang_up = True
    nodes = FinesseNodes([node, sim.primary])
    with pytest.raises(Unavailable):
        sim.rest(nodes=nodes).sign_in(USER, EXT)  # the first node may have acted: do not act twice
    assert len(handler.seen) == 1 and sim.agent(USER, "state") == "LOGOUT"
    fresh = FinesseNodes([node, sim.primary])
    assert sim.rest(nodes=fresh).get_user(USER).state == "LOGOUT"  # a GET may go on to the next node
    assert len(handler.seen) == 2 and fresh.current() == sim.primary


def test_node_preference_moves_and_returns() -> None:
    a, b = NodeAddress("http://127.0.0.1:1", "127.0.0.1"), NodeAddress("http://127.0.0.1:2", "127.0.0.1")
    nodes = FinesseNodes([a, b])
    assert (nodes.current(), nodes.others(a)) == (a, [b])
    nodes.mark_failed(a)
    assert nodes.current() == b
    nodes.mark_good(a)  # b has not failed: stay there
    assert nodes.current() == b
    nodes.mark_failed(b)
    assert nodes.current() == a


# -- addresses ---------------------------------------------------------------------------------------

def test_plain_http_only_on_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        NodeAddress("http://fin-a.example.com:8082", "fin-a.example.com", 5222)
    with pytest.raises(ValueError, match="loopback"):
        FinesseNodes.from_config([{"url": "http://10.0.0.5:8082"}])
    for url in ("http://localhost:8082", "http://127.3.2.1:8082", "http://[::1]:8082", "https://fin-a.example.com:8445/"):
        assert NodeAddress(url, "x").url == url.rstrip("/")


def test_node_from_config() -> None:
    node = NodeAddress.from_config({"url": "https://fin-a.example.com:8445"})
    assert (node.url, node.xmpp_host, node.xmpp_port) == ("https://fin-a.example.com:8445", "fin-a.example.com", 5222)
    node = NodeAddress.from_config({"url": "http://127.0.0.1:8082", "xmpp": "[::1]:5223"})
    assert (node.xmpp_host, node.xmpp_port) == ("::1", 5223)
    for entry, words in (({"url": "https://a", "xmp": "a:1"}, "unknown key"), ({}, "url"),
                         ({"url": "https://a", "xmpp": "a:99999"}, "port"), ({"url": "ftp://a"}, "https"),
                         ({"url": "https://a/finesse"}, "path"), ({"url": "https://a", "xmpp": 5222}, "host:port"),
                         ("https://a", "object")):
        with pytest.raises(ValueError, match=words):
            NodeAddress.from_config(entry)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as caught:
        NodeAddress.from_config({"url": f"https://u:{PASSWORD}@a"})
    assert PASSWORD not in str(caught.value)


# -- what goes on the wire, and what we refuse --------------------------------------------------------

def test_headers_request_id_and_bearer(stub: tuple[NodeAddress, type[Stub]]) -> None:
    node, handler = stub
    handler.body = b"<User><loginId>1001</loginId><state>READY</state></User>"
    with FinesseRest(FinesseNodes([node]), USER, PASSWORD) as basic:
        assert basic.get_user(USER, request_id="req-7").state == "READY"
    with FinesseRest(FinesseNodes([node]), USER, "", token="jwt-abc") as bearer:
        bearer.get_user(USER)
    assert handler.seen[0]["requestId"] == "req-7"
    assert handler.seen[0]["Authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert handler.seen[1]["Authorization"] == "Bearer jwt-abc"
    assert "requestId" not in handler.seen[1]


@pytest.mark.parametrize("body", [
    b'<!DOCTYPE User [<!ENTITY x "boom">]><User><loginId>&x;</loginId></User>',
    b"<User><loginId>1001</loginId>",
    b"<ApiErrors/>",
    b"<User>" + b"a" * (300 * 1024) + b"</User>",
])
def test_documents_we_refuse(stub: tuple[NodeAddress, type[Stub]], body: bytes,
                             caplog: pytest.LogCaptureFixture) -> None:
    node, handler = stub
    handler.body = body
    caplog.set_level(logging.DEBUG)
    with FinesseRest(FinesseNodes([node]), USER, PASSWORD) as rest:
        with pytest.raises(Unavailable, match="Finesse sent a document we refuse"):
            rest.get_user(USER)
    assert "boom" not in caplog.text and "loginId" not in caplog.text
