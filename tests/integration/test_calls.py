"""Wire in, wire out: a WebSocket client drives the real bridge against the simulator.

Every message the clients receive is checked against bridge/protocol/openrpc.json (validate=True).
"""
from __future__ import annotations

import pytest

from bridge.client import RpcError


def test_login_ready_inbound_call_answer_hold_retrieve_end(stack):
    client = stack.client()
    result = client.login("1001", "it-pass", "71001")
    assert result["agent"]["state"] == "NOT_READY" and result["agent"]["extension"] == "71001"
    assert result["calls"] == [] and result["resumeToken"]

    assert client.call("agent.setState", state="READY") == {}
    assert client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")

    dialog = stack.ring(to="1001", ani="4155550100", dnis="8001",
                        variables={"callVariable1": "ACCT-99812", "user.crm.caseid": "C-1234"})
    ringing = client.wait_for("call.ringing")["call"]
    assert ringing["id"] == dialog and ringing["state"] == "ringing"
    assert ringing["ani"] == "4155550100" and ringing["dnis"] == "8001" and ringing["direction"] == "inbound"
    assert ringing["variables"]["callVariable1"] == "ACCT-99812"
    assert ringing["variables"]["user.crm.caseid"] == "C-1234"
    assert ringing["actions"] == ["answer"]

    assert client.call("call.answer", callId=dialog) == {}
    answered = client.wait_for("call.answered")["call"]
    assert answered["state"] == "active" and answered["answeredAt"]
    assert {"hold", "end", "consult", "blindTransfer", "sendDigits"} <= set(answered["actions"])

    client.call("call.hold", callId=dialog)
    assert client.wait_for("call.updated", lambda p: p["call"]["state"] == "held")["call"]["actions"][0] == "retrieve"
    client.call("call.retrieve", callId=dialog)
    client.wait_for("call.updated", lambda p: p["call"]["state"] == "active")

    client.call("call.end", callId=dialog)
    ended = client.wait_for("call.ended")
    record = ended["record"]
    assert ended["call"]["state"] == "ended"
    assert record["callId"] == dialog and record["agentId"] == "1001" and record["outcome"] == "answered"
    assert record["from"] == "4155550100" and record["variables"]["callVariable1"] == "ACCT-99812"
    assert record["durationSeconds"] >= record["talkSeconds"] >= 0
    assert client.call("call.list") == []
    assert client.validation_errors == []


def test_customer_hangup_while_ringing_is_a_missed_call(stack):
    client = stack.agent("1002", ready=True)
    dialog = stack.ring(to="1002", ani="")
    assert client.wait_for("call.ringing")["call"]["ani"] == ""
    assert stack.sim_post(f"/calls/{dialog}/hangup").status_code == 200
    ended = client.wait_for("call.ended")
    assert ended["record"]["outcome"] == "missed" and ended["record"]["answeredAt"] == ""


def test_reason_codes_not_ready_and_logout(stack):
    client = stack.agent("1003")
    codes = client.call("agent.reasonCodes", category="NOT_READY")
    assert {"id": "2", "code": "11", "label": "Lunch"} in codes
    logout_codes = client.call("agent.reasonCodes", category="LOGOUT")
    assert logout_codes and all(set(c) == {"id", "code", "label"} for c in logout_codes)
    assert client.call("agent.wrapUpReasons")[0] == {"id": "1", "label": "Sale"}

    client.call("agent.setState", state="NOT_READY", reasonCodeId="2")
    agent = client.wait_for("agent.stateChanged", lambda p: (p["agent"]["reasonCode"] or {}).get("id") == "2")["agent"]
    assert agent["state"] == "NOT_READY" and agent["reasonCode"]["label"] == "Lunch"

    assert client.call("session.logout", reasonCodeId=logout_codes[0]["id"]) == {}
    assert client.wait_for("session.ended")["reason"] == "logout"
    assert stack.sim_state()["agents"][2]["state"] == "LOGOUT"


def test_refused_state_change_is_4090_with_finesse_details(stack):
    client = stack.agent("1004", ready=True)
    with pytest.raises(RpcError) as refused:
        client.call("session.logout")  # UCCE: LOGOUT only from NOT_READY
    assert refused.value.code == 4090
    assert refused.value.data["errorType"] == "Invalid State"
    assert client.call("agent.get")["state"] == "READY"  # the session lives on


def test_wrong_password_is_4010(stack):
    client = stack.client()
    with pytest.raises(RpcError) as refused:
        client.login("1001", "wrong", "71001")
    assert refused.value.code == 4010
    assert client.call("session.ping")["at"]  # the socket is still usable
    with pytest.raises(RpcError) as not_signed_in:
        client.call("agent.get")
    assert not_signed_in.value.code == 4001
