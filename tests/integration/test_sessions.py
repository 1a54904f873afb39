"""Sessions end to end: tabs sharing one session, resume and replay, the grace period, forced
logout by Finesse, and an XMPP drop with the re-sync after it.

Every message the clients receive is checked against openrpc.json; the autouse fixture fails a
test that left a validation error behind. Waits are on notifications or on a polled condition
with a deadline, never on a fixed sleep.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
import requests

from bridge.client import CtiClient, RpcError

from .conftest import PASSWORD
from tests.waiting import take_until as _take_until, until

_until = until


@pytest.fixture(autouse=True)
def _every_message_valid(stack: Any) -> Iterator[None]:
    yield
    for client in stack.clients:
        assert client.validation_errors == []






def _sim_agent(stack: Any, agent_id: str) -> dict[str, Any]:
    return dict(next(a for a in stack.sim_state()["agents"] if a["id"] == agent_id))


def _bridge(stack: Any) -> Any:
    return stack.app.extensions["cti_bridge"]


def _tab(stack: Any, agent_id: str = "1001") -> tuple[CtiClient, dict[str, Any]]:
    client = stack.client()
    return client, client.login(agent_id, PASSWORD, "7" + agent_id)


def _wait_closed(client: CtiClient, timeout: float = 5.0) -> None:
    """Read until the bridge closes the socket (raises if it does not within ``timeout``)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionError):
        while True:
            client.next_notification(max(0.01, deadline - time.monotonic()))




def _seqs(notes: list[dict[str, Any]]) -> list[int]:
    return [n["params"]["seq"] for n in notes]


# -- tabs ----------------------------------------------------------------------------------------

def test_two_tabs_share_one_session(stack, finesse_logins):
    one, first = _tab(stack)
    two, second = _tab(stack)
    assert second["sessionId"] == first["sessionId"]
    assert second["resumeToken"] != first["resumeToken"]
    assert finesse_logins == ["1001"]  # the second tab did not sign in to Finesse again
    assert _bridge(stack).hub.client_count() == 1
    assert len(_bridge(stack).registry) == 1

    one.call("agent.setState", state="READY")
    call_id = stack.ring(to="1001", ani="4155550100")
    got: dict[CtiClient, list[dict[str, Any]]] = {one: [], two: []}
    got[two] = _take_until(two, "call.ringing", lambda p: p["call"]["id"] == call_id)  # the bridge knows it
    two.call("call.answer", callId=call_id)
    one.call("call.end", callId=call_id)
    for client in (one, two):
        got[client] += _take_until(client, "call.ended", lambda p: p["call"]["id"] == call_id)
        got[client] += _take_until(client, "agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    # Both tabs got every notification, the same messages with the same seq, each once, in order.
    assert got[one] == got[two]
    assert _seqs(got[one]) == list(range(first["seq"] + 1, first["seq"] + 8))
    assert [(n["method"], (n["params"].get("agent") or n["params"].get("call") or {})["state"])
            for n in got[one]] == [
        ("agent.stateChanged", "READY"), ("agent.stateChanged", "RESERVED"), ("call.ringing", "ringing"),
        ("call.answered", "active"), ("agent.stateChanged", "TALKING"), ("call.ended", "ended"),
        ("agent.stateChanged", "READY")]


def test_both_tabs_receive_live_notifications_with_the_same_seq(stack):
    one, _ = _tab(stack)
    two, _ = _tab(stack)
    two.call("agent.setState", state="READY")
    call_id = stack.ring(to="1001")
    got = [_take_until(client, "call.ringing", lambda p: p["call"]["id"] == call_id) for client in (one, two)]
    assert got[0] == got[1]  # the same messages, seq and at included
    assert [n["method"] for n in got[0]] == ["agent.stateChanged", "agent.stateChanged", "call.ringing"]
    seqs = _seqs(got[0])
    assert seqs == list(range(seqs[0], seqs[0] + 3))


# -- resume ----------------------------------------------------------------------------------------

def test_resume_replays_exactly_the_missed_notifications(stack):
    gone = stack.agent("1001", ready=True)
    other, _ = _tab(stack)
    call_id = stack.ring(to="1001", ani="4155550100")
    gone.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    other.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    token, last_seq = gone.resume_token, gone.last_seq
    gone.close()
    assert last_seq is not None and token

    # Missed: the answer (through the other tab), TALKING, the hold, HOLD.
    other.call("call.answer", callId=call_id)
    missed = _take_until(other, "agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")
    other.call("call.hold", callId=call_id)
    missed += _take_until(other, "agent.stateChanged", lambda p: p["agent"]["state"] == "HOLD")
    assert [n["method"] for n in missed] == ["call.answered", "agent.stateChanged", "call.updated",
                                             "agent.stateChanged"]

    back = stack.client()
    result = back.resume(token, last_seq)
    assert set(result) == {"resumeToken", "replayed"} and result["resumeToken"] != token
    assert result["replayed"] == len(missed)
    replayed = [back.next_notification() for _ in range(result["replayed"])]
    assert replayed == missed  # the same messages, seq and at included
    assert _seqs(replayed) == list(range(last_seq + 1, last_seq + 1 + len(missed)))

    # Live again: the next notification follows the replay with no gap and no duplicate.
    back.call("call.retrieve", callId=call_id)
    live = back.next_notification()
    assert live["params"]["seq"] == last_seq + result["replayed"] + 1
    assert live["method"] == "call.updated" and live["params"]["call"]["state"] == "active"

    with pytest.raises(RpcError) as used:  # a resume token is single-use
        stack.client().resume(token, last_seq)
    assert used.value.code == 4001


def test_resume_with_nothing_missed_replays_nothing(stack):
    client = stack.agent("1001", ready=True)
    token, last_seq = client.resume_token, client.last_seq
    client.close()
    back = stack.client()
    assert back.resume(token, last_seq)["replayed"] == 0
    back.call("agent.setState", state="NOT_READY")
    assert back.next_notification()["params"]["seq"] == last_seq + 1


@pytest.mark.bridge(REPLAY_BUFFER_EVENTS=2)
def test_resume_older_than_the_buffer_gets_a_snapshot(stack):
    gone = stack.agent("1001", ready=True)
    other, _ = _tab(stack)
    token, last_seq = gone.resume_token, gone.last_seq
    gone.close()

    call_id = stack.ring(to="1001", ani="4155550100")  # RESERVED, ringing
    other.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    other.call("call.answer", callId=call_id)  # answered, TALKING
    other.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "TALKING")

    back = stack.client()
    result = back.resume(token, last_seq)
    assert "replayed" not in result
    snapshot = result["snapshot"]
    assert snapshot["agent"]["state"] == "TALKING" and snapshot["agent"]["id"] == "1001"
    assert [(c["id"], c["state"]) for c in snapshot["calls"]] == [(call_id, "active")]
    assert snapshot["seq"] >= last_seq + 4 and back.last_seq == snapshot["seq"]

    back.call("call.end", callId=call_id)
    ended = back.next_notification()
    assert ended["method"] == "call.ended" and ended["params"]["seq"] == snapshot["seq"] + 1


def test_resume_with_an_unknown_token_is_4001(stack):
    client = stack.client()
    with pytest.raises(RpcError) as refused:
        client.resume("not-a-token", 0)
    assert refused.value.code == 4001
    with pytest.raises(RpcError) as not_signed_in:
        client.call("agent.get")
    assert not_signed_in.value.code == 4001


# -- grace period ----------------------------------------------------------------------------------

@pytest.mark.bridge(SESSION_GRACE_SECONDS=0.5)
def test_session_ends_after_the_grace_period_and_xmpp_is_closed(stack):
    client = stack.agent("1001")
    assert _sim_agent(stack, "1001")["presence"] != []
    token = client.resume_token
    client.close()
    _until(lambda: _sim_agent(stack, "1001")["presence"] == [], what="agent presence gone")
    assert _bridge(stack).hub.client_count() == 0
    assert len(_bridge(stack).registry) == 0
    with pytest.raises(RpcError) as expired:
        stack.client().resume(token, 0)
    assert expired.value.code == 4001


@pytest.mark.bridge(SESSION_GRACE_SECONDS=0.5)
def test_a_login_within_the_grace_joins_the_same_session(stack, finesse_logins):
    client = stack.agent("1001")
    session_id = client.session_id
    client.close()
    again, result = _tab(stack)
    assert result["sessionId"] == session_id
    assert finesse_logins == ["1001"]
    # Well past the grace of the first socket, the session and its XMPP connection stay.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert _sim_agent(stack, "1001")["presence"] != []
        assert _bridge(stack).hub.client_count() == 1
        time.sleep(0.05)
    assert again.call("agent.get")["id"] == "1001"
    # The last socket gone, the grace runs again and ends the session.
    again.close()
    _until(lambda: _sim_agent(stack, "1001")["presence"] == [], what="agent presence gone")
    assert len(_bridge(stack).registry) == 0


# -- Finesse's side ------------------------------------------------------------------------------

def test_logout_from_another_desktop_ends_the_session(stack):
    client = stack.agent("1001")
    response = requests.put(f"{stack.sim_base}/finesse/api/User/1001", data="<User><state>LOGOUT</state></User>",
                            auth=("1001", PASSWORD), headers={"Content-Type": "application/xml"}, timeout=5)
    assert response.status_code == 202, response.text
    assert client.wait_for("session.ended")["reason"] == "logged_out"
    _wait_closed(client)
    _until(lambda: len(_bridge(stack).registry) == 0, what="session removed")
    _until(lambda: _bridge(stack).hub.client_count() == 0, what="XMPP closed")


@pytest.mark.sim(presence_grace_seconds=0.3)
def test_forced_logout_after_presence_loss_ends_the_session(stack):
    client = stack.agent("1001")
    stack.sim_post("/nodes/primary", {"xmpp": "down"})
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting")
    _until(lambda: _sim_agent(stack, "1001")["state"] == "LOGOUT", what="Finesse forced the logout")
    stack.sim_post("/nodes/primary", {"xmpp": "up"})
    assert client.wait_for("session.ended")["reason"] == "logged_out"
    _wait_closed(client)
    _until(lambda: len(_bridge(stack).registry) == 0, what="session removed")
    _until(lambda: _bridge(stack).hub.client_count() == 0, what="XMPP closed")


def test_xmpp_drop_reconnects_and_reports_what_happened_meanwhile(stack):
    client = stack.agent("1001", ready=True)
    assert stack.sim_post("/nodes/primary", {"xmpp": "down"}).status_code == 200
    assert client.wait_for("connection.changed")["state"] == "reconnecting"
    _until(lambda: _sim_agent(stack, "1001")["presence"] == [], what="presence gone from the sim")
    call_id = stack.ring(to="1001", ani="4155550177")  # published where nobody listens
    assert stack.sim_post("/nodes/primary", {"xmpp": "up"}).status_code == 200

    connected = client.wait_for("connection.changed")
    assert connected["state"] == "connected"
    ringing = client.wait_for("call.ringing")
    assert ringing["call"]["id"] == call_id and ringing["call"]["ani"] == "4155550177"
    assert ringing["seq"] > connected["seq"]
    assert client.call("agent.get")["state"] == "RESERVED"
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)
    assert _bridge(stack).hub.client_count() == 1


def test_a_call_that_ended_during_an_xmpp_drop_is_reported_after_the_resync(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550166")
    client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)

    stack.sim_post("/nodes/primary", {"xmpp": "down"})
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting")
    assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200  # unheard: nobody listens
    stack.sim_post("/nodes/primary", {"xmpp": "up"})

    client.wait_for("connection.changed", lambda p: p["state"] == "connected")
    ended = client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    assert ended["record"]["outcome"] == "answered" and ended["record"]["from"] == "4155550166"
    assert ended["call"]["state"] == "ended" and ended["call"]["endedAt"]
    assert client.call("agent.get")["state"] == "READY"  # the re-sync sets the agent, then the calls
    assert client.call("call.list") == []
