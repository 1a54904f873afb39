"""The toolbar protocol on the wire, and the rules of docs/security.md, against the real stack.

JSON-RPC 2.0 section 7's examples are answered exactly as the specification shows them (parsed
JSON compared for equality), with our method names. Then: agents kept apart, the Origin check
before the upgrade, oversized messages, hostile XML from Finesse, credentials kept out of logs,
and the HTTP endpoints.
"""
from __future__ import annotations

import base64
import binascii
import json
import time
import logging
import re
import socket
from typing import Any

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from bridge import protocol, rpc
from bridge.client import CtiClient, RpcError
from bridge.config import ConfigError
from tests.waiting import until

from .conftest import PASSWORD, Stack


def error(code: int, message: str, id_: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_}


INVALID_REQUEST = error(-32600, "Invalid Request")
PARSE_ERROR = error(-32700, "Parse error")


def exchange(client: CtiClient, message: Any) -> Any:
    """Send a frame as is (a str) or as JSON; the parsed frame that comes back."""
    client.send_raw(message if isinstance(message, str) else json.dumps(message))
    return json.loads(client.receive_raw(timeout=5))


def assert_no_reply(client: CtiClient, message: Any) -> None:
    """Nothing is owed for ``message``: the next frame is the reply to a request sent after it."""
    client.send_raw(message if isinstance(message, str) else json.dumps(message))
    client.send_raw(json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": "after"}))
    reply = json.loads(client.receive_raw(timeout=5))
    assert isinstance(reply, dict) and reply["id"] == "after" and "at" in reply["result"], reply


# -- JSON-RPC 2.0 section 7 ------------------------------------------------------------------------

def test_specification_examples(stack):
    client = stack.client()
    # rpc call with named parameters: a result, and an application error before sign-in
    reply = exchange(client, {"jsonrpc": "2.0", "method": "session.ping", "params": {}, "id": 3})
    assert set(reply) == {"jsonrpc", "result", "id"} and reply["jsonrpc"] == "2.0" and reply["id"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", reply["result"]["at"])
    assert exchange(client, {"jsonrpc": "2.0", "method": "agent.get", "params": {}, "id": 4}) == \
        error(4001, "Not signed in", 4)
    # a notification
    assert_no_reply(client, {"jsonrpc": "2.0", "method": "session.ping", "params": {}})
    assert_no_reply(client, {"jsonrpc": "2.0", "method": "agent.get"})  # fails, still unanswered
    # a non-existent method
    assert exchange(client, {"jsonrpc": "2.0", "method": "foobar", "id": "1"}) == \
        error(-32601, "Method not found", "1")
    # invalid JSON
    assert exchange(client, '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]') == PARSE_ERROR
    # an invalid Request object
    assert exchange(client, {"jsonrpc": "2.0", "method": 1, "params": "bar"}) == INVALID_REQUEST
    # a batch with invalid JSON
    assert exchange(client, '[{"jsonrpc": "2.0", "method": "session.ping", "params": {}, "id": "1"},'
                            '{"jsonrpc": "2.0", "method"]') == PARSE_ERROR
    # an empty Array
    assert exchange(client, []) == INVALID_REQUEST
    # an invalid batch, but not empty
    assert exchange(client, [1]) == [INVALID_REQUEST]
    # invalid batch
    assert exchange(client, [1, 2, 3]) == [INVALID_REQUEST] * 3
    # all notifications
    assert_no_reply(client, [{"jsonrpc": "2.0", "method": "session.ping", "params": {}},
                             {"jsonrpc": "2.0", "method": "agent.get"}])
    assert client.validation_errors == []


def test_specification_mixed_batch(stack):
    client = stack.agent("1001")
    reply = exchange(client, [
        {"jsonrpc": "2.0", "method": "agent.wrapUpReasons", "id": "1"},
        {"jsonrpc": "2.0", "method": "session.ping", "params": {}},
        {"jsonrpc": "2.0", "method": "call.list", "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "agent.reasonCodes", "params": {"category": "NOT_READY"}, "id": "9"},
    ])
    wrap_ups = client.call("agent.wrapUpReasons")
    reason_codes = client.call("agent.reasonCodes", category="NOT_READY")
    assert wrap_ups and reason_codes
    assert reply == [
        {"jsonrpc": "2.0", "result": wrap_ups, "id": "1"},
        {"jsonrpc": "2.0", "result": [], "id": "2"},
        INVALID_REQUEST,
        error(-32601, "Method not found", "5"),
        {"jsonrpc": "2.0", "result": reason_codes, "id": "9"},
    ]


def test_positional_params_are_invalid_params(stack):
    client = stack.client()
    reply = exchange(client, {"jsonrpc": "2.0", "method": "session.login", "params": ["1001", PASSWORD, "71001"],
                              "id": 1})
    assert reply["id"] == 1 and reply["error"]["code"] == -32602 and "by name" in reply["error"]["message"]
    with pytest.raises(RpcError) as refused:
        client.call("agent.get")
    assert refused.value.code == 4001  # the positional login signed nobody in


@pytest.mark.parametrize("id_", ["req-1", "", 42, 0, None])
def test_id_echoed_exactly(stack, id_):
    client = stack.client()
    reply = exchange(client, {"jsonrpc": "2.0", "method": "session.ping", "id": id_})
    assert reply["id"] == id_ and type(reply["id"]) is type(id_)
    assert exchange(client, {"jsonrpc": "2.0", "method": "agent.get", "id": id_}) == error(4001, "Not signed in", id_)


def test_batch_over_the_limit_is_refused(stack):
    client = stack.client()
    limit = stack.app.config["MAX_BATCH"]
    ping = {"jsonrpc": "2.0", "method": "session.ping"}
    reply = exchange(client, [{**ping, "id": i} for i in range(limit + 1)])
    assert isinstance(reply, dict) and reply["id"] is None and reply["error"]["code"] == -32600
    replies = exchange(client, [{**ping, "id": i} for i in range(limit)])
    assert [r["id"] for r in replies] == list(range(limit))


def test_resume_inside_a_batch_is_a_clear_error(stack):
    first = stack.agent("1001")
    token, seq = first.resume_token, first.last_seq
    second = stack.client()
    reply = exchange(second, [{"jsonrpc": "2.0", "method": "session.resume", "id": "r",
                               "params": {"resumeToken": token, "lastSeq": seq}}])
    assert len(reply) == 1 and reply[0]["id"] == "r" and reply[0]["error"]["code"] == -32602
    assert "batch" in reply[0]["error"]["message"]
    with pytest.raises(RpcError) as refused:
        second.call("agent.get")
    assert refused.value.code == 4001  # the batch did not resume anything
    assert second.resume(token, seq)["replayed"] == 0  # the token still works on its own
    assert second.call("agent.get")["id"] == "1001"


def test_rpc_discover_equals_the_http_document(stack):
    client = stack.client()
    over_http = requests.get(stack.base + "/rpc/openrpc.json", timeout=5)
    assert over_http.status_code == 200 and over_http.headers["Content-Type"].startswith("application/json")
    assert client.call("rpc.discover") == over_http.json() == protocol.document()


# -- agents kept apart -----------------------------------------------------------------------------

SAMPLE_VALUES: dict[str, Any] = {"to": "5550100", "digits": "1", "variables": {"callVariable1": "x"},
                                 "reason": "Sale"}


def call_methods() -> list[tuple[str, dict[str, Any]]]:
    """Every documented call action (call.*) taking a callId, with its other required params filled in.
    (screenpop.blocked also names a callId, but only reports on it: it acts on no call.)"""
    out = []
    for method in protocol.document()["methods"]:
        names = [p["name"] for p in method["params"]]
        if "callId" not in names or not method["name"].startswith("call."):
            continue
        required = [p["name"] for p in method["params"] if p.get("required") and p["name"] != "callId"]
        missing = [name for name in required if name not in SAMPLE_VALUES]
        assert not missing, f"add sample values for {method['name']} params {missing}"
        out.append((method["name"], {name: SAMPLE_VALUES[name] for name in required}))
    assert {name for name, _ in out} == {m for m in rpc.METHODS if m.startswith("call.")} - {"call.list", "call.make"}
    return out


def refuse_all(a: CtiClient, call_id: str) -> None:
    for method, params in call_methods():
        with pytest.raises(RpcError) as refused:
            a.call(method, callId=call_id, **params)
        assert refused.value.code in (4003, 4004), (method, refused.value)
        for extra in ({"agentId": "1002"}, {"extension": "71002"}):  # never honoured
            with pytest.raises(RpcError) as refused:
                a.call(method, callId=call_id, **params, **extra)
            assert refused.value.code == -32602 and next(iter(extra)) in refused.value.message
    assert a.call("call.list") == []


def test_an_agent_can_neither_see_nor_act_on_another_agents_call(stack):
    b = stack.agent("1002", ready=True)
    a = stack.agent("1001")
    dialog = stack.ring(to="1002", ani="4155550100")
    assert b.wait_for("call.ringing")["call"]["id"] == dialog

    before = stack.sim_state()["dialogs"]
    refuse_all(a, dialog)
    assert stack.sim_state()["dialogs"] == before  # Finesse never heard of any of it
    assert [c["state"] for c in b.call("call.list")] == ["ringing"]

    b.call("call.answer", callId=dialog)
    b.wait_for("call.answered")
    before = stack.sim_state()["dialogs"]
    refuse_all(a, dialog)
    assert stack.sim_state()["dialogs"] == before
    assert [(c["id"], c["state"]) for c in b.call("call.list")] == [(dialog, "active")]
    assert [n["method"] for n in b.drain() if n["method"].startswith("call.")] == []  # no hold, no end...

    for method, params in [("agent.get", {"agentId": "1002"}), ("agent.setState", {"state": "NOT_READY", "agentId": "1002"}),
                           ("call.list", {"agentId": "1002"}), ("call.make", {"to": "5550100", "from": "71002"}),
                           ("session.logout", {"agentId": "1002"})]:
        with pytest.raises(RpcError) as refused:
            a.request(method, params)
        assert refused.value.code == -32602, method
    assert a.call("agent.get")["id"] == "1001"
    assert b.call("agent.get")["state"] != "NOT_READY"
    assert [n["method"] for n in a.drain() if n["method"].startswith("call.")] == []  # A never heard of it

    b.call("call.end", callId=dialog)  # B still owns its call
    assert b.wait_for("call.ended")["call"]["id"] == dialog


# -- Origin --------------------------------------------------------------------------------------------

def upgrade(stack: Stack, origin: str | None, host: str | None = None,
            keep: list[socket.socket] | None = None) -> tuple[str, bytes]:
    """A raw WebSocket upgrade request (to 127.0.0.1, ``host`` in its Host header): the status line and
    whatever body came with it. A socket that got its 101 goes to ``keep`` when given, else is closed."""
    port = stack.server.server_port
    lines = [f"GET /rpc HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length and not status.split()[1] == "101":
            while len(body) < int(length.group(1)):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
        if keep is not None and status.split()[1] == "101":
            keep.append(sock)
            sock = None
    finally:
        if sock is not None:
            sock.close()
    return status, body


@pytest.mark.parametrize("origin", ["http://evil.example.test", "http://crm.example.test.evil.test", "null",
                                    "https://crm.example.test", "http://127.0.0.1:1"])
def test_foreign_origin_refused_before_the_upgrade(stack, origin):
    status, body = upgrade(stack, origin)
    assert status.split()[1] == "403", status
    assert origin in json.loads(body)["error"]
    with pytest.raises(ConnectionError):
        stack.client(origin=origin)
    assert requests.get(stack.base + "/healthz", timeout=5).json()["sockets"] == 0


def test_own_allowed_and_absent_origins_are_accepted(stack):
    for origin in (stack.base, "http://crm.example.test", None):
        status, _ = upgrade(stack, origin)
        assert status.split()[1] == "101", (origin, status)
    for origin in (stack.base, "http://crm.example.test"):
        assert "at" in stack.client(origin=origin).call("session.ping")
    # websocket-client sends an Origin of its own unless told not to: a server-side client sends none
    ws = websocket.create_connection(stack.url, timeout=5, suppress_origin=True)
    try:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": 1}))
        assert json.loads(ws.recv())["id"] == 1
    finally:
        ws.close()


def _close_all(stack: Stack, accepted: list[socket.socket]) -> None:
    """Close the accepted sockets once the bridge has them all, and wait until it counts them off."""
    def sockets() -> int:
        return int(requests.get(stack.base + "/healthz", timeout=5).json()["sockets"])
    until(lambda: sockets() == len(accepted), what="the accepted sockets adopted")
    for sock in accepted:
        sock.close()
    until(lambda: sockets() == 0, what="the accepted sockets closed")


def test_a_rebinding_page_is_refused_and_only_loopback_hosts_are_the_bridges_own_origin(stack):
    port = stack.server.server_port
    accepted: list[socket.socket] = []
    # A DNS-rebinding page: evil.example resolves to this bridge, so its Host and Origin agree.
    for host in (f"evil.example:{port}", f"10.0.0.5:{port}", f"localhost.evil.example:{port}"):
        status, body = upgrade(stack, f"http://{host}", host=host)
        assert status.split()[1] == "403", (host, status)
        assert host in json.loads(body)["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.2:{port}", f"[::1]:{port}"):
        status, _ = upgrade(stack, f"http://{host.lower()}", host=host, keep=accepted)
        assert status.split()[1] == "101", (host, status)
    # Own means the same origin: another port or scheme on loopback is some other page.
    for origin in (f"http://localhost:{port + 1}", f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port}/x"):
        assert upgrade(stack, origin)[0].split()[1] == "403", origin
    _close_all(stack, accepted)


@pytest.mark.bridge(PUBLIC_URL="https://Bridge.example.com:8443/cti/")
def test_with_public_url_only_its_origin_is_the_bridges_own(stack):
    port = stack.server.server_port
    accepted: list[socket.socket] = []
    for host in ("bridge.example.com:8443", f"127.0.0.1:{port}"):  # what a proxy in front passes on
        status, _ = upgrade(stack, "https://bridge.example.com:8443", host=host, keep=accepted)
        assert status.split()[1] == "101", (host, status)
    for origin, host in ((f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"),  # loopback is not its own now
                         ("http://bridge.example.com:8443", "bridge.example.com:8443"),  # not https
                         ("https://bridge.example.com", "bridge.example.com"),  # not its port
                         ("https://evil.example:8443", "evil.example:8443")):
        status, _ = upgrade(stack, origin, host=host)
        assert status.split()[1] == "403", (origin, status)
    assert upgrade(stack, "http://crm.example.test", keep=accepted)[0].split()[1] == "101"  # ALLOWED_ORIGINS as before
    _close_all(stack, accepted)


@pytest.mark.bridge(PUBLIC_URL="https://bridge.example.com")
def test_a_public_url_without_a_port_is_its_schemes_default(stack):
    accepted: list[socket.socket] = []
    assert upgrade(stack, "https://bridge.example.com", host="bridge.example.com", keep=accepted)[0].split()[1] == "101"
    assert upgrade(stack, "https://bridge.example.com:8443", host="bridge.example.com")[0].split()[1] == "403"
    _close_all(stack, accepted)


# -- size limits ----------------------------------------------------------------------------------------

def test_a_one_mebibyte_message_is_refused_without_harm(stack):
    bystander = stack.agent("1001")
    big = stack.client()
    # A request that would succeed if read: only the size limit can refuse it.
    message = json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": "a" * 2**20})
    try:
        big.send_raw(message)
    except (OSError, websocket.WebSocketException):
        pass  # the bridge may close while we are still sending
    try:
        reply: Any = json.loads(big.receive_raw(timeout=10))
    except ConnectionError:
        reply = None
    if reply is None:
        assert big.close_code == 1009
    else:
        assert "error" in reply and "result" not in reply

    health = requests.get(stack.base + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert bystander.call("agent.get")["id"] == "1001"
    newcomer = stack.agent("1003")
    assert newcomer.call("call.list") == []
    newcomer.call("agent.setState", state="READY")
    assert newcomer.wait_for("agent.stateChanged")["agent"]["state"] == "READY"


# -- hostile XML from Finesse ------------------------------------------------------------------------

LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
          + ']><Update><event>PUT</event><source>/finesse/api/User/1001</source><data><User><loginId>1001</loginId>'
            '<firstName>&lol9;</firstName><state>READY</state></User></data></Update>')
XXE = ('<?xml version="1.0"?><!DOCTYPE u [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       '<Update><event>PUT</event><source>/finesse/api/User/1001</source><data><User><loginId>1001</loginId>'
       '<firstName>&xxe;</firstName><state>READY</state></User></data></Update>')
GARBAGE = ["this is not XML at all", "<Update><data><User>", "", "<Update>&undefined;</Update>",
           "<NotAnUpdate><data/></NotAnUpdate>"]


def dialog_update(dialog: str, event: str = "POST") -> str:
    return (f"<Update><event>{event}</event><requestId/><source>/finesse/api/User/1001/Dialogs</source>"
            f"<data><dialogs>{dialog}</dialogs></data></Update>")


BAD_DIALOGS = [
    dialog_update("<Dialog><participants>nonsense<Participant/></participants></Dialog>"),
    "<Update><event>PUT</event><source>/finesse/api/Dialog/78</source><data><Dialog><id>78</id>"
    "<mediaProperties><callvariables><CallVariable><name/></CallVariable></callvariables></mediaProperties>"
    "<participants><Participant><mediaAddress>71001</mediaAddress><state>BOGUS</state></Participant>"
    "</participants></Dialog></data></Update>",
]


def publish(stack: Stack, node: str, payload: str) -> int:
    xmpp = stack.simulator.primary.xmpp
    return int(stack.simulator.call(lambda: xmpp.publish(node, payload, ["1001"])))


def test_hostile_xml_from_finesse_is_dropped_and_the_session_lives(stack, caplog):
    client = stack.agent("1001")
    caplog.set_level(logging.WARNING, logger="bridge")
    for payload in [LAUGHS, XXE, *GARBAGE]:
        assert publish(stack, "/finesse/api/User/1001", payload) == 1
    for payload in BAD_DIALOGS:
        assert publish(stack, "/finesse/api/User/1001/Dialogs", payload) == 1

    client.call("agent.setState", state="READY")
    note = client.next_notification()  # nothing from the junk came before it
    assert note["method"] == "agent.stateChanged" and note["params"]["agent"]["state"] == "READY"
    assert note["params"]["agent"]["firstName"] != "" and "lol" not in note["params"]["agent"]["firstName"]
    assert len([r for r in caplog.records if "dropped a notification" in r.getMessage()]) >= 2 + len(GARBAGE) - 1
    assert not any("root:" in r.getMessage() for r in caplog.records)  # no /etc/passwd content anywhere

    dialog = stack.ring(to="1001", ani="4155550123")  # calls still tracked
    ringing = client.wait_for("call.ringing")["call"]
    assert ringing["id"] == dialog and [c["id"] for c in client.call("call.list")] == [dialog]
    assert client.validation_errors == []


MALFORMED_CALLS = {
    "no id": dialog_update("<Dialog><state>ALERTING</state><participants><Participant><mediaAddress>71001"
                           "</mediaAddress><state>ALERTING</state></Participant></participants></Dialog>"),
    "state not a state": dialog_update("<Dialog><id>80</id><state>al-erting!</state><participants><Participant>"
                                       "<mediaAddress>71001</mediaAddress><state>ALERTING</state></Participant>"
                                       "</participants></Dialog>"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CALLS))
def test_a_malformed_dialog_never_reaches_clients(stack, case, caplog):
    client = stack.agent("1001")
    assert publish(stack, "/finesse/api/User/1001/Dialogs", MALFORMED_CALLS[case]) == 1
    client.call("agent.setState", state="READY")
    note = client.next_notification()  # raises if a call that breaks openrpc.json came first
    assert note["method"] == "agent.stateChanged", note
    assert client.call("call.list") == []
    assert any("dropped a dialog" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("when", ["yesterday", "99999999999999999999999"])
def test_a_dialog_with_a_bad_time_arrives_with_a_valid_one(stack, when):
    client = stack.agent("1001")
    update = dialog_update("<Dialog><id>79</id><state>ALERTING</state><participants><Participant>"
                           "<mediaAddress>71001</mediaAddress><state>ALERTING</state>"
                           f"<startTime>{when}</startTime></Participant></participants></Dialog>")
    assert publish(stack, "/finesse/api/User/1001/Dialogs", update) == 1
    call = client.wait_for("call.ringing")["call"]  # validated against openrpc.json by the client
    assert call["id"] == "79" and call["startedAt"].endswith("Z") and when not in str(call)
    assert client.validation_errors == []


# -- credentials never in logs --------------------------------------------------------------------------

SECRET = "Sx7-Quartz-Lantern-42"
WRONG = "Wq9-Marble-Thimble-17"
LOGGERS = ("", "bridge", "werkzeug", "urllib3", "slixmpp", "simulator", "jsonrpcserver", "flask_sock",
           "simple_websocket", "websocket", "requests")


def decoded_tokens(text: str) -> str:
    """Every base64-looking token in ``text``, decoded (Basic auth, SASL PLAIN)."""
    out = []
    for token in re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", text):
        for candidate in (token, token + "=", token + "=="):
            try:
                out.append(base64.b64decode(candidate, altchars=b"-_" if "-" in token or "_" in token else None)
                           .decode("latin-1"))
                break
            except (binascii.Error, ValueError):
                continue
    return "\n".join(out)


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    assert caplog.records, "nothing was captured: the check would prove nothing"
    texts = [caplog.text]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        texts.append(repr(record.__dict__))
    everything = "\n".join(texts)
    for secret in secrets:
        assert secret not in everything
        assert secret not in decoded_tokens(everything)


@pytest.mark.sim(password=SECRET)
@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0)  # the right password at once after a wrong one
def test_credentials_never_logged_nor_echoed(stack, caplog):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    client = stack.client()
    client.send_raw(json.dumps({"jsonrpc": "2.0", "method": "session.login", "id": "bad",
                                "params": {"agentId": "1001", "password": WRONG, "extension": "71001"}}))
    raw = client.receive_raw(timeout=10)
    reply = json.loads(raw)
    assert reply["id"] == "bad" and reply["error"]["code"] == 4010
    assert WRONG not in raw and SECRET not in raw

    # An invalid login (schema) must not echo the password either.
    client.send_raw(json.dumps({"jsonrpc": "2.0", "method": "session.login", "id": "odd",
                                "params": {"agentId": "1001", "loginName": "x", "password": WRONG,
                                           "extension": "71001"}}))
    raw = client.receive_raw(timeout=10)
    assert json.loads(raw)["error"]["code"] == -32602 and WRONG not in raw

    result = client.login("1001", SECRET, "71001")
    assert result["agent"]["id"] == "1001"
    client.call("agent.setState", state="READY")
    client.wait_for("agent.stateChanged")  # an XMPP event went through the logged path too
    second_tab = stack.client()
    second_tab.login("1001", SECRET, "71001")  # joins the session
    with pytest.raises(RpcError) as refused:
        stack.client().login("1001", WRONG, "71001")  # a wrong password for a signed-in agent
    assert refused.value.code == 4010
    assert any(r.name.startswith("slixmpp") for r in caplog.records)  # DEBUG really was on
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert_not_logged(caplog, SECRET, WRONG)


# -- HTTP endpoints -------------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_healthz_and_metrics_with_two_agents(stack):
    first = stack.agent("1001")
    stack.agent("1002")
    first.call("agent.setState", state="READY")
    first.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    health = requests.get(stack.base + "/healthz", timeout=5)
    assert health.status_code == 200 and health.headers["Content-Type"] == "application/json"
    body = health.json()
    assert body["status"] == "ok" and body["agents"] == 2 and body["sockets"] == 2
    assert body["nodes"] == [n["url"] for n in stack.app.config["FINESSE_NODES"]]

    stack.client()  # a third socket, not signed in
    # The server counts a socket once its handler runs, just after the handshake the client saw.
    deadline = time.monotonic() + 5
    while True:
        metrics = requests.get(stack.base + "/metrics", timeout=5)
        assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
        values = samples(metrics.text)
        if values[("cti_sockets", ())] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert values[("cti_signed_in_agents", ())] == 2
    assert values[("cti_sockets", ())] == 3
    assert values[("cti_xmpp_clients", ())] == 2
    assert values[("cti_rpc_seconds_count", (("method", "session.login"),))] == 2
    assert values[("cti_logins_total", (("result", "new"),))] == 2
    assert values[("cti_notifications_total", (("method", "agent.stateChanged"),))] >= 1
    assert values[("cti_finesse_events_total", (("kind", "user"),))] >= 1


def test_create_app_leaves_process_logging_alone_unless_told():
    base = {"FINESSE_NODES": [{"url": "http://127.0.0.1:9"}], "DATABASE_URL": "sqlite:///:memory:"}
    logger = logging.getLogger("bridge")
    saved = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        create_app(base, config_file="/dev/null").extensions["cti_bridge"].close()
        assert logger.level == logging.NOTSET  # another app in the process (or a test) keeps its levels
        create_app({**base, "LOG_LEVEL": "debug"}, config_file="/dev/null").extensions["cti_bridge"].close()
        assert logger.level == logging.DEBUG
        with pytest.raises(ConfigError, match="^LOG_LEVEL"):
            create_app({**base, "LOG_LEVEL": "LOUD"}, config_file="/dev/null")
        with pytest.raises(ConfigError, match="^FINESSE_NODES"):  # not a traceback from deeper down
            create_app({}, config_file="/dev/null")
    finally:
        logger.setLevel(saved)
