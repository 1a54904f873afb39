"""Call flows end to end: outbound, agent to agent, consult/transfer/conference, blind transfer,
DTMF, call data, wrap-up, and the errors Finesse gives (synchronously or later, as events).

Every message the clients receive is checked against openrpc.json; the autouse fixture fails a
test that left a validation error behind.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from bridge.client import CtiClient, RpcError


@pytest.fixture(autouse=True)
def _every_message_valid(stack: Any) -> Iterator[None]:
    yield
    for client in stack.clients:
        assert client.validation_errors == []


def _for(call_id: str, state: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(params: dict[str, Any]) -> bool:
        call = params["call"]
        return bool(call["id"] == call_id and (state is None or call["state"] == state))
    return match


def _dialog(stack: Any, dialog_id: str) -> dict[str, Any]:
    found = [d for d in stack.sim_state()["dialogs"] if d["id"] == dialog_id]
    assert found, f"dialog {dialog_id} is not in the simulator"
    return dict(found[0])


def _answered_customer_call(stack: Any, client: CtiClient, agent_id: str, **ring: Any) -> str:
    """A customer call rung to a READY agent and answered by it; returns the call id."""
    dialog = stack.ring(to=agent_id, **ring)
    assert client.wait_for("call.ringing", _for(dialog))["call"]["state"] == "ringing"
    client.call("call.answer", callId=dialog)
    client.wait_for("call.answered", _for(dialog))
    return dialog


# -- outbound ------------------------------------------------------------------------------------

def test_make_call_to_an_outside_number_answered_then_ended(stack):
    client = stack.agent("1001")
    assert client.call("call.make", to="4155550199") == {}
    dialing = client.wait_for("call.dialing")["call"]
    call_id = dialing["id"]
    assert dialing["state"] == "dialing" and dialing["direction"] == "outbound"
    assert dialing["from"] == "71001" and dialing["to"] == "4155550199"
    assert "end" in dialing["actions"] and "answer" not in dialing["actions"]

    assert stack.sim_post(f"/calls/{call_id}/answer").status_code == 200
    answered = client.wait_for("call.answered", _for(call_id))["call"]
    assert answered["state"] == "active" and answered["answeredAt"]

    client.call("call.end", callId=call_id)
    ended = client.wait_for("call.ended", _for(call_id))
    record = ended["record"]
    assert record["callId"] == call_id and record["outcome"] == "answered"
    assert record["direction"] == "outbound" and record["to"] == "4155550199" and record["from"] == "71001"
    assert record["answeredAt"] == answered["answeredAt"]
    assert client.call("call.list") == []


CRM_WRITES = [f"callVariable{n}" for n in range(1, 11)] + ["user.crm.*"]


@pytest.mark.bridge(WRITABLE_VARIABLES=CRM_WRITES)
def test_make_call_with_variables_reaches_finesse(stack):
    client = stack.agent("1001")
    variables = {"callVariable1": "ACCT-1001", "user.crm.caseid": "C-42"}
    client.call("call.make", to="4155550123", variables=variables)
    dialing = client.wait_for("call.dialing")["call"]
    assert dialing["variables"]["callVariable1"] == "ACCT-1001"
    assert dialing["variables"]["user.crm.caseid"] == "C-42"
    in_sim = _dialog(stack, dialing["id"])["variables"]
    assert in_sim["callVariable1"] == "ACCT-1001" and in_sim["user.crm.caseid"] == "C-42"

    stack.sim_post(f"/calls/{dialing['id']}/answer")
    client.wait_for("call.answered", _for(dialing["id"]))
    client.call("call.end", callId=dialing["id"])
    record = client.wait_for("call.ended", _for(dialing["id"]))["record"]
    assert record["variables"]["user.crm.caseid"] == "C-42"


def test_make_call_with_a_bad_variable_name_is_invalid_params(stack):
    client = stack.agent("1001")
    with pytest.raises(RpcError) as bad:
        client.call("call.make", to="4155550123", variables={"callVariable11": "x"})
    assert bad.value.code == -32602
    assert stack.sim_state()["dialogs"] == []


def test_make_call_to_another_signed_in_agent(stack):
    caller = stack.agent("1001")
    callee = stack.agent("1002")
    caller.call("call.make", to="71002")
    dialing = caller.wait_for("call.dialing")["call"]
    call_id = dialing["id"]
    ringing = callee.wait_for("call.ringing", _for(call_id))["call"]
    assert ringing["direction"] == "inbound" and ringing["state"] == "ringing"
    assert ringing["from"] == "71001" and ringing["ani"] == "71001" and ringing["actions"] == ["answer"]
    assert dialing["direction"] in ("outbound", "internal")

    callee.call("call.answer", callId=call_id)
    assert callee.wait_for("call.answered", _for(call_id))["call"]["state"] == "active"
    assert caller.wait_for("call.answered", _for(call_id))["call"]["state"] == "active"

    caller.call("call.end", callId=call_id)
    assert caller.wait_for("call.ended", _for(call_id))["record"]["outcome"] == "answered"
    callee_record = callee.wait_for("call.ended", _for(call_id))["record"]
    assert callee_record["outcome"] == "answered" and callee_record["direction"] == "inbound"
    assert callee_record["agentId"] == "1002"


# -- consult, transfer, conference ----------------------------------------------------------------

def _consulted(stack: Any, a: CtiClient, b: CtiClient) -> tuple[str, str]:
    """A on an answered customer call consults 71002; B answers; returns (original, consult) ids."""
    original = _answered_customer_call(stack, a, "1001", ani="4155550100",
                                       variables={"callVariable1": "ACCT-7", "user.crm.caseid": "C-7"})
    assert a.call("call.consult", callId=original, to="71002") == {}
    a.wait_for("call.updated", _for(original, "held"))
    consult = b.wait_for("call.ringing")["call"]
    assert consult["id"] != original and consult["from"] == "71001"
    assert consult["variables"]["callVariable1"] == "ACCT-7"  # the consult carries the call data
    b.call("call.answer", callId=consult["id"])
    b.wait_for("call.answered", _for(consult["id"]))
    a.wait_for("call.updated", lambda p: p["call"]["id"] == original and "transfer" in p["call"]["actions"])
    return original, consult["id"]


def test_consult_then_transfer_keeps_the_customer_call_and_its_data(stack):
    a = stack.agent("1001", ready=True)
    b = stack.agent("1002")
    original, consult = _consulted(stack, a, b)

    assert a.call("call.transfer", callId=original) == {}
    a_ended = a.wait_for("call.ended", _for(original))
    assert a_ended["record"]["outcome"] == "transferred" and a_ended["record"]["agentId"] == "1001"
    assert a_ended["record"]["variables"]["user.crm.caseid"] == "C-7"
    assert a.call("call.list") == []

    b.wait_for("call.ended", _for(consult))
    taken = b.wait_for("call.answered", _for(original))["call"]
    assert taken["state"] == "active" and taken["from"] == "4155550100"
    assert taken["variables"]["callVariable1"] == "ACCT-7" and taken["variables"]["user.crm.caseid"] == "C-7"
    assert [c["id"] for c in b.call("call.list")] == [original]

    stack.sim_post(f"/calls/{original}/hangup")
    record = b.wait_for("call.ended", _for(original))["record"]
    assert record["callId"] == original and record["agentId"] == "1002" and record["outcome"] == "answered"
    assert record["variables"]["callVariable1"] == "ACCT-7"
    assert b.call("call.list") == []


def test_blind_transfer_to_another_agent(stack):
    a = stack.agent("1001", ready=True)
    b = stack.agent("1002", ready=True)
    original = _answered_customer_call(stack, a, "1001", ani="4155550111", variables={"callVariable2": "VIP"})

    assert a.call("call.blindTransfer", callId=original, to="71002") == {}
    record = a.wait_for("call.ended", _for(original))["record"]
    assert record["outcome"] == "transferred" and record["agentId"] == "1001"
    ringing = b.wait_for("call.ringing", _for(original))["call"]
    assert ringing["from"] == "4155550111" and ringing["variables"]["callVariable2"] == "VIP"

    b.call("call.answer", callId=original)
    b.wait_for("call.answered", _for(original))
    stack.sim_post(f"/calls/{original}/hangup")
    assert b.wait_for("call.ended", _for(original))["record"]["outcome"] == "answered"


def test_conference_then_one_agent_leaves_and_the_other_continues(stack):
    a = stack.agent("1001", ready=True)
    b = stack.agent("1002")
    original, consult = _consulted(stack, a, b)

    assert a.call("call.conference", callId=original) == {}
    conf = a.wait_for("call.updated", lambda p: p["call"]["id"] == original and p["call"]["state"] == "active"
                      and p["call"]["callType"] == "CONFERENCE")["call"]
    assert {"71001", "71002", "4155550100"} <= {p["address"] for p in conf["participants"]
                                                 if p["state"] == "active"}
    b.wait_for("call.ended", _for(consult))
    joined = b.wait_for("call.answered", _for(original))["call"]
    assert len([p for p in joined["participants"] if p["state"] == "active"]) == 3

    a.call("call.end", callId=original)
    assert a.wait_for("call.ended", _for(original))["record"]["outcome"] == "conferenced"
    left = b.wait_for("call.updated", lambda p: p["call"]["id"] == original and any(
        q["address"] == "71001" and q["state"] == "dropped" for q in p["call"]["participants"]))["call"]
    assert left["state"] == "active"
    assert [c["id"] for c in b.call("call.list")] == [original]
    assert _dialog(stack, original)["state"] == "ACTIVE"

    stack.sim_post(f"/calls/{original}/hangup")
    assert b.wait_for("call.ended", _for(original))["record"]["agentId"] == "1002"


# -- during a call ---------------------------------------------------------------------------------

def test_send_digits_and_bad_digits(stack):
    client = stack.agent("1001", ready=True)
    call_id = _answered_customer_call(stack, client, "1001")
    assert client.call("call.sendDigits", callId=call_id, digits="1234#") == {}
    assert _dialog(stack, call_id)["dtmf"] == ["1234#"]

    with pytest.raises(RpcError) as bad:
        client.call("call.sendDigits", callId=call_id, digits="12x")
    assert bad.value.code == -32602 and "12x" in f"{bad.value.message} {bad.value.data}"
    assert _dialog(stack, call_id)["dtmf"] == ["1234#"]  # never reached Finesse
    assert client.call("call.sendDigits", callId=call_id, digits="*9") == {}
    assert _dialog(stack, call_id)["dtmf"] == ["1234#", "*9"]


def test_variables_the_routing_scripts_own_are_not_writable_by_default(stack):
    client = stack.agent("1001", ready=True)
    with pytest.raises(RpcError) as refused:
        client.call("call.make", to="4155550123", variables={"callVariable1": "ok", "user.crm.caseid": "C-42"})
    assert (refused.value.code, refused.value.data) == (4003, {"variable": "user.crm.caseid"})
    assert "user.crm.caseid" in refused.value.message
    assert stack.sim_state()["dialogs"] == []  # nothing reached Finesse
    call_id = _answered_customer_call(stack, client, "1001", variables={"user.crm.caseid": "C-7"})
    with pytest.raises(RpcError) as refused:
        client.call("call.updateVariables", callId=call_id, variables={"callVariable1": "x", "user.crm.caseid": "C-8"})
    assert refused.value.code == 4003
    variables = _dialog(stack, call_id)["variables"]
    assert variables["user.crm.caseid"] == "C-7" and variables.get("callVariable1", "") == ""  # none of it written


@pytest.mark.bridge(WRITABLE_VARIABLES=CRM_WRITES)
def test_update_variables_and_a_bad_name(stack):
    client = stack.agent("1001", ready=True)
    call_id = _answered_customer_call(stack, client, "1001", variables={"callVariable1": "old"})
    assert client.call("call.updateVariables", callId=call_id,
                       variables={"callVariable1": "new", "user.crm.note": "upgrade"}) == {}
    updated = client.wait_for("call.updated", lambda p: p["call"]["id"] == call_id
                              and p["call"]["variables"].get("callVariable1") == "new")["call"]
    assert updated["variables"]["user.crm.note"] == "upgrade"
    assert _dialog(stack, call_id)["variables"]["callVariable1"] == "new"

    with pytest.raises(RpcError) as bad:
        client.call("call.updateVariables", callId=call_id, variables={"crm.note": "x"})
    assert bad.value.code == -32602
    with pytest.raises(RpcError) as too_long:
        client.call("call.updateVariables", callId=call_id, variables={"callVariable2": "x" * 41})
    assert too_long.value.code == -32602
    assert "crm.note" not in _dialog(stack, call_id)["variables"]
    assert _dialog(stack, call_id)["variables"]["callVariable2"] == ""


def test_wrap_up_required_set_reason_then_ready(stack):
    client = stack.agent("1009", ready=True)
    call_id = _answered_customer_call(stack, client, "1009", ani="4155550190")
    stack.sim_post(f"/calls/{call_id}/hangup")
    wrapping = client.wait_for("call.updated", _for(call_id, "wrapup"))["call"]
    assert "setWrapUp" in wrapping["actions"]
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] in ("WORK", "WORK_READY"))
    assert [c["state"] for c in client.call("call.list")] == ["wrapup"]

    reasons = client.call("agent.wrapUpReasons")
    assert client.call("call.setWrapUp", callId=call_id, reason=reasons[1]["label"]) == {}
    updated = client.wait_for("call.updated", lambda p: p["call"]["id"] == call_id
                              and p["call"]["wrapUpReason"] == reasons[1]["label"])["call"]
    assert updated["state"] == "wrapup"

    client.call("agent.setState", state="READY")
    ended = client.wait_for("call.ended", _for(call_id))
    assert ended["record"]["wrapUpReason"] == reasons[1]["label"]
    assert ended["record"]["outcome"] == "answered" and ended["record"]["from"] == "4155550190"
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    assert client.call("call.list") == []


# -- errors ----------------------------------------------------------------------------------------

def test_refused_action_is_4090_and_the_session_keeps_working(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001")
    client.wait_for("call.ringing", _for(call_id))
    with pytest.raises(RpcError) as refused:
        client.call("call.hold", callId=call_id)
    assert refused.value.code == 4090
    assert refused.value.data["errorType"] == "Invalid State"
    assert client.call("call.answer", callId=call_id) == {}
    client.wait_for("call.answered", _for(call_id))
    client.call("call.end", callId=call_id)
    client.wait_for("call.ended", _for(call_id))


def test_a_call_that_is_not_this_agents_is_4004(stack):
    a = stack.agent("1001")
    b = stack.agent("1002", ready=True)
    theirs = stack.ring(to="1002")
    b.wait_for("call.ringing", _for(theirs))
    for method, extra in (("call.answer", {}), ("call.end", {}), ("call.blindTransfer", {"to": "71001"}),
                          ("call.updateVariables", {"variables": {"callVariable1": "x"}})):
        with pytest.raises(RpcError) as refused:
            a.request(method, {"callId": theirs, **extra})
        assert refused.value.code == 4004, method
    with pytest.raises(RpcError) as unknown:
        a.call("call.hold", callId="99999999")
    assert unknown.value.code == 4004
    assert _dialog(stack, theirs)["state"] == "ALERTING"  # nothing reached Finesse
    assert _dialog(stack, theirs)["variables"]["callVariable1"] == ""


def test_single_step_transfer_to_a_signed_out_agent_is_a_call_error(stack):
    client = stack.agent("1001", ready=True)
    call_id = _answered_customer_call(stack, client, "1001")
    assert client.call("call.blindTransfer", callId=call_id, to="71008") == {}  # Finesse accepts...
    error = client.wait_for("call.error")  # ... and fails later
    assert error["callId"] == call_id and error["code"] == 4090
    assert error["data"]["errorType"] == "Call Operation Failure"
    assert [c["state"] for c in client.call("call.list")] == ["active"]  # the customer is still there
    client.call("call.end", callId=call_id)
    assert client.wait_for("call.ended", _for(call_id))["record"]["outcome"] == "answered"
