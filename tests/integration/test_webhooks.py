"""Webhooks end to end: the simulator, the bridge with a SQLite file, a receiver on 127.0.0.1.

"Exactly once" is read after every outbox row has reached ``delivered``: from then on nothing can
send again, so the receiver's count is final. The kill -9 test runs the bridge as a subprocess
(``python app.py --config``), kills it with a call's record waiting in the outbox and the receiver
down, then starts it again on the same database.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests

from bridge.client import CtiClient
from simulator.config import SimConfig
from simulator.server import Simulator
from tests.webhook_receiver import Receiver, verify

from .conftest import PASSWORD

SECRET = "whsec_" + base64.b64encode(b"integration-test-webhook-secret!").decode()
ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, receiver: Receiver, events: list[str]) -> dict[str, Any]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
            "WEBHOOKS": {"allow_hosts": ["127.0.0.1"], "retry_base_seconds": 0.2, "retry_max_seconds": 0.5,
                         "lease_seconds": 5, "endpoints": [
                             {"name": "crm", "url": receiver.url("/calls/{id}"), "events": events,
                              "secret": SECRET, "timeout": 2}]}}


def _poll(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _outbox(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]
    except sqlite3.OperationalError:  # the bridge has not created the table yet
        return []
    finally:
        conn.close()


def _all_delivered(db: Path, count: int) -> Callable[[], list[dict[str, Any]]]:
    def check() -> list[dict[str, Any]]:
        rows = _outbox(db)
        return rows if len(rows) == count and all(r["state"] == "delivered" for r in rows) else []
    return check


def _by_type(receiver: Receiver) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for got in receiver.requests:
        out.setdefault(json.loads(got.body)["type"], []).append(got)
    return out


def _answer_and_end(agent: CtiClient, call_id: str) -> dict[str, Any]:
    agent.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    agent.call("call.answer", callId=call_id)
    agent.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)
    agent.call("call.end", callId=call_id)
    return agent.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)


def test_each_event_and_the_record_reach_the_receiver_once_signed(stack_from_file, webhook_receiver, tmp_path):
    stack = stack_from_file("", **_settings(tmp_path, webhook_receiver, ["ringing", "answered", "ended", "record"]))
    agent = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550100", variables={"callVariable1": "case 42"})
    ended = _answer_and_end(agent, call_id)

    _poll(_all_delivered(tmp_path / "bridge.db", 4), what="4 delivered rows")
    got = _by_type(webhook_receiver)
    assert {t: len(v) for t, v in got.items()} == {"call.ringing": 1, "call.answered": 1, "call.ended": 1,
                                                   "record.created": 1}
    for requests_of_type in got.values():
        [one] = requests_of_type
        assert one.path == f"/calls/{call_id}" and verify(SECRET, one.headers, one.body)
        assert one.headers["idempotency-key"] == one.headers["webhook-id"]
    record = json.loads(got["record.created"][0].body)["data"]["record"]
    assert record == ended["record"] and record["variables"]["callVariable1"] == "case 42"
    assert json.loads(got["call.ringing"][0].body)["data"]["agent"]["id"] == "1001"
    assert json.loads(got["call.ended"][0].body)["data"]["record"] == ended["record"]
    assert len({r.headers["webhook-id"] for r in webhook_receiver.requests}) == 4


def test_a_call_ending_while_the_browser_is_away_is_delivered_once(stack_from_file, webhook_receiver, tmp_path):
    stack = stack_from_file("", **_settings(tmp_path, webhook_receiver, ["ended", "record"]))
    agent = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550100")
    agent.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    agent.call("call.answer", callId=call_id)
    agent.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)
    token, last_seq = agent.resume_token, agent.last_seq
    agent.close()  # the browser goes away; the session waits out its grace period

    assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200  # the caller hangs up meanwhile
    webhook_receiver.wait_for(2)

    back = stack.client()  # the browser comes back: call.ended is replayed to it, not sent again
    result = back.resume(token, last_seq)
    assert result.get("replayed", 0) >= 1
    back.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    _poll(_all_delivered(tmp_path / "bridge.db", 2), what="2 delivered rows")
    got = _by_type(webhook_receiver)
    assert {t: len(v) for t, v in got.items()} == {"call.ended": 1, "record.created": 1}
    assert all(verify(SECRET, r.headers, r.body) for r in webhook_receiver.requests)


# -- kill -9 ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ring(simulator: Simulator, **body: Any) -> str:
    body["from"] = body.pop("ani")
    response = requests.post(f"http://127.0.0.1:{simulator.primary.rest_port}/sim/api/calls", json=body, timeout=5)
    assert response.status_code == 201, response.text
    return str(response.json()["dialogId"])


class BridgeProcess:
    """``python app.py --port P --config FILE`` in a subprocess, its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTI_")}
        self._log = open(log, "ab")
        self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), "--config", str(config)],
                                        cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}/rpc"

        def healthy() -> bool:
            assert self.process.poll() is None, f"the bridge exited: {log.read_text()}"
            try:
                return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        _poll(healthy, timeout=20, what="the bridge to start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def test_a_record_waiting_in_the_outbox_survives_kill_9(tmp_path):
    simulator = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD,  # type: ignore[arg-type]
                                    outbound_answer_seconds=None)).start_in_thread()
    receiver = Receiver()
    receiver.start()
    receiver.stop()  # its port is known; nothing listens there until the bridge has been killed
    db, config, log = tmp_path / "bridge.db", tmp_path / "bridge.toml", tmp_path / "bridge.log"
    nodes = ", ".join(f'{{ url = "http://127.0.0.1:{n.rest_port}", xmpp = "127.0.0.1:{n.xmpp_port}" }}'
                      for n in simulator.nodes)
    config.write_text(f"""
finesse_nodes = [{nodes}]
database_url = "sqlite:///{db}"
session_grace_seconds = 5.0
[webhooks]
allow_hosts = ["127.0.0.1"]
retry_base_seconds = 0.2
retry_max_seconds = 0.5
lease_seconds = 5
[[webhooks.endpoints]]
name = "crm"
url = "{receiver.url('/records/{id}')}"
events = ["record"]
secret = "{SECRET}"
timeout = 2
""")
    bridges: list[BridgeProcess] = []
    try:
        bridges.append(BridgeProcess(config, log))
        with CtiClient(bridges[0].url, timeout=10.0) as agent:
            agent.login("1001", PASSWORD, "71001")
            agent.call("agent.setState", state="READY")
            agent.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
            call_id = _ring(simulator, to="1001", ani="4155550100")
            record = _answer_and_end(agent, call_id)["record"]

            def failed_twice() -> list[dict[str, Any]]:  # the receiver is down: attempts fail and are retried
                return [r for r in _outbox(db) if r["state"] == "pending" and r["attempts"] >= 2]
            [row] = _poll(failed_twice, what="two failed attempts")
            assert "ConnectionError" in row["last_error"]
        bridges[0].kill(signal.SIGKILL)
        assert bridges[0].process.returncode == -signal.SIGKILL

        receiver.start()  # the receiver comes back; the bridge starts again on the same database
        bridges.append(BridgeProcess(config, log))
        [row] = _poll(_all_delivered(db, 1), what="the delivery after the restart")
        [got] = receiver.requests
        assert got.path == f"/records/{call_id}" and verify(SECRET, got.headers, got.body)
        assert got.headers["webhook-id"] == row["idempotency_key"] and row["attempts"] >= 3
        assert json.loads(got.body)["data"]["record"] == record
    finally:
        for bridge in bridges:
            bridge.kill(signal.SIGTERM)
        receiver.stop()
        simulator.stop_thread()
