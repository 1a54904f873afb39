"""Finesse node failover end to end (docs/finesse.md 10, bridge/failover.py): the simulator's primary
goes out of service or dies, the agent moves to the secondary (its XMPP presence there) and is
re-synced; with no node in service actions fail fast with 5030; calls that ended meanwhile are
reported once, with their record. The simulator's presence grace stays at Finesse's 60 s: the
agent must never be force-logged-out.

Waits are on notifications or on a polled condition with a deadline, never on a fixed sleep.
"""
from __future__ import annotations

import functools

import time
from typing import Any, Callable, Iterator

import pytest
import requests

from bridge.client import CtiClient, RpcError
from tests.waiting import until

_until = functools.partial(until, timeout=10.0)

KEY = "it-failover-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.bridge(API_KEYS=[KEY], FAILOVER_POLL_SECONDS=0.5)


@pytest.fixture(autouse=True)
def _every_message_valid(stack: Any) -> Iterator[None]:
    yield
    for client in stack.clients:
        assert client.validation_errors == []




def _bridge(stack: Any) -> Any:
    return stack.app.extensions["cti_bridge"]


def _sim_agent(stack: Any, agent_id: str = "1001") -> dict[str, Any]:
    return dict(next(a for a in stack.sim_state()["agents"] if a["id"] == agent_id))


def _for(call_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda params: bool(params["call"]["id"] == call_id)


def _node(stack: Any, name: str, **body: str) -> None:
    response = stack.sim_post(f"/nodes/{name}", body)
    assert response.status_code == 200, response.text


def _records(stack: Any, call_id: str) -> list[dict[str, Any]]:
    assert _bridge(stack).records.flush(5), "records still waiting for the database"
    response = requests.get(stack.base + "/api/records", params={"limit": 500}, headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    return [r for r in response.json()["items"] if r["callId"] == call_id]


def _on_a_call(stack: Any, client: CtiClient, ani: str) -> str:
    call_id = stack.ring(to="1001", ani=ani)
    client.wait_for("call.ringing", _for(call_id))
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    return call_id


def _watch_logout(stack: Any) -> Callable[[], None]:
    """Fails the test if the simulator ever shows agent 1001 logged out (checked at each call)."""
    def check() -> None:
        assert _sim_agent(stack)["state"] != "LOGOUT", "the agent was force-logged-out"
    return check


def _moved_and_still_working(stack: Any, client: CtiClient, call_id: str) -> None:
    """After a failover: connected, XMPP on the secondary, the call goes on and gets one record."""
    no_logout = _watch_logout(stack)
    client.wait_for("connection.changed", lambda p: p["state"] == "connected", timeout=15)
    _until(lambda: _sim_agent(stack)["presence"] == ["secondary"], what="presence on the secondary")
    no_logout()
    assert [c["id"] for c in client.call("call.list")] == [call_id]
    client.call("call.end", callId=call_id)  # REST now goes to the secondary
    ended = client.wait_for("call.ended", _for(call_id))
    assert ended["record"]["outcome"] == "answered"
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    assert len(_records(stack, call_id)) == 1
    # New calls are notified through the secondary and answered through the bridge.
    second = _on_a_call(stack, client, "4155550199")
    client.call("call.end", callId=second)
    client.wait_for("call.ended", _for(second))
    no_logout()
    assert _bridge(stack).hub.client_count() == 1


def test_primary_out_of_service_moves_the_agent_to_the_secondary(stack):
    client = stack.agent("1001", ready=True)
    call_id = _on_a_call(stack, client, "4155550101")
    _node(stack, "primary", status="OUT_OF_SERVICE")
    client.wait_for("connection.changed", lambda p: p["state"] in ("degraded", "failover"), timeout=5)
    _moved_and_still_working(stack, client, call_id)


def test_a_dying_primary_moves_the_agent_to_the_secondary(stack):
    client = stack.agent("1001", ready=True)
    call_id = _on_a_call(stack, client, "4155550102")
    _node(stack, "primary", status="OUT_OF_SERVICE", xmpp="down")
    client.wait_for("connection.changed", lambda p: p["state"] in ("degraded", "failover", "reconnecting"),
                    timeout=5)
    failover = client.wait_for("connection.changed", lambda p: p["state"] == "failover", timeout=5)
    assert failover["node"] == "finesse-b.local"
    _moved_and_still_working(stack, client, call_id)


def test_no_node_in_service_fails_fast_then_back_in_service_is_connected(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550103")
    client.wait_for("call.ringing", _for(call_id))
    _node(stack, "secondary", status="OUT_OF_SERVICE")
    _node(stack, "primary", status="OUT_OF_SERVICE")
    client.wait_for("connection.changed", lambda p: p["state"] == "degraded", timeout=5)
    _until(lambda: not _bridge(stack).failover.any_in_service(), what="no node in service")

    started = time.monotonic()
    with pytest.raises(RpcError) as refused:
        client.call("call.answer", callId=call_id)
    assert refused.value.code == 5030
    assert time.monotonic() - started < 1.0  # the REST read timeout is 10 s

    _node(stack, "primary", status="IN_SERVICE")
    client.wait_for("connection.changed", lambda p: p["state"] == "connected", timeout=10)
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    assert _sim_agent(stack)["presence"] == ["primary"]


def test_a_call_that_ended_during_the_outage_is_reported_once_after_the_resync(stack):
    client = stack.agent("1001", ready=True)
    call_id = _on_a_call(stack, client, "4155550104")
    _node(stack, "secondary", status="OUT_OF_SERVICE")
    _node(stack, "primary", status="OUT_OF_SERVICE")
    client.wait_for("connection.changed", lambda p: p["state"] == "degraded", timeout=5)
    assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200  # nobody publishes it
    late = stack.ring(to="1001", ani="4155550105")  # rings during the outage: reported after it
    assert [c["id"] for c in client.call("call.list")] == [call_id]

    _node(stack, "secondary", status="IN_SERVICE")
    _node(stack, "primary", status="IN_SERVICE")
    connected = client.wait_for("connection.changed", lambda p: p["state"] == "connected", timeout=10)
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 2:  # Finesse's republish and the re-sync, in either order
        note = client.next_notification(max(0.01, deadline - time.monotonic()))
        if note["method"] in ("call.ended", "call.ringing") and note["params"]["call"]["id"] in (call_id, late):
            seen[note["method"]] = note["params"]
    ended = seen["call.ended"]
    assert ended["call"]["id"] == call_id and seen["call.ringing"]["call"]["id"] == late
    assert ended["seq"] > connected["seq"]
    assert ended["record"]["outcome"] == "answered" and ended["record"]["from"] == "4155550104"
    assert _sim_agent(stack)["presence"] == ["primary"]  # kept its session through the outage
    client.call("call.answer", callId=late)
    client.wait_for("call.answered", _for(late))
    client.call("call.end", callId=late)
    client.wait_for("call.ended", _for(late))
    later = [n for n in client.drain() if n["method"] == "call.ended" and n["params"]["call"]["id"] == call_id]
    assert later == []
    assert len(_records(stack, call_id)) == 1
    assert _sim_agent(stack)["state"] != "LOGOUT"


def test_the_finesse_user_unavailable_is_degraded_then_re_synced(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550106")
    client.wait_for("call.ringing", _for(call_id))
    _node(stack, "primary", webapp="down")  # the web app dies; its notification service lives
    client.wait_for("connection.changed", lambda p: p["state"] == "degraded", timeout=5)
    client.call("call.answer", callId=call_id)  # the primary answers 503: the secondary takes it
    _node(stack, "primary", webapp="up")
    connected = client.wait_for("connection.changed", lambda p: p["state"] == "connected", timeout=5)
    answered = client.wait_for("call.answered", _for(call_id))  # unpublished meanwhile: from the re-sync
    assert answered["seq"] > connected["seq"]
    assert client.call("agent.get")["state"] == "TALKING"
    assert _sim_agent(stack)["state"] != "LOGOUT"
