"""Call flows against a real simulator: outbound, agent to agent, consult, transfer, conference,
single-step transfer, DTMF, call data, wrap-up, queues, refused actions and UCCX differences.

Each step reads the agent's next notifications in order (no sleeps: every wait has a timeout),
and every dialog document is checked for Finesse's element names and order (docs/finesse.md 6.1).
"""
from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element

import pytest
import requests
from defusedxml import ElementTree as SafeET

from .harness import actions, participant, variables

API = "/finesse/api"
CUSTOMER = "4155550100"
OUTSIDE = "914155550123"

DIALOG_CHILDREN = ["uri", "id", "associatedDialogUri", "secondaryId", "mediaType", "state", "fromAddress",
                   "toAddress", "callbackNumber", "mediaProperties", "participants"]
MEDIA_UCCE = ["mediaId", "dialedNumber", "callType", "DNIS", "queueNumber", "queueName", "callKeyCallId",
              "callKeySequenceNum", "callKeyPrefix", "wrapUpReason", "callvariables"]
MEDIA_UCCX = ["mediaId", "dialedNumber", "callType", "DNIS", "queueNumber", "queueName", "wrapUpReason",
              "wrapUpItems", "callvariables"]
PARTICIPANT_CHILDREN = ["actions", "mediaAddress", "mediaAddressType", "startTime", "state", "stateCause",
                        "stateChangeTime"]


# -- checks ---------------------------------------------------------------------------------------

def check_shape(dialog: Element, uccx: bool) -> None:
    """Finesse's Dialog: element names, casing and order; participants and call variables."""
    assert [child.tag for child in dialog] == DIALOG_CHILDREN
    dialog_id = dialog.findtext("id") or ""
    assert dialog_id.isdigit() and dialog.findtext("uri") == f"{API}/Dialog/{dialog_id}"
    assert dialog.findtext("mediaType") == "Voice"
    media = dialog.find("mediaProperties")
    assert media is not None and [child.tag for child in media] == (MEDIA_UCCX if uccx else MEDIA_UCCE)
    for cv in media.iter("CallVariable"):
        assert [child.tag for child in cv] == ["name", "value"]
    parties = dialog.find("participants")
    assert parties is not None and len(parties) >= 1
    for party in parties:
        assert party.tag == "Participant"
        assert [child.tag for child in party] == PARTICIPANT_CHILDREN
        assert all(a.tag == "action" for a in party.find("actions"))  # type: ignore[union-attr]
        assert (party.findtext("stateCause") != "") == (party.findtext("state") == "FAILED")


def states(dialog: Element) -> dict[str, str]:
    return {p.findtext("mediaAddress") or "": p.findtext("state") or "" for p in dialog.iter("Participant")}


def api_error(response: requests.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    doc = SafeET.fromstring(response.content)
    assert doc.tag == "ApiErrors" and doc.findtext("ApiError/ErrorType") == error_type, response.text


def dtmf(digits: str) -> str:
    return f"<actionParams><ActionParam><name>dtmfString</name><value>{digits}</value></ActionParam></actionParams>"


def call_data(variables: dict[str, str] | None = None, wrap_up: str | None = None) -> str:
    cvs = "".join(f"<CallVariable><name>{k}</name><value>{v}</value></CallVariable>"
                  for k, v in (variables or {}).items())
    reason = f"<wrapUpReason>{wrap_up}</wrapUpReason>" if wrap_up is not None else ""
    body = f"<callvariables>{cvs}</callvariables>" if variables else ""
    return f"<mediaProperties>{reason}{body}</mediaProperties>"


def dialog_state(h: Any, dialog_id: str) -> dict[str, Any] | None:
    return next((d for d in h.control.state()["dialogs"] if d["id"] == dialog_id), None)


class Party:
    """A signed-in agent: REST as itself, its notifications in order, its extension."""

    def __init__(self, h: Any, user: str, ready: bool = False) -> None:
        self.rest, self.xmpp = h.agent(user, ready=ready)
        self.id, self.ext = user, "7" + user
        self.uccx = h.simulator.config.deployment == "UCCX"

    def user(self, state: str, pending: str = "") -> Element:
        """The next notification is a User PUT with this state (and pendingState)."""
        note = self.xmpp.next()
        source = f"{API}/User/{self.id}"
        assert (note.node, note.event, note.kind, note.source) == (source, "PUT", "user", source), note
        assert note.data is not None
        assert note.data.findtext("state") == state, note
        assert (note.data.findtext("pendingState") or "") == pending, note
        return note.data

    def dialog(self, event: str, state: str, dialog_id: str | None = None, rid: str = "") -> Element:
        """The next notification is a Dialogs POST/DELETE or a Dialog PUT in this dialog state."""
        note = self.xmpp.next()
        node = f"{API}/User/{self.id}/Dialogs"
        assert note.node == node and note.event == event, note
        if event == "PUT":
            assert note.kind == "dialog", note
        else:
            assert note.kind == "dialogs" and note.source == node and len(note.data) == 1, note  # type: ignore[arg-type]
        dialog = note.dialog
        check_shape(dialog, self.uccx)
        if event == "PUT":
            assert note.source == f"{API}/Dialog/{dialog.findtext('id')}"
        assert dialog.findtext("state") == state, (note, states(dialog))
        if dialog_id is not None:
            assert dialog.findtext("id") == dialog_id
        assert note.request_id == rid, note
        return dialog

    def act(self, dialog_id: str, action: str, inner: str = "", **headers: str) -> requests.Response:
        return self.rest.action(dialog_id, action, self.ext, inner, **headers)

    def quiet(self) -> None:
        """Nothing more was sent to this agent (a ping round trip flushes the connection)."""
        self.xmpp.sync()
        assert self.xmpp.drain() == []


def ring_and_answer(h: Any, agent: Party, **ring: Any) -> str:
    """A customer call to a READY agent, answered: RESERVED, POST, PUT ACTIVE, TALKING."""
    dialog_id = h.control.ring(to=agent.id, ani=CUSTOMER, **ring)
    agent.user("RESERVED")
    offered = agent.dialog("POST", "ALERTING", dialog_id)
    assert actions(offered, agent.ext) == ["ANSWER"]
    assert agent.act(dialog_id, "ANSWER").status_code == 202
    answered = agent.dialog("PUT", "ACTIVE", dialog_id)
    assert states(answered) == {CUSTOMER: "ACTIVE", agent.ext: "ACTIVE"}
    agent.user("TALKING")
    return dialog_id


def consult(h: Any, a: Party, b: Party) -> tuple[str, str]:
    """a answers a customer call and consults b, who answers: (original id, consult id)."""
    original = ring_and_answer(h, a, variables={"callVariable1": "ACCT-1"})
    assert a.act(original, "CONSULT_CALL", f"<toAddress>{b.ext}</toAddress>").status_code == 202
    held = a.dialog("PUT", "ACTIVE", original)
    assert states(held) == {CUSTOMER: "ACTIVE", a.ext: "HELD"}
    assert actions(held, a.ext) == ["RETRIEVE", "DROP", "UPDATE_CALL_DATA"]  # no consult answered yet
    started = a.dialog("POST", "INITIATING")
    consult_id = started.findtext("id") or ""
    assert consult_id != original
    assert started.findtext("mediaProperties/callType") == "CONSULT"
    assert started.findtext("associatedDialogUri") == f"{API}/Dialog/{original}"
    assert (started.findtext("fromAddress"), started.findtext("toAddress")) == (a.ext, b.ext)
    assert states(started) == {a.ext: "INITIATING"}
    a.dialog("PUT", "INITIATED", consult_id)
    assert states(a.dialog("PUT", "ALERTING", consult_id)) == {a.ext: "INITIATED", b.ext: "ALERTING"}

    offered = b.dialog("POST", "ALERTING", consult_id)
    assert actions(offered, b.ext) == ["ANSWER"]
    assert variables(offered)["callVariable1"] == "ACCT-1"  # the consult carries the call data
    assert b.act(consult_id, "ANSWER").status_code == 202
    b.dialog("PUT", "ACTIVE", consult_id)
    b.user("TALKING")

    assert states(a.dialog("PUT", "ACTIVE", consult_id)) == {a.ext: "ACTIVE", b.ext: "ACTIVE"}
    # The held original is sent again: its actions now offer TRANSFER and CONFERENCE.
    ready = a.dialog("PUT", "ACTIVE", original)
    assert states(ready)[a.ext] == "HELD"
    assert {"RETRIEVE", "TRANSFER", "CONFERENCE"} <= set(actions(ready, a.ext))
    a.quiet()
    b.quiet()
    return original, consult_id


# -- outbound calls ------------------------------------------------------------------------------

def test_make_call_while_ready_ucce_with_call_variables(h):
    a = Party(h, "1001", ready=True)
    response = a.rest.make_call(a.ext, OUTSIDE, {"callVariable3": "ticket-77", "user.crm.caseid": "C-1"})
    assert response.status_code == 202 and response.content == b""

    # UCCE 12.5+: MAKE_CALL while READY moves the agent to NOT_READY, reason 50006, first.
    not_ready = a.user("NOT_READY")
    assert not_ready.findtext("reasonCodeId") == "50006"
    assert not_ready.findtext("ReasonCode/code") == "50006"
    started = a.dialog("POST", "INITIATING")
    dialog_id = started.findtext("id") or ""
    assert (started.findtext("fromAddress"), started.findtext("toAddress")) == (a.ext, OUTSIDE)
    assert started.findtext("mediaProperties/callType") == "AGENT_OUT"
    assert started.findtext("mediaProperties/dialedNumber") == OUTSIDE
    assert variables(started)["callVariable3"] == "ticket-77"
    assert variables(started)["user.crm.caseid"] == "C-1"
    assert states(started) == {a.ext: "INITIATING"}
    assert actions(started, a.ext) == ["DROP", "UPDATE_CALL_DATA"]
    assert participant(started, a.ext).findtext("mediaAddressType") == "AGENT_DEVICE"
    a.user("TALKING")
    assert states(a.dialog("PUT", "INITIATED", dialog_id)) == {a.ext: "INITIATED"}
    ringing = a.dialog("PUT", "ALERTING", dialog_id)
    assert states(ringing) == {a.ext: "INITIATED", OUTSIDE: "ALERTING"}
    assert participant(ringing, OUTSIDE).findtext("mediaAddressType") == ""  # not an agent device
    assert actions(ringing, OUTSIDE) == []
    a.quiet()  # the far end does not answer on its own in the test fixture

    h.control.answer(dialog_id)
    answered = a.dialog("PUT", "ACTIVE", dialog_id)
    assert states(answered) == {a.ext: "ACTIVE", OUTSIDE: "ACTIVE"}
    assert {"HOLD", "DROP", "SEND_DTMF"} <= set(actions(answered, a.ext))
    assert dialog_state(h, dialog_id)["state"] == "ACTIVE"  # type: ignore[index]
    a.quiet()  # already TALKING: no User change

    assert a.act(dialog_id, "DROP").status_code == 202
    assert set(states(a.dialog("PUT", "DROPPED", dialog_id)).values()) == {"DROPPED"}
    a.dialog("DELETE", "DROPPED", dialog_id)
    assert a.user("NOT_READY").findtext("reasonCodeId") == "50006"
    assert a.rest.dialogs() == [] and dialog_state(h, dialog_id) is None


@pytest.mark.sim(outbound_answer_seconds=0.2)
def test_outbound_far_end_answers_after_configured_delay(h):
    a = Party(h, "1001")
    assert a.rest.make_call(a.ext, OUTSIDE).status_code == 202
    dialog_id = a.dialog("POST", "INITIATING").findtext("id") or ""
    a.user("TALKING")
    a.dialog("PUT", "INITIATED", dialog_id)
    a.dialog("PUT", "ALERTING", dialog_id)
    assert states(a.dialog("PUT", "ACTIVE", dialog_id)) == {a.ext: "ACTIVE", OUTSIDE: "ACTIVE"}


@pytest.mark.sim(deployment="UCCX")
def test_make_call_uccx_refusals_and_no_user_events(h):
    a = Party(h, "1001")
    body = (f"<Dialog><requestedAction>MAKE_CALL</requestedAction><fromAddress>{a.ext}</fromAddress>"
            f"<toAddress>{OUTSIDE}</toAddress><mediaProperties><callvariables><CallVariable><name>callVariable1"
            "</name><value>x</value></CallVariable></callvariables></mediaProperties></Dialog>")
    api_error(a.rest.request("POST", f"{API}/User/1001/Dialogs", body), 400, "Invalid Input")
    api_error(a.rest.make_call(a.ext, a.ext), 400, "Invalid Destination")
    api_error(a.rest.make_call("71005", OUTSIDE), 400, "Invalid Input")  # not the signed-in extension
    a.quiet()

    # A non-ICD call on UCCX: the dialog events only, the agent stays NOT_READY throughout.
    assert a.rest.make_call(a.ext, OUTSIDE).status_code == 202
    dialog_id = a.dialog("POST", "INITIATING").findtext("id") or ""
    a.dialog("PUT", "INITIATED", dialog_id)
    a.dialog("PUT", "ALERTING", dialog_id)
    h.control.answer(dialog_id)
    a.dialog("PUT", "ACTIVE", dialog_id)
    a.quiet()
    assert a.rest.me().findtext("state") == "NOT_READY"
    assert a.act(dialog_id, "DROP").status_code == 202
    a.dialog("PUT", "DROPPED", dialog_id)
    a.dialog("DELETE", "DROPPED", dialog_id)
    a.quiet()


# -- agent to agent ------------------------------------------------------------------------------

def test_agent_to_agent_call(h):
    a, b = Party(h, "1001"), Party(h, "1002", ready=True)
    assert a.rest.make_call(a.ext, b.ext).status_code == 202
    started = a.dialog("POST", "INITIATING")
    dialog_id = started.findtext("id") or ""
    assert started.findtext("mediaProperties/callType") == "AGENT_INSIDE"
    a.user("TALKING")
    a.dialog("PUT", "INITIATED", dialog_id)
    assert states(a.dialog("PUT", "ALERTING", dialog_id)) == {a.ext: "INITIATED", b.ext: "ALERTING"}

    # One dialog, both agents participants: the called agent gets it POSTed, ringing.
    offered = b.dialog("POST", "ALERTING", dialog_id)
    assert (offered.findtext("fromAddress"), offered.findtext("toAddress")) == (a.ext, b.ext)
    assert actions(offered, b.ext) == ["ANSWER"]
    assert participant(offered, b.ext).findtext("mediaAddressType") == "AGENT_DEVICE"
    b.quiet()  # not a routed call: no RESERVED

    assert b.act(dialog_id, "ANSWER", requestId="b-answer").status_code == 202
    assert states(b.dialog("PUT", "ACTIVE", dialog_id, rid="b-answer")) == {a.ext: "ACTIVE", b.ext: "ACTIVE"}
    b.user("TALKING")
    assert states(a.dialog("PUT", "ACTIVE", dialog_id, rid="b-answer")) == {a.ext: "ACTIVE", b.ext: "ACTIVE"}
    a.quiet()

    assert b.act(dialog_id, "DROP").status_code == 202
    for agent, back_to in ((b, "READY"), (a, "NOT_READY")):
        assert set(states(agent.dialog("PUT", "DROPPED", dialog_id)).values()) == {"DROPPED"}
        agent.dialog("DELETE", "DROPPED", dialog_id)
        agent.user(back_to)


def test_call_to_signed_out_agent_fails(h):
    a = Party(h, "1001")
    assert a.rest.make_call(a.ext, "71003").status_code == 202  # 1003 is not signed in
    dialog_id = a.dialog("POST", "INITIATING").findtext("id") or ""
    a.user("TALKING")
    a.dialog("PUT", "INITIATED", dialog_id)
    failed = a.dialog("PUT", "FAILED", dialog_id)
    assert states(failed) == {a.ext: "FAILED"}
    assert participant(failed, a.ext).findtext("stateCause") == "DEVICE_RESOURCE_NOT_AVAILABLE"
    assert actions(failed, a.ext) == ["DROP"]
    assert a.act(dialog_id, "DROP").status_code == 202
    a.dialog("PUT", "DROPPED", dialog_id)
    a.dialog("DELETE", "DROPPED", dialog_id)
    a.user("NOT_READY")


# -- consult, transfer, conference ---------------------------------------------------------------

def test_consult_then_transfer(h):
    a, b = Party(h, "1001", ready=True), Party(h, "1002")
    original, consult_id = consult(h, a, b)

    assert a.act(original, "TRANSFER", requestId="xfer-1").status_code == 202
    # The transferring agent: the consult ends and goes, then its part of the original ends.
    assert set(states(a.dialog("PUT", "DROPPED", consult_id, rid="xfer-1")).values()) == {"DROPPED"}
    a.dialog("DELETE", "DROPPED", consult_id, rid="xfer-1")
    left = a.dialog("PUT", "ACTIVE", original, rid="xfer-1")
    assert states(left) == {CUSTOMER: "ACTIVE", a.ext: "DROPPED", b.ext: "ACTIVE"}
    assert left.findtext("mediaProperties/callType") == "TRANSFER"
    assert left.findtext("secondaryId") == consult_id
    a.dialog("DELETE", "ACTIVE", original, rid="xfer-1")
    a.user("READY")

    # The consulted agent: the consult goes, the original (with the customer) is POSTed.
    b.dialog("PUT", "DROPPED", consult_id, rid="xfer-1")
    b.dialog("DELETE", "DROPPED", consult_id, rid="xfer-1")
    got = b.dialog("POST", "ACTIVE", original)
    assert got.findtext("secondaryId") == consult_id
    assert got.findtext("mediaProperties/callType") == "TRANSFER"
    assert got.findtext("fromAddress") == CUSTOMER
    assert variables(got)["callVariable1"] == "ACCT-1"
    assert states(got)[CUSTOMER] == "ACTIVE" and states(got)[b.ext] == "ACTIVE"
    assert {"HOLD", "DROP"} <= set(actions(got, b.ext))
    a.quiet()
    b.quiet()

    state = h.control.state()
    assert [d["id"] for d in state["dialogs"]] == [original]
    assert {x["id"]: x["dialogs"] for x in state["agents"] if x["id"] in ("1001", "1002")} == \
        {"1001": [], "1002": [original]}
    api_error(b.rest.request("GET", f"{API}/Dialog/{consult_id}"), 404, "Dialog Not Found")
    assert [d.findtext("id") for d in b.rest.dialogs()] == [original]

    h.control.hangup(original)
    assert states(b.dialog("PUT", "DROPPED", original))[b.ext] == "DROPPED"
    b.dialog("DELETE", "DROPPED", original)
    b.user("NOT_READY")
    a.quiet()
    assert h.control.state()["dialogs"] == []


def test_consult_then_conference(h):
    a, b = Party(h, "1001", ready=True), Party(h, "1002")
    original, consult_id = consult(h, a, b)

    assert a.act(original, "CONFERENCE").status_code == 202
    everyone = {CUSTOMER: "ACTIVE", a.ext: "ACTIVE", b.ext: "ACTIVE"}
    for agent, event in ((a, "PUT"), (b, "POST")):
        agent.dialog("PUT", "DROPPED", consult_id)
        agent.dialog("DELETE", "DROPPED", consult_id)
        conf = agent.dialog(event, "ACTIVE", original)
        assert states(conf) == everyone
        assert conf.findtext("mediaProperties/callType") == "CONFERENCE"
        assert conf.findtext("secondaryId") == consult_id
        assert "DROP" in actions(conf, agent.ext)
    a.quiet()
    b.quiet()
    assert [d["id"] for d in h.control.state()["dialogs"]] == [original]

    # The first agent leaves; the second stays on with the customer.
    assert a.act(original, "DROP").status_code == 202
    after = {CUSTOMER: "ACTIVE", a.ext: "DROPPED", b.ext: "ACTIVE"}
    assert states(a.dialog("PUT", "ACTIVE", original)) == after
    a.dialog("DELETE", "ACTIVE", original)
    a.user("READY")
    assert states(b.dialog("PUT", "ACTIVE", original)) == after
    b.quiet()

    h.control.hangup(original)
    b.dialog("PUT", "DROPPED", original)
    b.dialog("DELETE", "DROPPED", original)
    b.user("NOT_READY")
    a.quiet()


def test_consult_retrieve_and_consulted_agent_hangs_up(h):
    a, b = Party(h, "1001", ready=True), Party(h, "1002")
    original, consult_id = consult(h, a, b)

    # RETRIEVE beside the active consult holds the consult first, as a phone line does.
    assert a.act(original, "RETRIEVE").status_code == 202
    held_consult = a.dialog("PUT", "ACTIVE", consult_id)
    assert states(held_consult) == {a.ext: "HELD", b.ext: "ACTIVE"}
    back = a.dialog("PUT", "ACTIVE", original)
    assert states(back)[a.ext] == "ACTIVE"
    assert "TRANSFER" not in actions(back, a.ext)
    b.dialog("PUT", "ACTIVE", consult_id)
    api_error(a.act(original, "TRANSFER"), 400, "Invalid State")
    api_error(a.act(original, "CONSULT_CALL", "<toAddress>71003</toAddress>"), 400, "Generic Error")  # one at a time

    # Back to the consult (the original is held again and offers TRANSFER once more).
    assert a.act(consult_id, "RETRIEVE").status_code == 202
    held_again = a.dialog("PUT", "ACTIVE", original)
    assert states(held_again)[a.ext] == "HELD" and "TRANSFER" in actions(held_again, a.ext)
    assert states(a.dialog("PUT", "ACTIVE", consult_id)) == {a.ext: "ACTIVE", b.ext: "ACTIVE"}
    b.dialog("PUT", "ACTIVE", consult_id)
    a.quiet()
    b.quiet()

    # The consulted agent hangs up: the consult ends, the original stays held without TRANSFER.
    assert b.act(consult_id, "DROP").status_code == 202
    b.dialog("PUT", "DROPPED", consult_id)
    b.dialog("DELETE", "DROPPED", consult_id)
    b.user("NOT_READY")
    a.dialog("PUT", "DROPPED", consult_id)
    a.dialog("DELETE", "DROPPED", consult_id)
    a.user("HOLD")
    alone = a.dialog("PUT", "ACTIVE", original)
    assert actions(alone, a.ext) == ["RETRIEVE", "DROP", "UPDATE_CALL_DATA"]
    a.quiet()


# -- single-step transfer ------------------------------------------------------------------------

def test_single_step_transfer(h):
    a, b = Party(h, "1001", ready=True), Party(h, "1002", ready=True)
    dialog_id = ring_and_answer(h, a, variables={"callVariable2": "VIP"})
    assert a.act(dialog_id, "TRANSFER_SST", f"<toAddress>{b.ext}</toAddress>").status_code == 202

    gone = a.dialog("PUT", "ALERTING", dialog_id)
    assert states(gone) == {CUSTOMER: "ACTIVE", a.ext: "DROPPED", b.ext: "ALERTING"}
    assert gone.findtext("mediaProperties/callType") == "TRANSFER"
    a.dialog("DELETE", "ALERTING", dialog_id)
    a.user("READY")

    b.user("RESERVED")
    offered = b.dialog("POST", "ALERTING", dialog_id)
    assert actions(offered, b.ext) == ["ANSWER"]
    assert variables(offered)["callVariable2"] == "VIP"
    assert offered.findtext("fromAddress") == CUSTOMER
    assert b.act(dialog_id, "ANSWER").status_code == 202
    assert states(b.dialog("PUT", "ACTIVE", dialog_id))[b.ext] == "ACTIVE"
    b.user("TALKING")
    a.quiet()

    h.control.hangup(dialog_id)
    b.dialog("PUT", "DROPPED", dialog_id)
    b.dialog("DELETE", "DROPPED", dialog_id)
    b.user("READY")


def test_single_step_transfer_to_signed_out_agent_fails_asynchronously(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    response = a.act(dialog_id, "TRANSFER_SST", "<toAddress>71004</toAddress>", requestId="sst-9")
    assert response.status_code == 202

    note = a.xmpp.next()
    assert (note.node, note.event, note.kind) == (f"{API}/User/1001/Dialogs", "PUT", "apiErrors"), note
    assert (note.source, note.request_id) == (f"{API}/Dialog/{dialog_id}", "sst-9")
    error = note.data.find("apiError")  # type: ignore[union-attr]
    assert error is not None and [c.tag for c in error] == ["errorData", "errorMessage", "errorType"]
    assert error.findtext("errorType") == "Call Operation Failure"
    assert (error.findtext("errorData"), error.findtext("errorMessage")) == ("34", "CF_RESOURCE_OUT_OF_SERVICE")
    a.quiet()

    # The call stays as it was.
    still = a.rest.xml(f"{API}/Dialog/{dialog_id}")
    assert still.findtext("state") == "ACTIVE" and states(still) == {CUSTOMER: "ACTIVE", a.ext: "ACTIVE"}
    assert still.findtext("mediaProperties/callType") == "ACD_IN"
    assert a.act(dialog_id, "HOLD").status_code == 202
    assert states(a.dialog("PUT", "ACTIVE", dialog_id))[a.ext] == "HELD"


# -- DTMF ----------------------------------------------------------------------------------------

def test_send_dtmf(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    assert a.act(dialog_id, "SEND_DTMF", dtmf("12#")).status_code == 202
    assert a.act(dialog_id, "SEND_DTMF", dtmf("*0AD")).status_code == 202  # UCCE: A-D allowed
    assert dialog_state(h, dialog_id)["dtmf"] == ["12#", "*0AD"]  # type: ignore[index]
    a.quiet()  # DTMF sends no notification

    api_error(a.act(dialog_id, "SEND_DTMF", dtmf("12x")), 400, "Invalid Input")
    api_error(a.act(dialog_id, "SEND_DTMF", dtmf("E")), 400, "Invalid Input")
    api_error(a.act(dialog_id, "SEND_DTMF"), 400, "Parameter Missing")
    assert a.act(dialog_id, "HOLD").status_code == 202
    a.dialog("PUT", "ACTIVE", dialog_id)
    a.user("HOLD")
    api_error(a.act(dialog_id, "SEND_DTMF", dtmf("5")), 401, "Invalid State")
    assert dialog_state(h, dialog_id)["dtmf"] == ["12#", "*0AD"]  # type: ignore[index]
    a.quiet()


@pytest.mark.sim(deployment="UCCX")
def test_send_dtmf_uccx_refuses_a_to_d(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    api_error(a.act(dialog_id, "SEND_DTMF", dtmf("1A")), 400, "Invalid Input")
    assert a.act(dialog_id, "SEND_DTMF", dtmf("0*#9")).status_code == 202
    assert dialog_state(h, dialog_id)["dtmf"] == ["0*#9"]  # type: ignore[index]


# -- call data -----------------------------------------------------------------------------------

def test_update_call_data(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a, variables={"callVariable1": "ACCT-1", "user.crm.caseid": "C-1"})
    body = call_data({"callVariable2": "VIP", "user.crm.caseid": "C-9001", "user.items[2]": "x"}, "Sale")
    assert a.act(dialog_id, "UPDATE_CALL_DATA", body, requestId="ucd-1").status_code == 202
    updated = a.dialog("PUT", "ACTIVE", dialog_id, rid="ucd-1")
    got = variables(updated)
    assert (got["callVariable1"], got["callVariable2"]) == ("ACCT-1", "VIP")
    assert (got["user.crm.caseid"], got["user.items[2]"]) == ("C-9001", "x")
    assert updated.findtext("mediaProperties/wrapUpReason") == "Sale"
    assert dialog_state(h, dialog_id)["variables"]["callVariable2"] == "VIP"  # type: ignore[index]

    refused = [
        call_data({"BACampaign": "spring"}),  # Outbound Option variables are read-only
        call_data({"BAStatus": "PREVIEW_OUTBOUND"}),
        call_data({"callVariable11": "x"}),
        call_data({"crm.caseid": "x"}),  # ECC names need the user. prefix
        call_data({"callVariable4": "x" * 41}),
        call_data({"callVariable4": "é" * 21}),  # 42 bytes: the limit is in bytes
    ]
    for body in refused:
        api_error(a.act(dialog_id, "UPDATE_CALL_DATA", body), 400, "Invalid Input")
    a.quiet()
    assert dialog_state(h, dialog_id)["variables"]["callVariable4"] == ""  # type: ignore[index]

    assert a.act(dialog_id, "UPDATE_CALL_DATA", call_data({"callVariable4": "y" * 40})).status_code == 202
    assert variables(a.dialog("PUT", "ACTIVE", dialog_id))["callVariable4"] == "y" * 40


# -- wrap-up -------------------------------------------------------------------------------------

def test_required_wrap_up_after_acd_call(h):
    w = Party(h, "1009", ready=True)  # wrapUpOnIncoming REQUIRED
    assert w.rest.me().findtext("settings/wrapUpOnIncoming") == "REQUIRED"
    dialog_id = ring_and_answer(h, w)
    h.control.hangup(dialog_id)

    ended = w.dialog("PUT", "DROPPED", dialog_id)
    assert states(ended) == {CUSTOMER: "DROPPED", w.ext: "WRAP_UP"}
    assert actions(ended, w.ext) == ["UPDATE_CALL_DATA"]
    w.user("WORK_READY")  # UCCE, came from READY
    w.quiet()
    assert h.control.agent("1009")["dialogs"] == [dialog_id]  # still in the collection
    assert [d.findtext("id") for d in w.rest.dialogs()] == [dialog_id]

    body = call_data({"callVariable5": "done"}, "Resolved")
    assert w.act(dialog_id, "UPDATE_CALL_DATA", body).status_code == 202
    updated = w.dialog("PUT", "DROPPED", dialog_id)
    assert updated.findtext("mediaProperties/wrapUpReason") == "Resolved"
    assert variables(updated)["callVariable5"] == "done"
    api_error(w.act(dialog_id, "HOLD"), 400, "Invalid State")
    w.quiet()

    assert w.rest.state("READY").status_code == 202  # ends wrap-up at once
    w.dialog("DELETE", "DROPPED", dialog_id)
    w.user("READY")
    assert h.control.agent("1009")["dialogs"] == [] and dialog_state(h, dialog_id) is None


@pytest.mark.sim(wrap_up_seconds=0.5)
def test_wrap_up_timer_ends_wrap_up(h):
    w = Party(h, "1009", ready=True)
    dialog_id = ring_and_answer(h, w)
    assert w.act(dialog_id, "DROP").status_code == 202
    started = time.monotonic()
    assert states(w.dialog("PUT", "DROPPED", dialog_id))[w.ext] == "WRAP_UP"
    w.user("WORK_READY")
    w.dialog("DELETE", "DROPPED", dialog_id)
    w.user("READY")
    assert time.monotonic() - started >= 0.4  # the timer, not an immediate end


@pytest.mark.sim(wrap_up_seconds=0.5)
def test_pending_not_ready_wraps_up_in_work_then_not_ready(h):
    w = Party(h, "1009", ready=True)
    dialog_id = ring_and_answer(h, w)
    assert w.rest.state("NOT_READY", reason=1).status_code == 202
    w.user("TALKING", pending="NOT_READY")
    h.control.hangup(dialog_id)
    w.dialog("PUT", "DROPPED", dialog_id)
    w.user("WORK")  # UCCE: wrap-up before NOT_READY is WORK
    w.dialog("DELETE", "DROPPED", dialog_id)
    back = w.user("NOT_READY")
    assert back.findtext("reasonCodeId") == "1"


def test_ready_during_wrap_up_wins_over_earlier_pending_state(h):
    w = Party(h, "1009", ready=True)
    dialog_id = ring_and_answer(h, w)
    assert w.rest.state("NOT_READY", reason=2).status_code == 202
    w.user("TALKING", pending="NOT_READY")
    h.control.hangup(dialog_id)
    w.dialog("PUT", "DROPPED", dialog_id)
    w.user("WORK")
    assert w.rest.state("READY").status_code == 202
    w.dialog("DELETE", "DROPPED", dialog_id)
    w.user("READY")


def test_optional_agent_requests_work_during_call(h):
    a = Party(h, "1001", ready=True)  # wrapUpOnIncoming OPTIONAL
    dialog_id = ring_and_answer(h, a)
    assert a.rest.state("WORK").status_code == 202
    a.user("TALKING", pending="WORK")
    h.control.hangup(dialog_id)
    assert states(a.dialog("PUT", "DROPPED", dialog_id))[a.ext] == "WRAP_UP"
    a.user("WORK")
    a.quiet()
    assert a.rest.state("READY").status_code == 202
    a.dialog("DELETE", "DROPPED", dialog_id)
    a.user("READY")
    a.quiet()


def test_optional_agent_without_request_does_not_wrap_up(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    h.control.hangup(dialog_id)
    assert states(a.dialog("PUT", "DROPPED", dialog_id))[a.ext] == "DROPPED"
    a.dialog("DELETE", "DROPPED", dialog_id)
    a.user("READY")


def test_customer_hangup_while_ringing(h):
    w = Party(h, "1009", ready=True)  # even with wrap-up REQUIRED: an unanswered call needs none
    dialog_id = h.control.ring(to="1009", ani=CUSTOMER)
    w.user("RESERVED")
    w.dialog("POST", "ALERTING", dialog_id)
    h.control.hangup(dialog_id)
    assert states(w.dialog("PUT", "DROPPED", dialog_id)) == {CUSTOMER: "DROPPED", w.ext: "DROPPED"}
    w.dialog("DELETE", "DROPPED", dialog_id)
    w.user("READY")
    w.quiet()
    assert dialog_state(h, dialog_id) is None


def test_dialog_ids_start_again_as_after_a_cti_server_restart(h):
    a = Party(h, "1001", ready=True)
    first = h.control.ring(to="1001", ani=CUSTOMER)
    a.user("RESERVED")
    a.dialog("POST", "ALERTING", first)
    h.control.hangup(first)
    a.dialog("PUT", "DROPPED", first)
    a.dialog("DELETE", "DROPPED", first)
    a.user("READY")
    set_next = h.control.post("/dialog-ids", {"next": int(first)})
    assert set_next.status_code == 200 and set_next.json() == {"next": first}
    again = h.control.ring(to="1001", ani="4155550199")
    assert again == first  # the same Finesse id, another call
    a.user("RESERVED")
    offered = a.dialog("POST", "ALERTING", again)
    assert offered.findtext("fromAddress") == "4155550199"
    # A live call keeps its id: counting from it again gives the next free one.
    assert h.control.post("/dialog-ids", {"next": int(first)}).status_code == 200
    assert h.control.ring(to="1001", ani=CUSTOMER) == str(int(first) + 1)
    for bad in ({"next": "soon"}, {"next": 0}, {"next": True}, {"next": 2**31}, {}):
        refused = h.control.post("/dialog-ids", bad)
        assert refused.status_code == 400 and "next" in refused.json()["error"], bad


# -- queues --------------------------------------------------------------------------------------

def test_queue_call_goes_to_longest_ready_agent(h):
    agents = {user: Party(h, user) for user in ("1001", "1002", "1003")}
    for user in ("1003", "1001", "1002"):  # READY in this order, not in id order
        assert agents[user].rest.state("READY").status_code == 202
        agents[user].user("READY")

    for expected in ("1003", "1001"):  # each call to the agent READY the longest, among those free
        dialog_id = h.control.ring(queue="Sales", ani=CUSTOMER, variables={"callVariable1": expected})
        agent = agents[expected]
        agent.user("RESERVED")
        offered = agent.dialog("POST", "ALERTING", dialog_id)
        media = offered.find("mediaProperties")
        assert media is not None
        assert (media.findtext("queueName"), media.findtext("queueNumber"), media.findtext("DNIS"),
                media.findtext("callType")) == ("Sales", "5001", "5001", "ACD_IN")
        assert variables(offered)["callVariable1"] == expected
    agents["1002"].quiet()
    assert h.control.agent("1002")["dialogs"] == []


def test_queue_call_waits_for_a_ready_agent(h):
    a, b = Party(h, "1001"), Party(h, "1002")
    dialog_id = h.control.ring(queue="Sales", ani=CUSTOMER)
    state = h.control.state()
    queued = next(d for d in state["dialogs"] if d["id"] == dialog_id)
    assert queued["queued"] is True and queued["participants"] == [
        {"mediaAddress": CUSTOMER, "state": "ACTIVE", "stateCause": "", "agentId": None}]
    assert next(q for q in state["queues"] if q["name"] == "Sales")["waiting"] == [dialog_id]
    api_error(a.rest.request("GET", f"{API}/Dialog/{dialog_id}"), 404, "Dialog Not Found")
    a.quiet()
    b.quiet()

    assert b.rest.state("READY").status_code == 202
    b.user("READY")
    b.user("RESERVED")
    b.dialog("POST", "ALERTING", dialog_id)
    a.quiet()
    state = h.control.state()
    assert next(q for q in state["queues"] if q["name"] == "Sales")["waiting"] == []
    assert next(d for d in state["dialogs"] if d["id"] == dialog_id)["queued"] is False


def test_customer_hangup_while_queued(h):
    a = Party(h, "1001")
    dialog_id = h.control.ring(queue="Sales", ani=CUSTOMER)
    assert dialog_state(h, dialog_id) is not None
    h.control.hangup(dialog_id)
    state = h.control.state()
    assert dialog_state(h, dialog_id) is None
    assert all(q["waiting"] == [] for q in state["queues"])
    assert a.rest.state("READY").status_code == 202
    a.user("READY")
    a.quiet()  # no call is offered


# -- refused actions, recording ------------------------------------------------------------------

def test_disallowed_actions_are_refused(h):
    a, b = Party(h, "1001", ready=True), Party(h, "1002")
    dialog_id = h.control.ring(to="1001", ani=CUSTOMER)
    a.user("RESERVED")
    a.dialog("POST", "ALERTING", dialog_id)
    api_error(a.act(dialog_id, "HOLD"), 400, "Invalid State")
    api_error(a.act(dialog_id, "DROP"), 400, "Invalid State")
    api_error(a.act(dialog_id, "CONSULT_CALL", "<toAddress>71002</toAddress>"), 400, "Generic Error")
    api_error(a.act(dialog_id, "FLY"), 400, "Invalid Input")
    api_error(b.act(dialog_id, "ANSWER"), 401, "Invalid Authorization User Specified")  # not a participant
    api_error(a.act("99999999", "ANSWER"), 404, "Dialog Not Found")

    assert a.act(dialog_id, "ANSWER").status_code == 202
    a.dialog("PUT", "ACTIVE", dialog_id)
    a.user("TALKING")
    api_error(a.act(dialog_id, "ANSWER"), 400, "Invalid State")
    api_error(a.act(dialog_id, "RETRIEVE"), 400, "Invalid State")
    api_error(a.act(dialog_id, "TRANSFER"), 400, "Invalid State")
    api_error(a.act(dialog_id, "START_RECORDING"), 501, "Not Implemented")  # UCCE
    assert a.act(dialog_id, "HOLD").status_code == 202
    a.dialog("PUT", "ACTIVE", dialog_id)
    a.user("HOLD")
    api_error(a.act(dialog_id, "TRANSFER"), 400, "Invalid State")  # held, but no consult
    api_error(a.act(dialog_id, "CONFERENCE"), 400, "Invalid State")
    api_error(a.act(dialog_id, "CONSULT_CALL", "<toAddress>71002</toAddress>"), 400, "Generic Error")
    a.quiet()
    b.quiet()
    assert dialog_state(h, dialog_id)["participants"][1]["state"] == "HELD"  # type: ignore[index]


@pytest.mark.sim(deployment="UCCX")
def test_start_recording_uccx(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    assert a.act(dialog_id, "START_RECORDING", requestId="rec-1").status_code == 202
    assert states(a.dialog("PUT", "ACTIVE", dialog_id, rid="rec-1"))[a.ext] == "ACTIVE"
    assert dialog_state(h, dialog_id)["recording"] is True  # type: ignore[index]


# -- UCCX differences ----------------------------------------------------------------------------

@pytest.mark.sim(deployment="UCCX")
def test_uccx_hold_keeps_agent_talking(h):
    a = Party(h, "1001", ready=True)
    dialog_id = ring_and_answer(h, a)
    assert a.act(dialog_id, "HOLD").status_code == 202
    assert states(a.dialog("PUT", "ACTIVE", dialog_id))[a.ext] == "HELD"
    a.quiet()  # no HOLD User state on UCCX
    assert a.rest.me().findtext("state") == "TALKING"
    assert a.act(dialog_id, "RETRIEVE").status_code == 202
    assert states(a.dialog("PUT", "ACTIVE", dialog_id))[a.ext] == "ACTIVE"
    a.quiet()
