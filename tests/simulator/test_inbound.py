"""Inbound calls: ring, answer, hold, retrieve, drop, with notifications in Finesse's order."""
from __future__ import annotations

from .harness import actions, participant, variables


def test_inbound_call_lifecycle_in_finesse_order(h):
    rest, xmpp = h.agent("1001", ready=True)
    dialog_id = h.control.ring(to="1001", ani="4155550100", dnis="8001",
                               variables={"callVariable1": "ACCT-99812", "user.crm.caseid": "C-1234"})

    # Ringing: the User goes RESERVED, then the dialog is POSTed to the Dialogs node.
    reserved = xmpp.next()
    assert (reserved.node, reserved.kind, reserved.event) == ("/finesse/api/User/1001", "user", "PUT")
    assert reserved.data.findtext("state") == "RESERVED"
    ring = xmpp.next()
    assert ring.node == "/finesse/api/User/1001/Dialogs"
    assert (ring.event, ring.kind, ring.source) == ("POST", "dialogs", "/finesse/api/User/1001/Dialogs")
    dialog = ring.dialog
    assert dialog.tag == "Dialog" and dialog.findtext("id") == dialog_id
    assert dialog.findtext("state") == "ALERTING"
    assert dialog.findtext("fromAddress") == "4155550100"
    assert dialog.findtext("mediaProperties/DNIS") == "8001"
    assert dialog.findtext("mediaProperties/callType") == "ACD_IN"
    assert variables(dialog)["callVariable1"] == "ACCT-99812"
    assert variables(dialog)["user.crm.caseid"] == "C-1234"
    assert actions(dialog, "71001") == ["ANSWER"]
    assert participant(dialog, "71001").findtext("mediaAddressType") == "AGENT_DEVICE"

    # Answer: Dialog PUT (ACTIVE) with the requestId echoed, then the User goes TALKING.
    response = rest.action(dialog_id, "ANSWER", "71001", requestId="req-answer-1")
    assert response.status_code == 202 and response.content == b""
    assert response.headers["requestId"] == "req-answer-1"
    answered = xmpp.next()
    assert (answered.event, answered.kind, answered.source) == ("PUT", "dialog", f"/finesse/api/Dialog/{dialog_id}")
    assert answered.request_id == "req-answer-1"
    assert answered.dialog.findtext("state") == "ACTIVE"
    assert "HOLD" in actions(answered.dialog, "71001") and "CONSULT_CALL" in actions(answered.dialog, "71001")
    assert xmpp.next().data.findtext("state") == "TALKING"

    assert rest.action(dialog_id, "HOLD", "71001").status_code == 202
    held = xmpp.next()
    assert participant(held.dialog, "71001").findtext("state") == "HELD"
    assert actions(held.dialog, "71001")[0] == "RETRIEVE"
    assert xmpp.next().data.findtext("state") == "HOLD"

    assert rest.action(dialog_id, "RETRIEVE", "71001").status_code == 202
    assert participant(xmpp.next().dialog, "71001").findtext("state") == "ACTIVE"
    assert xmpp.next().data.findtext("state") == "TALKING"

    # Drop: a PUT with everyone DROPPED, the DELETE from the collection, then READY again.
    assert rest.action(dialog_id, "DROP", "71001").status_code == 202
    dropped = xmpp.next()
    assert dropped.event == "PUT" and dropped.dialog.findtext("state") == "DROPPED"
    assert {p.findtext("state") for p in dropped.dialog.iter("Participant")} == {"DROPPED"}
    deleted = xmpp.next()
    assert (deleted.event, deleted.kind) == ("DELETE", "dialogs")
    assert deleted.dialog.findtext("id") == dialog_id
    assert xmpp.next().data.findtext("state") == "READY"
    assert rest.dialogs() == []
