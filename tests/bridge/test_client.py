"""bridge.client against a scripted fake bridge (Flask + flask-sock on a free loopback port)."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import pytest
from flask import Flask
from flask_sock import Sock
from werkzeug.serving import make_server

from bridge import protocol
from bridge.client import CtiClient, RpcError
from bridge.finesse import model

AT = "2024-05-02T10:11:12.345Z"
AGENT = model.Agent(id="1001", extension="2001", state="NOT_READY").to_json()
CALL = model.Call(id="7", state="active", actions=["hold", "end"]).to_json()


class FakeBridge:
    """Answers a few methods the way the bridge does; records what it received."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.seq = 0
        app = Flask(__name__)
        sock = Sock(app)
        sock.route("/rpc")(self.serve)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"ws://127.0.0.1:{self.server.server_port}/rpc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def note(self, method: str, **params: Any) -> dict[str, Any]:
        self.seq += 1
        return {"jsonrpc": "2.0", "method": method, "params": {"seq": self.seq, "at": AT, **params}}

    def answer(self, message: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """(response or None, notifications to send after it)."""
        method, params, request_id = message.get("method"), message.get("params") or {}, message.get("id")
        if "id" not in message:
            return None, []
        def ok(result: Any) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": request_id, "result": result}
        def error(code: int, text: str, data: Any = None) -> dict[str, Any]:
            err: dict[str, Any] = {"code": code, "message": text}
            if data is not None:
                err["data"] = data
            return {"jsonrpc": "2.0", "id": request_id, "error": err}
        if method == "session.ping":
            return ok({"at": AT}), []
        if method == "session.login":
            if params.get("password") != "pw":
                return error(4010, "Finesse rejected the credentials"), []
            return ok({"sessionId": "s1", "resumeToken": "r1", "agent": AGENT, "calls": [], "seq": self.seq}), \
                [self.note("agent.stateChanged", agent=AGENT)]
        if method == "session.resume":
            missed = [self.note("call.updated", call=CALL) for _ in range(2)]
            return ok({"resumeToken": "r2", "replayed": len(missed)}), missed
        if method == "call.answer":
            return ok({}), [self.note("call.updated", call=CALL), self.note("call.answered", call=CALL)]
        if method == "call.hold" and params.get("callId") == "slow":
            return None, []
        if method == "call.end":
            return error(4090, "Finesse refused the action in this state",
                         {"errorType": "Invalid State", "message": "no"}), []
        if method == "call.list":
            return ok([{"id": 7}]), []  # not a Call: the client's validation must catch it
        if method == "session.logout":
            return ok({}), [self.note("session.ended", reason="logout")]
        return error(-32601, "Method not found"), []

    def serve(self, ws: Any) -> None:
        while True:
            text = ws.receive()
            try:
                message = json.loads(text)
            except ValueError:
                ws.send(json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}))
                continue
            self.received.append(message)
            items = message if isinstance(message, list) else [message]
            answers = [self.answer(item) for item in items]
            responses = [r for r, _ in answers if r is not None]
            if responses:
                ws.send(json.dumps(responses if isinstance(message, list) else responses[0]))
            for _, notes in answers:
                for n in notes:
                    ws.send(json.dumps(n))
            if isinstance(message, dict) and message.get("method") == "session.logout":
                ws.close(reason=1000, message="bye")
                return


@pytest.fixture
def bridge() -> Iterator[FakeBridge]:
    fake = FakeBridge()
    yield fake
    fake.stop()


@pytest.fixture
def client(bridge: FakeBridge) -> Iterator[CtiClient]:
    with CtiClient(bridge.url, origin="http://127.0.0.1", timeout=5, validate=True) as c:
        yield c
    assert [e for e in c.validation_errors if "call.list" not in e.message] == []


def test_call_login_and_notifications(client: CtiClient, bridge: FakeBridge) -> None:
    assert client.call("session.ping") == {"at": AT}
    seen: list[dict[str, Any]] = []
    off = client.on("*", seen.append)
    result = client.login("1001", "pw", "2001")
    assert result["sessionId"] == "s1" and client.resume_token == "r1"
    assert client.wait_for("agent.stateChanged")["agent"]["id"] == "1001"
    assert client.last_seq == 1
    assert client.call("call.answer", callId="7") == {}
    params = client.wait_for("call.answered", lambda p: p["call"]["id"] == "7")  # skips call.updated
    assert params["seq"] == 3 and client.last_seq == 3
    assert [n["method"] for n in seen] == ["agent.stateChanged", "call.updated", "call.answered"]
    off()
    assert "pw" not in repr(client.__dict__)
    assert bridge.received[1] == {"jsonrpc": "2.0", "id": 2, "method": "session.login",
                                  "params": {"agentId": "1001", "password": "pw", "extension": "2001"}}


def test_errors_timeouts_and_validation(client: CtiClient) -> None:
    with pytest.raises(RpcError) as info:
        client.login("1001", "wrong", "2001")
    assert info.value.code == 4010 and client.resume_token is None
    with pytest.raises(RpcError) as info:
        client.call("call.end", callId="7")
    assert info.value.code == 4090 and info.value.data["errorType"] == "Invalid State"
    with pytest.raises(TimeoutError):
        client.request("call.hold", {"callId": "slow"}, timeout=0.3)
    with pytest.raises(protocol.ProtocolError, match="call.list result"):
        client.call("call.list")
    assert client.call("session.ping") == {"at": AT}  # still usable


def test_batch_notify_and_raw(client: CtiClient, bridge: FakeBridge) -> None:
    results = client.batch([("session.ping", None), ("call.end", {"callId": "7"})])
    assert results[0] == {"at": AT} and isinstance(results[1], RpcError) and results[1].code == 4090
    client.notify("session.ping")
    client.send_raw("{nope")
    assert json.loads(client.receive_raw(2))["error"]["code"] == -32700
    client.send_raw('{"jsonrpc": "2.0", "id": "mine", "method": "session.ping"}')
    assert json.loads(client.receive_raw(2)) == {"jsonrpc": "2.0", "id": "mine", "result": {"at": AT}}
    assert {"jsonrpc": "2.0", "method": "session.ping"} in bridge.received
    with pytest.raises(TimeoutError):
        client.receive_raw(0.1)
    with pytest.raises(TimeoutError):
        client.next_notification(0.1)


def test_resume_and_server_close(client: CtiClient, bridge: FakeBridge) -> None:
    client.login("1001", "pw", "2001")
    client.wait_for("agent.stateChanged")
    client.close()
    assert client.closed
    client.connect()
    assert client.resume() == {"resumeToken": "r2", "replayed": 2}
    assert bridge.received[-1]["params"] == {"resumeToken": "r1", "lastSeq": 1}
    assert client.resume_token == "r2"
    assert [client.next_notification(2)["params"]["seq"] for _ in range(2)] == [2, 3]
    assert client.last_seq == 3
    client.call("session.logout")
    assert client.wait_for("session.ended")["reason"] == "logout"
    deadline = time.monotonic() + 5
    while not client.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.closed and client.close_code == 1000
    with pytest.raises(ConnectionError):
        client.call("session.ping")
    with pytest.raises(ConnectionError):
        client.next_notification(1)


def test_refused_handshake(bridge: FakeBridge) -> None:
    client = CtiClient(bridge.url.replace("/rpc", "/nowhere"), timeout=2)
    with pytest.raises(ConnectionError) as info:
        client.connect()
    assert getattr(info.value.__cause__, "status_code", None) == 404
    assert client.closed
