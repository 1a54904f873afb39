"""Network faults between a browser and the bridge (tests/faultproxy.py): a tab's connection goes
silent (blackholed) for ~1 s or 60 s while events happen, then dies; a new socket resumes with the old
token and last seq and gets every missed notification in order, no gap, no duplicate.

Waits are on notifications or bounded polls; the only sleep is the outage itself.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest

from bridge.client import CtiClient
from tests.faultproxy import FaultProxy
from tests.waiting import take_until as _take_until, until

from .conftest import PASSWORD

pytestmark = pytest.mark.bridge(SESSION_GRACE_SECONDS=120.0, REPLAY_BUFFER_SECONDS=120.0)


@pytest.fixture
def proxy(stack: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", stack.server.server_port) as fault_proxy:
        yield fault_proxy




def _through_proxy(stack: Any, proxy: FaultProxy) -> CtiClient:
    client = CtiClient(proxy.url("ws", "/rpc"), timeout=10.0, validate=True)
    client.connect()
    stack.clients.append(client)
    client.login("1001", PASSWORD, "71001")
    client.call("agent.setState", state="READY")
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    return client


def _outage_then_resume(stack: Any, proxy: FaultProxy, outage: float) -> None:
    gone = _through_proxy(stack, proxy)
    other = stack.client()  # a second tab, straight to the bridge
    other.login("1001", PASSWORD, "71001")
    until(lambda: gone.last_seq == other.last_seq, timeout=5, what="both tabs at the same seq")

    proxy.blackhole(True)
    started = time.monotonic()
    token, last_seq = gone.resume_token, gone.last_seq
    assert token and last_seq is not None

    call_id = stack.ring(to="1001", ani="4155550160")
    for_call = lambda p: p["call"]["id"] == call_id  # noqa: E731
    missed = _take_until(other, "call.ringing", for_call)
    other.call("call.answer", callId=call_id)
    missed += _take_until(other, "agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")
    other.call("call.hold", callId=call_id)
    missed += _take_until(other, "agent.stateChanged", lambda p: p["agent"]["state"] == "HOLD")
    other.call("call.retrieve", callId=call_id)
    missed += _take_until(other, "agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")
    assert gone.last_seq == last_seq  # nothing got through the blackhole

    time.sleep(max(0.0, outage - (time.monotonic() - started)))  # the outage itself, not a sync
    proxy.drop()
    proxy.blackhole(False)
    until(lambda: gone.closed, timeout=5, what="the old socket to close")

    back = CtiClient(proxy.url("ws", "/rpc"), timeout=10.0, validate=True)
    back.connect()
    stack.clients.append(back)
    result = back.resume(token, last_seq)
    assert "snapshot" not in result, result
    assert result["replayed"] == len(missed)
    replayed = [back.next_notification(5) for _ in range(result["replayed"])]
    assert replayed == missed
    seqs = [n["params"]["seq"] for n in replayed]
    assert seqs == list(range(last_seq + 1, last_seq + 1 + len(missed)))

    other.call("call.end", callId=call_id)  # live again: no gap, no duplicate
    first_live = back.next_notification(5)
    assert first_live["params"]["seq"] == seqs[-1] + 1
    live = first_live["params"] if first_live["method"] == "call.ended" else back.wait_for("call.ended", for_call)
    assert live["call"]["id"] == call_id
    assert back.validation_errors == [] and other.validation_errors == []


def test_a_one_second_silent_drop_is_resumed_with_every_missed_notification(stack, proxy):
    _outage_then_resume(stack, proxy, 1.0)


@pytest.mark.slow
def test_a_sixty_second_silent_drop_is_resumed_with_every_missed_notification(stack, proxy):
    _outage_then_resume(stack, proxy, 60.0)


# -- a fault proxy between the bridge and the primary node's XMPP port ---------------------------

KEY = "it-netfault-key"


@pytest.fixture
def xmpp_stack() -> Iterator[tuple[Any, FaultProxy]]:
    """Like conftest's ``stack``, but the primary node's XMPP address is a fault proxy."""
    import threading

    from werkzeug.serving import make_server

    from app import create_app
    from simulator.config import SimConfig
    from simulator.server import Simulator

    from .conftest import Stack

    simulator = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD,
                                    outbound_answer_seconds=None)).start_in_thread()
    primary = simulator.nodes[0]
    xmpp_proxy = FaultProxy("127.0.0.1", primary.xmpp_port).start()
    nodes = [{"url": f"http://127.0.0.1:{n.rest_port}",
              "xmpp": f"127.0.0.1:{xmpp_proxy.port if n is primary else n.xmpp_port}"} for n in simulator.nodes]
    settings: dict[str, Any] = {
        "FINESSE_NODES": nodes, "SESSION_GRACE_SECONDS": 5.0, "XMPP_RECONNECT_MIN_SECONDS": 0.1,
        "XMPP_RECONNECT_MAX_SECONDS": 0.5, "ALLOWED_ORIGINS": ["http://crm.example.test"],
        "DATABASE_URL": "sqlite:///:memory:", "API_KEYS": [KEY], "FAILOVER_POLL_SECONDS": 0.5,
    }
    app = create_app(settings, config_file="/dev/null")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True)
    thread.start()
    built = Stack(simulator, app, server)
    try:
        yield built, xmpp_proxy
    finally:
        built.close()
        app.extensions["cti_bridge"].close()
        server.shutdown()
        thread.join(5)
        xmpp_proxy.stop()
        simulator.stop_thread()


def _records_for(stack: Any, call_id: str) -> list[dict[str, Any]]:
    import requests

    assert stack.app.extensions["cti_bridge"].records.flush(5), "records still waiting for the database"
    response = requests.get(stack.base + "/api/records", params={"limit": 500},
                            headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert response.status_code == 200, response.text
    return [r for r in response.json()["items"] if r["callId"] == call_id]


def _answered_call(stack: Any, client: CtiClient, ani: str) -> str:
    call_id = stack.ring(to="1001", ani=ani)
    client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)
    return call_id


def test_an_xmpp_reset_during_a_call_reconnects_re_syncs_and_records_the_call_once(xmpp_stack):
    stack, xmpp = xmpp_stack
    client = stack.agent("1001", ready=True)
    call_id = _answered_call(stack, client, "4155550170")
    assert xmpp.connections >= 1

    xmpp.refuse(True)  # keep it down long enough for the call to change unseen
    assert xmpp.reset() >= 1
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting", timeout=5)
    client.call("call.hold", callId=call_id)  # REST works; its XMPP event is not delivered
    xmpp.refuse(False)
    notes = _take_until(client, "connection.changed", lambda p: p["state"] == "connected")
    notes += _take_until(client, "call.updated", lambda p: p["call"]["id"] == call_id and p["call"]["state"] == "held")
    notes += client.drain()
    held = [n for n in notes if n["method"] == "call.updated" and n["params"]["call"]["state"] == "held"]
    assert len(held) == 1, [(n["method"], n["params"].get("call", n["params"].get("agent", n["params"].get("state")))) for n in notes]
    assert [(c["id"], c["state"]) for c in client.call("call.list")] == [(call_id, "held")]
    client.call("call.retrieve", callId=call_id)
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")

    client.call("call.end", callId=call_id)
    ended = client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    assert ended["record"]["outcome"] == "answered"
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    until(lambda: len(_records_for(stack, call_id)) == 1, timeout=5, what="one record")
    later = [n for n in client.drain() if n["method"] == "call.ended"]
    assert later == []
    assert len(_records_for(stack, call_id)) == 1
    assert client.validation_errors == []


def test_two_hundred_ms_of_xmpp_latency_keeps_notifications_in_order(xmpp_stack):
    stack, xmpp = xmpp_stack
    client = stack.agent("1001", ready=True)
    client.drain()
    xmpp.latency(0.2)
    call_id = stack.ring(to="1001", ani="4155550171")
    notes = _take_until(client, "call.ringing", lambda p: p["call"]["id"] == call_id)
    client.call("call.answer", callId=call_id)
    notes += _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")
    client.call("call.hold", callId=call_id)
    notes += _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "HOLD")
    client.call("call.retrieve", callId=call_id)
    notes += _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")
    client.call("call.end", callId=call_id)
    notes += _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    seqs = [n["params"]["seq"] for n in notes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    calls = [(n["method"], n["params"]["call"].get("state")) for n in notes if n["method"].startswith("call.")]
    agent = [n["params"]["agent"]["state"] for n in notes if n["method"] == "agent.stateChanged"]
    assert [m for m, _ in calls][0] == "call.ringing" and [m for m, _ in calls][-1] == "call.ended", calls
    assert [m for m, _ in calls].count("call.ended") == 1 and [m for m, _ in calls].count("call.answered") == 1
    assert agent[-4:] == ["TALKING", "HOLD", "TALKING", "READY"][-len(agent[-4:]):], agent
    assert not [n for n in notes if n["method"] == "connection.changed"]  # latency is not an outage
    assert client.validation_errors == []


# -- a node out of service and back --------------------------------------------------------------

OUTAGE_SECONDS = 30.0  # the figure


@pytest.mark.bridge(API_KEYS=[KEY], FAILOVER_POLL_SECONDS=0.5, SESSION_GRACE_SECONDS=120.0)
def test_a_node_out_of_service_and_back_reports_a_call_of_the_outage_once(stack):
    bridge = stack.app.extensions["cti_bridge"]
    primary = bridge.failover.node_at("127.0.0.1", stack.simulator.primary.xmpp_port)
    assert primary is not None
    client = stack.agent("1001", ready=True)
    client.drain()

    assert stack.sim_post("/nodes/primary", {"status": "OUT_OF_SERVICE"}).status_code == 200
    started = time.monotonic()
    told = client.wait_for("connection.changed", lambda p: p["state"] in ("degraded", "failover"), timeout=5)
    assert time.monotonic() - started < 5.0 and told["state"] in ("degraded", "failover")
    client.wait_for("connection.changed", lambda p: p["state"] == "connected", timeout=15)

    call_id = _answered_call(stack, client, "4155550180")  # starts and ends during the outage
    client.call("call.end", callId=call_id)
    ended = client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    assert ended["record"]["outcome"] == "answered" and ended["record"]["from"] == "4155550180"
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    assert time.monotonic() - started < OUTAGE_SECONDS, "the call did not fit in the outage"

    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))  # the outage itself
    assert stack.sim_post("/nodes/primary", {"status": "IN_SERVICE"}).status_code == 200
    until(lambda: bridge.failover.in_service(primary), timeout=5, what="the primary back in service")

    # a marker event after the node is back: anything about the call would have come before it
    client.call("agent.setState", state="NOT_READY")
    after = _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "NOT_READY")
    after += client.drain()
    again = [n for n in after if n["method"] == "call.ended"]
    assert again == []
    assert len(_records_for(stack, call_id)) == 1
    assert next(a for a in stack.sim_state()["agents"] if a["id"] == "1001")["state"] != "LOGOUT"
    assert client.validation_errors == []
