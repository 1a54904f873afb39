"""Graceful shutdown (docs/operations.md) and a fault proxy between the client and the bridge.

The SIGTERM test runs the bridge as a subprocess (``python app.py --config``, as the kill -9 test
in test_webhooks.py does) with the simulator in this process: N agents signed in, a call record
waiting in the outbox for a receiver that is down; SIGTERM -> every socket closes with 1012; a
second process on another port -> every client signs in again there and works; the first
process's XMPP hold is ended by a second SIGTERM once they have; nobody was logged out by
Finesse; the receiver comes back and gets the record once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from bridge.client import CtiClient, RpcError
from simulator.config import SimConfig
from simulator.server import Simulator
from tests.faultproxy import FaultProxy
from tests.webhook_receiver import Receiver, verify

from .conftest import PASSWORD
from .test_webhooks import ROOT, SECRET, BridgeProcess, _free_port, _all_delivered, _answer_and_end, _outbox, _poll, _ring

# The figure: 500 clients (about 40 s here). SHUTDOWN_TEST_AGENTS=50 makes a quicker local run.
AGENTS = int(os.environ.get("SHUTDOWN_TEST_AGENTS", "500"))


def _config(path: Path, simulator: Simulator, db: Path, receiver: Receiver, hold: float) -> Path:
    nodes = ", ".join(f'{{ url = "http://127.0.0.1:{n.rest_port}", xmpp = "127.0.0.1:{n.xmpp_port}" }}'
                      for n in simulator.nodes)
    path.write_text(f"""
finesse_nodes = [{nodes}]
database_url = "sqlite:///{db}"
session_grace_seconds = 60.0
shutdown_xmpp_hold_seconds = {hold}
max_sockets_per_ip = 1000
[webhooks]
allow_hosts = ["127.0.0.1"]
retry_base_seconds = 0.2
retry_max_seconds = 0.5
lease_seconds = 5
shutdown_seconds = 2
[[webhooks.endpoints]]
name = "crm"
url = "{receiver.url('/records/{id}')}"
events = ["record"]
secret = "{SECRET}"
timeout = 2
""")
    return path


def _agent_id(k: int) -> str:
    return str(1001 + k)


def _sign_in_again(client: CtiClient, url: str, agent_id: str) -> None:
    """What the toolbar does after a 1012: reconnect (here: to the replacement), resume, and on
    4001 (the new process does not know the session) sign in with the credentials it holds."""
    client.url = url
    client.connect()
    with pytest.raises(RpcError) as refused:
        client.resume()
    assert refused.value.code == 4001
    client.login(agent_id, PASSWORD, "7" + agent_id)


def test_sigterm_closes_sockets_with_1012_and_a_replacement_keeps_every_agent_signed_in(tmp_path):
    simulator = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD,  # type: ignore[arg-type]
                                    agent_count=AGENTS, outbound_answer_seconds=None)).start_in_thread()
    receiver = Receiver().start()
    receiver.stop()  # down until the replacement runs
    db, log = tmp_path / "bridge.db", tmp_path / "bridge.log"
    config = _config(tmp_path / "bridge.toml", simulator, db, receiver, hold=30)
    bridges: list[BridgeProcess] = []
    clients: list[CtiClient] = []
    try:
        old = BridgeProcess(config, log)
        bridges.append(old)
        for k in range(AGENTS):
            client = CtiClient(old.url, timeout=10.0)
            clients.append(client.connect())
            client.login(_agent_id(k), PASSWORD, "7" + _agent_id(k))
        first = clients[0]
        first.call("agent.setState", state="READY")
        first.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
        call_id = _ring(simulator, to=_agent_id(0), ani="4155550100")
        record = _answer_and_end(first, call_id)["record"]
        _poll(lambda: [r for r in _outbox(db) if r["state"] == "pending" and r["attempts"] >= 1],
              what="a failed delivery")

        old.process.send_signal(signal.SIGTERM)
        for client in clients:
            _poll(lambda: client.closed, what="the socket to close")
            assert client.close_code == 1012, (client.close_code, client.close_reason)

        # another port, the same database; no hold, so that it ends at once after the test
        new = BridgeProcess(_config(tmp_path / "new.toml", simulator, db, receiver, hold=0), log)
        bridges.append(new)
        receiver.start()  # the receiver comes back
        for k, client in enumerate(clients):
            _sign_in_again(client, new.url, _agent_id(k))
        first.call("agent.setState", state="NOT_READY")
        first.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "NOT_READY")

        assert old.process.poll() is None  # still holding the XMPP sessions
        old.process.send_signal(signal.SIGTERM)  # a second signal ends the hold
        assert old.process.wait(15) == 0

        agents = {a["id"]: a for a in simulator_state(simulator)["agents"]}
        for k in range(AGENTS):  # presence kept by the replacement: no forced logout to come
            agent = agents[_agent_id(k)]
            assert agent["state"] != "LOGOUT" and agent["presence"], agent

        [row] = _poll(_all_delivered(db, 1), what="the delivery by the replacement")
        [got] = receiver.requests
        assert got.path == f"/records/{call_id}" and verify(SECRET, got.headers, got.body)
        assert got.headers["webhook-id"] == row["idempotency_key"]
        assert json.loads(got.body)["data"]["record"] == record
        assert f"closing {AGENTS} sockets with 1012" in log.read_text()
    finally:
        for client in clients:
            client.close()
        for bridge in bridges:
            bridge.kill(signal.SIGTERM)
        receiver.stop()
        simulator.stop_thread()


def simulator_state(simulator: Simulator) -> dict[str, Any]:
    return dict(requests.get(f"http://127.0.0.1:{simulator.primary.rest_port}/sim/api/state", timeout=5).json())


def test_a_draining_bridge_refuses_new_sockets_with_503_and_closes_old_ones_with_1012(stack):
    agent = stack.agent("1001")
    bridge = stack.app.extensions["cti_bridge"]
    bridge.drain()
    _poll(lambda: agent.closed, what="the socket to close")
    assert agent.close_code == 1012
    with pytest.raises(ConnectionError) as refused:
        CtiClient(stack.url, timeout=5.0).connect()
    assert "503" in str(refused.value.__cause__) or "503" in str(refused.value)
    health = requests.get(stack.base + "/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert len(bridge.registry) == 1  # the XMPP session is kept until shutdown's hold is over


def test_under_gunicorn_sigterm_closes_with_1012_and_holds_the_xmpp_session(tmp_path):
    """gunicorn.conf.py's hooks: gunicorn 27's gthread worker calls them on SIGTERM."""
    simulator = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD,  # type: ignore[arg-type]
                                    outbound_answer_seconds=None)).start_in_thread()
    receiver = Receiver()
    config = _config(tmp_path / "bridge.toml", simulator, tmp_path / "bridge.db", receiver, hold=5)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTI_")}
    env.update(CTI_CONFIG_FILE=str(config), GUNICORN_BIND=f"127.0.0.1:{port}")
    log = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py",
                                "--threads", "20", "app:create_app()"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    client = CtiClient(f"ws://127.0.0.1:{port}/rpc", timeout=10.0)
    try:
        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        _poll(healthy, timeout=20, what="gunicorn to start")
        client.connect()
        client.login("1001", PASSWORD, "71001")

        process.send_signal(signal.SIGTERM)
        _poll(lambda: client.closed, what="the socket to close")
        assert client.close_code == 1012
        agent = next(a for a in simulator_state(simulator)["agents"] if a["id"] == "1001")
        assert agent["presence"] and agent["state"] != "LOGOUT"  # held
        assert process.wait(20) == 0
        agent = next(a for a in simulator_state(simulator)["agents"] if a["id"] == "1001")
        assert not agent["presence"]  # let go after the hold: Finesse's 60 s start now
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        simulator.stop_thread()


# -- the fault proxy between the client and the bridge -------------------------------------------

@pytest.fixture
def proxied(stack: Any) -> Iterator[tuple[Any, FaultProxy]]:
    with FaultProxy("127.0.0.1", stack.server.server_port) as proxy:
        yield stack, proxy


def _ws_url(proxy: FaultProxy) -> str:
    return proxy.url("ws", "/rpc")


def _session_seq(stack: Any, agent_id: str) -> int:
    session = stack.app.extensions["cti_bridge"].registry.get(agent_id)
    return int(session.seq)


@pytest.mark.bridge(REPLAY_BUFFER_EVENTS=50)
def test_a_dropped_connection_resumes_with_replay_and_nothing_lost(proxied):
    stack, proxy = proxied
    client = CtiClient(_ws_url(proxy), timeout=10.0)
    client.connect()
    stack.clients.append(client)
    client.login("1001", PASSWORD, "71001")
    client.call("agent.setState", state="READY")
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    seen = client.last_seq

    assert proxy.drop() == 1
    _poll(lambda: client.closed, what="the client to notice")
    before = _session_seq(stack, "1001")
    call_id = stack.ring(to="1001", ani="4155550100")  # rings while the client is away
    _poll(lambda: _session_seq(stack, "1001") > before, what="the bridge to emit call.ringing")

    client.connect()
    result = client.resume()
    assert result["replayed"] >= 1 and "snapshot" not in result
    ringing = client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    assert ringing["call"]["id"] == call_id and client.last_seq > seen
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)


@pytest.mark.bridge(REPLAY_BUFFER_EVENTS=2)
def test_a_blackhole_longer_than_the_buffer_ends_in_a_snapshot(proxied):
    stack, proxy = proxied
    client = CtiClient(_ws_url(proxy), timeout=10.0)
    client.connect()
    stack.clients.append(client)
    client.login("1001", PASSWORD, "71001")
    client.call("agent.setState", state="READY")
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")

    proxy.blackhole(True)  # the socket stays open; nothing gets through
    before = _session_seq(stack, "1001")
    calls = []
    for _ in range(2):
        call_id = stack.ring(to="1001", ani="4155550100")
        assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200
        calls.append(call_id)
    _poll(lambda: _session_seq(stack, "1001") >= before + 3, what="more events than the buffer holds")
    assert proxy.reset() == 1
    _poll(lambda: client.closed, what="the client to notice")
    proxy.blackhole(False)

    client.connect()
    result = client.resume()
    assert "snapshot" in result and "replayed" not in result
    snapshot = result["snapshot"]
    assert snapshot["seq"] == _session_seq(stack, "1001") and client.last_seq == snapshot["seq"]
    assert snapshot["calls"] == [] and snapshot["agent"]["state"] == "READY"
