"""Agents: sign-in, state changes, reason codes, errors, auth and lockout, supervisors, presence."""
from __future__ import annotations

import time
from xml.etree.ElementTree import Element

import pytest
import requests
from defusedxml import ElementTree as SafeET

from simulator.config import ReasonSeed, SimConfig

from .conftest import PASSWORD
from .harness import WAIT, poll

USER = "/finesse/api/User"
REASONS = SimConfig().reason_codes  # the seeded reason codes the simulator serves


def api_error(response: requests.Response, status: int, error_type: str) -> Element:
    """A synchronous error: the status and Finesse's capitalised <ApiErrors><ApiError>."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/xml")
    doc = SafeET.fromstring(response.content)
    assert doc.tag == "ApiErrors"
    error = doc.find("ApiError")
    assert error is not None and [c.tag for c in error if c.tag.lower() == c.tag] == []
    assert error.findtext("ErrorType") == error_type, response.text
    assert error.findtext("ErrorMessage")
    return error


def reason(rc_id: int) -> ReasonSeed:
    return next(r for r in REASONS if r.id == rc_id)


# -- sign-in and the User document ----------------------------------------------------------


def test_sign_in_answers_202_then_not_ready_on_the_user_node(h):
    xmpp = h.xmpp("1001")
    assert xmpp.connect()
    rest = h.rest("1001")
    response = rest.put_user("LOGIN", extension="71001")
    assert response.status_code == 202 and response.content == b""

    note = xmpp.next()
    assert (note.node, note.event, note.kind) == (f"{USER}/1001", "PUT", "user")
    assert note.source == f"{USER}/1001"
    user = note.data
    assert user.findtext("state") == "NOT_READY"
    assert user.findtext("extension") == "71001"
    assert user.findtext("loginId") == "1001"

    doc = rest.me()
    assert doc.tag == "User"
    assert doc.findtext("uri") == f"{USER}/1001"
    assert doc.findtext("loginId") == "1001" and doc.findtext("loginName") == "agent1001"
    assert doc.findtext("extension") == "71001"
    assert doc.findtext("state") == "NOT_READY"
    assert doc.find("pendingState") is not None and doc.findtext("pendingState") == ""
    assert doc.findtext("teamId") == "1" and doc.findtext("teamName") == "Sales"
    assert [r.text for r in doc.iterfind("roles/role")] == ["Agent"]
    assert doc.findtext("settings/wrapUpOnIncoming") == "OPTIONAL"
    assert doc.findtext("settings/wrapUpOnOutgoing") == "OPTIONAL"
    assert doc.findtext("dialogs") == f"{USER}/1001/Dialogs"
    assert doc.findtext("stateChangeTime", "").endswith("Z")


def test_supervisor_user_document_lists_both_roles_and_its_team(h):
    doc = h.rest("2001").me()
    assert [r.text for r in doc.iterfind("roles/role")] == ["Agent", "Supervisor"]
    assert (doc.findtext("teamId"), doc.findtext("teamName"), doc.findtext("state")) == ("1", "Sales", "LOGOUT")


def test_ready_then_not_ready_with_a_reason_code(h):
    rest, xmpp = h.agent("1001")
    assert rest.state("READY").status_code == 202
    ready = xmpp.next()
    assert ready.kind == "user" and ready.data.findtext("state") == "READY"
    assert ready.data.findtext("reasonCodeId") == "-1"
    assert ready.data.find("ReasonCode") is None

    break_code = reason(1)
    response = rest.state("NOT_READY", break_code.id)
    assert response.status_code == 202 and response.content == b""
    user = xmpp.next().data
    assert user.findtext("state") == "NOT_READY"
    assert user.findtext("reasonCodeId") == str(break_code.id)
    rc = user.find("ReasonCode")
    assert rc is not None
    assert rc.findtext("category") == "NOT_READY"
    assert rc.findtext("uri") == f"/finesse/api/ReasonCode/{break_code.id}"
    assert rc.findtext("code") == str(break_code.code)
    assert rc.findtext("label") == break_code.label

    doc = rest.me()
    assert doc.findtext("state") == "NOT_READY"
    assert doc.findtext("ReasonCode/label") == break_code.label


def test_logout_with_reason_from_not_ready(h):
    rest, xmpp = h.agent("1001")
    shift_end = reason(11)
    assert rest.state("LOGOUT", shift_end.id).status_code == 202
    user = xmpp.next().data
    assert user.findtext("state") == "LOGOUT"
    assert user.findtext("reasonCodeId") == str(shift_end.id)
    assert user.findtext("ReasonCode/category") == "LOGOUT"
    assert user.findtext("ReasonCode/label") == shift_end.label
    assert rest.me().findtext("state") == "LOGOUT"


def test_ucce_refuses_logout_from_ready(h):
    rest, xmpp = h.agent("1001", ready=True)
    error = api_error(rest.state("LOGOUT", 11), 400, "Invalid State")
    assert error.findtext("ErrorData") == "1001"
    assert rest.me().findtext("state") == "READY"
    # Nothing was published for the refused request: the next notification is the next change.
    assert rest.state("NOT_READY").status_code == 202
    assert xmpp.next().data.findtext("state") == "NOT_READY"


@pytest.mark.sim(deployment="UCCX")
def test_uccx_allows_logout_from_ready(h):
    rest, xmpp = h.agent("1001", ready=True)
    assert rest.state("LOGOUT", 12).status_code == 202
    user = xmpp.next().data
    assert user.findtext("state") == "LOGOUT" and user.findtext("reasonCodeId") == "12"


@pytest.mark.parametrize("state, reason_id", [
    ("NOT_READY", 11),    # a LOGOUT reason for NOT_READY
    ("LOGOUT", 1),        # a NOT_READY reason for LOGOUT
    ("NOT_READY", 999),   # no such reason code
    ("NOT_READY", "abc"),  # not a number
    ("READY", 1),         # READY takes no reason
])
def test_bad_reason_code_is_invalid_input(h, state, reason_id):
    rest, xmpp = h.agent("1001")
    api_error(rest.put_user(state, reasonCodeId=str(reason_id)), 400, "Invalid Input")
    assert rest.me().findtext("state") == "NOT_READY"


def test_state_change_while_logged_out_is_refused(h):
    rest = h.rest("1001")
    for state in ("READY", "NOT_READY", "LOGOUT"):
        api_error(rest.state(state), 400, "Invalid State")
    assert rest.me().findtext("state") == "LOGOUT"


def test_sign_in_without_extension_is_parameter_missing(h):
    rest = h.rest("1001")
    error = api_error(rest.put_user("LOGIN"), 400, "Parameter Missing")
    assert error.findtext("ErrorData") == "extension"
    assert rest.me().findtext("state") == "LOGOUT"


def test_put_without_state_is_parameter_missing(h):
    rest = h.rest("1001")
    response = rest.request("PUT", f"{USER}/1001", "<User><extension>71001</extension></User>")
    api_error(response, 400, "Parameter Missing")


def test_unknown_state_is_invalid_input(h):
    rest, _ = h.agent("1001")
    api_error(rest.state("TALKING"), 400, "Invalid Input")
    api_error(rest.state("SLEEPING"), 400, "Invalid Input")


def test_extension_in_use_by_another_agent_is_refused(h):
    h.agent("1001")
    other = h.rest("1002")
    api_error(other.put_user("LOGIN", extension="71001"), 400, "Invalid Input")
    assert other.me().findtext("state") == "LOGOUT"
    other.login("71002")
    assert other.me().findtext("extension") == "71002"


def test_forced_sign_in_keeps_the_current_state(h):
    rest, xmpp = h.agent("1001", ready=True)
    response = rest.put_user("LOGIN", extension="71001")
    assert response.status_code == 202
    user = xmpp.next().data
    assert user.findtext("state") == "READY"
    assert rest.me().findtext("state") == "READY"


def test_sign_in_after_logout_lands_in_not_ready(h):
    rest, xmpp = h.agent("1001", ready=True)
    assert rest.state("NOT_READY").status_code == 202
    xmpp.wait_user("NOT_READY")
    assert rest.state("LOGOUT").status_code == 202
    xmpp.wait_user("LOGOUT")
    rest.login("71001")
    assert xmpp.next().data.findtext("state") == "NOT_READY"


# -- pending state while on a call ------------------------------------------------------------


def test_ucce_pending_ready_applies_when_the_call_ends(h):
    rest, xmpp = h.agent("1001")  # NOT_READY: the call is not routed (OTHER_IN)
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    xmpp.wait_dialog("POST", "ALERTING")
    assert rest.action(dialog_id, "ANSWER", "71001").status_code == 202
    xmpp.wait_user("TALKING")

    assert rest.state("READY").status_code == 202
    pending = xmpp.next()
    assert pending.kind == "user"
    assert pending.data.findtext("state") == "TALKING"
    assert pending.data.findtext("pendingState") == "READY"
    assert rest.me().findtext("pendingState") == "READY"

    h.control.hangup(dialog_id)
    after = xmpp.wait_user("READY")
    assert after.findtext("pendingState") == ""
    assert rest.me().findtext("state") == "READY"


def test_ucce_pending_not_ready_keeps_its_reason(h):
    rest, xmpp = h.agent("1001", ready=True)
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    xmpp.wait_dialog("POST", "ALERTING")
    assert rest.action(dialog_id, "ANSWER", "71001").status_code == 202
    xmpp.wait_user("TALKING")

    assert rest.state("NOT_READY", 2).status_code == 202
    pending = xmpp.next().data
    assert (pending.findtext("state"), pending.findtext("pendingState")) == ("TALKING", "NOT_READY")

    assert rest.action(dialog_id, "DROP", "71001").status_code == 202
    after = xmpp.wait_user("NOT_READY")
    assert after.findtext("reasonCodeId") == "2"
    assert after.findtext("ReasonCode/label") == reason(2).label
    assert after.findtext("pendingState") == ""


@pytest.mark.sim(deployment="UCCX")
def test_uccx_pending_ready_during_an_acd_call_is_an_async_error(h):
    rest, xmpp = h.agent("1001", ready=True)
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    xmpp.wait_dialog("POST", "ALERTING")
    assert rest.action(dialog_id, "ANSWER", "71001").status_code == 202
    xmpp.wait_user("TALKING")

    response = rest.request("PUT", f"{USER}/1001", "<User><state>READY</state></User>",
                            headers={"requestId": "rq-ready-7"})
    assert response.status_code == 202 and response.content == b""
    note = xmpp.wait(lambda n: n.kind != "dialog")
    assert (note.node, note.event, note.source) == (f"{USER}/1001", "PUT", f"{USER}/1001")
    assert note.request_id == "rq-ready-7"
    assert note.kind == "apiErrors"
    error = note.data.find("apiError")
    assert error is not None
    assert error.findtext("errorType") == "Invalid State"
    assert error.findtext("errorData") == "265"
    assert error.findtext("errorMessage") == "CF_INVALID_AGENT_WORKMODE"
    user = rest.me()
    assert (user.findtext("state"), user.findtext("pendingState")) == ("TALKING", "")


# -- reason codes and wrap-up reasons -----------------------------------------------------------


@pytest.mark.parametrize("category", ["NOT_READY", "LOGOUT"])
def test_reason_codes_by_category(h, category):
    doc = h.rest("1001").xml(f"{USER}/1001/ReasonCodes?category={category}")
    assert doc.tag == "ReasonCodes" and doc.get("category") == category
    expected = [r for r in REASONS if r.category == category]
    codes = doc.findall("ReasonCode")
    assert [c.findtext("uri") for c in codes] == [f"/finesse/api/ReasonCode/{r.id}" for r in expected]
    for code, seed in zip(codes, expected):
        assert code.findtext("category") == category
        assert code.findtext("code") == str(seed.code)
        assert code.findtext("label") == seed.label
        assert code.findtext("forAll") == "true"


def test_reason_codes_need_a_valid_category(h):
    rest = h.rest("1001")
    error = api_error(rest.request("GET", f"{USER}/1001/ReasonCodes"), 400, "Parameter Missing")
    assert error.findtext("ErrorData") == "category"
    api_error(rest.request("GET", f"{USER}/1001/ReasonCodes?category=READY"), 400, "Invalid Input")


def test_wrap_up_reasons(h):
    doc = h.rest("1001").xml(f"{USER}/1001/WrapUpReasons")
    assert doc.tag == "WrapUpReasons"
    items = doc.findall("WrapUpReason")
    seeds = SimConfig().wrap_up_reasons
    assert [w.findtext("label") for w in items] == [s.label for s in seeds]
    assert [w.findtext("uri") for w in items] == [f"/finesse/api/WrapUpReason/{s.id}" for s in seeds]
    assert {w.findtext("forAll") for w in items} == {"true"}


# -- authentication and lockout ------------------------------------------------------------------


def test_wrong_password_and_no_credentials_are_401(h):
    error = api_error(h.rest("1001", password="wrong").request("GET", f"{USER}/1001"), 401, "Authorization Failure")
    assert error.findtext("ErrorData") == "1001"
    response = requests.get(f"{h.primary}{USER}/1001", timeout=WAIT)
    api_error(response, 401, "Authorization Failure")
    response = requests.get(f"{h.primary}{USER}/1001", headers={"Authorization": "Basic !!!"}, timeout=WAIT)
    api_error(response, 401, "Authorization Failure")
    api_error(h.rest("9999").request("GET", f"{USER}/9999"), 401, "Authorization Failure")


@pytest.mark.sim(lockout_seconds=1.0)
def test_five_wrong_passwords_lock_the_account_until_the_lock_expires(h):
    bad, good = h.rest("1001", password="wrong"), h.rest("1001")
    for _ in range(4):
        api_error(bad.request("GET", f"{USER}/1001"), 401, "Authorization Failure")
    assert good.request("GET", f"{USER}/1001").status_code == 200  # success resets the count
    for _ in range(5):
        api_error(bad.request("GET", f"{USER}/1001"), 401, "Authorization Failure")
    locked_at = time.monotonic()
    api_error(good.request("GET", f"{USER}/1001"), 401, "Authorization Failure")
    assert h.control.agent("1001")["locked"] is True
    # Another user is not affected.
    assert h.rest("1002").request("GET", f"{USER}/1002").status_code == 200

    poll(lambda: good.request("GET", f"{USER}/1001").status_code == 200, timeout=5.0)
    assert time.monotonic() - locked_at >= 0.9
    assert h.control.agent("1001")["locked"] is False


@pytest.mark.sim(lockout_seconds=30.0)
def test_lockout_applies_to_xmpp_sign_in(h):
    for _ in range(5):
        api_error(h.rest("1001", password="wrong").request("GET", f"{USER}/1001"), 401, "Authorization Failure")
    assert h.xmpp("1001").connect() is False
    assert h.xmpp("1002").connect() is True


@pytest.mark.sim(lockout_seconds=30.0)
def test_wrong_xmpp_passwords_count_towards_the_lockout(h):
    for _ in range(5):
        assert h.xmpp("1001", password="wrong").connect() is False
    api_error(h.rest("1001").request("GET", f"{USER}/1001"), 401, "Authorization Failure")


def test_an_agent_cannot_read_or_change_another_agent(h):
    h.agent("1002")
    rest = h.rest("1001")
    for response in (rest.request("GET", f"{USER}/1002"),
                     rest.request("PUT", f"{USER}/1002", "<User><state>READY</state></User>"),
                     rest.request("GET", f"{USER}/1002/ReasonCodes?category=NOT_READY")):
        error = api_error(response, 401, "Invalid Authorization User Specified")
        assert error.findtext("ErrorData") == "1001"
    assert h.rest("1002").me().findtext("state") == "NOT_READY"


def test_unknown_user_is_404(h):
    api_error(h.rest("2001").request("GET", f"{USER}/4242"), 404, "User Not Found")



def test_ucce_resolves_a_login_name_to_the_user(h):
    doc = h.rest("1001").xml(f"{USER}/agent1001")
    assert (doc.findtext("loginId"), doc.findtext("loginName")) == ("1001", "agent1001")


@pytest.mark.sim(deployment="UCCX")
def test_uccx_has_no_login_name_lookup(h):
    api_error(h.rest("1001").request("GET", f"{USER}/agent1001"), 404, "User Not Found")


# -- supervisors ------------------------------------------------------------------------------


def test_supervisor_reads_team_members_and_the_team(h):
    h.agent("1001", ready=True)
    supervisor = h.rest("2001")
    member = supervisor.xml(f"{USER}/1001")
    assert (member.findtext("loginId"), member.findtext("state")) == ("1001", "READY")

    users = supervisor.xml("/finesse/api/Team/1/Users")
    assert users.tag == "Users"
    ids = [u.findtext("loginId") for u in users.findall("User")]
    team1 = sorted(a.id for a in SimConfig(password=PASSWORD).all_agents() if a.team_id == "1")
    assert sorted(ids) == team1
    states = {u.findtext("loginId"): u.findtext("state") for u in users.findall("User")}
    assert states["1001"] == "READY" and states["1002"] == "LOGOUT"


@pytest.mark.sim(supervised_teams={"2001": ("1",)})
def test_team_users_need_a_supervisor_of_that_team(h):
    # An agent has the wrong role; a supervisor of another team is not that team's supervisor.
    api_error(h.rest("1001").request("GET", "/finesse/api/Team/1/Users"), 401, "Authorization Failure")
    api_error(h.rest("2001").request("GET", "/finesse/api/Team/2/Users"), 401, "Invalid Supervisor")
    api_error(h.rest("2001").request("GET", f"{USER}/1006"), 401, "Invalid Authorization User Specified")
    api_error(h.rest("2001").request("GET", "/finesse/api/Team/77/Users"), 404, "Not Found")


def test_supervisor_changes_a_member_state_but_cannot_sign_it_in(h):
    supervisor = h.rest("2001")
    login = supervisor.request("PUT", f"{USER}/1001", "<User><state>LOGIN</state><extension>71001</extension></User>")
    api_error(login, 401, "Invalid Authorization User Specified")
    rest, xmpp = h.agent("1001", ready=True)
    response = supervisor.request("PUT", f"{USER}/1001", "<User><state>NOT_READY</state></User>",
                                  headers={"requestId": "sup-1"})
    assert response.status_code == 202
    note = xmpp.next()
    assert (note.data.findtext("state"), note.request_id) == ("NOT_READY", "sup-1")
    assert rest.me().findtext("state") == "NOT_READY"


def test_supervisor_subscribes_to_the_team_node_and_sees_agent_state_changes(h):
    sup = h.xmpp("2001")
    assert sup.connect()
    answer = sup.subscribe("/finesse/api/Team/1/Users")
    sub = answer.find("{http://jabber.org/protocol/pubsub}pubsub/{http://jabber.org/protocol/pubsub}subscription")
    assert sub is not None and sub.get("subscription") == "subscribed"
    assert sub.get("node") == "/finesse/api/Team/1/Users"

    rest, xmpp = h.agent("1001")
    signed_in = sup.next()
    assert signed_in.node == "/finesse/api/Team/1/Users"
    assert signed_in.kind == "user" and signed_in.data.findtext("loginId") == "1001"
    assert signed_in.data.findtext("state") == "NOT_READY"
    assert rest.state("READY").status_code == 202
    ready = sup.next()
    assert (ready.node, ready.data.findtext("state")) == ("/finesse/api/Team/1/Users", "READY")

    # An agent of the other team is not on this node.
    other_rest, other_xmpp = h.agent("1006")
    assert other_rest.state("READY").status_code == 202
    other_xmpp.wait_user("READY")
    sup.sync()
    assert [n for n in sup.drain() if n.kind == "user" and n.data.findtext("loginId") == "1006"] == []


def test_agents_cannot_subscribe_to_a_team_node(h):
    agent = h.xmpp("1001")
    assert agent.connect()
    answer = agent.pubsub("subscribe", "/finesse/api/Team/1/Users")
    assert answer.get("type") == "error"
    assert answer.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") is not None


# -- presence and forced logout (docs/finesse.md 9.8) ---------------------------------------------------


@pytest.mark.sim(presence_grace_seconds=0.5)
def test_presence_loss_forces_logout_with_reason_255(h):
    sup = h.xmpp("2001")
    assert sup.connect()
    sup.subscribe("/finesse/api/Team/1/Users")
    rest, xmpp = h.agent("1001", ready=True)
    sup.wait(lambda n: n.kind == "user" and n.data.findtext("state") == "READY")

    gone = time.monotonic()
    xmpp.disconnect()
    note = sup.wait(lambda n: n.kind == "user" and n.data.findtext("state") == "LOGOUT", timeout=5.0)
    assert time.monotonic() - gone >= 0.4
    assert note.node == "/finesse/api/Team/1/Users"
    assert note.data.findtext("loginId") == "1001"
    assert note.data.findtext("reasonCodeId") == "255"
    agent = h.control.agent("1001")
    assert (agent["state"], agent["reasonCodeId"]) == ("LOGOUT", 255)
    assert rest.me().findtext("reasonCodeId") == "255"


@pytest.mark.sim(presence_grace_seconds=1.5)
def test_reconnecting_within_the_grace_keeps_the_agent_signed_in(h):
    rest, xmpp = h.agent("1001", ready=True)
    xmpp.disconnect()
    back = h.xmpp("1001")
    assert back.connect()
    # The forced logout would be published to the new connection: wait past the grace for it.
    with pytest.raises(AssertionError, match="no matching notification"):
        back.wait(lambda n: n.kind == "user", timeout=2.5)
    agent = h.control.agent("1001")
    assert agent["state"] == "READY" and agent["presence"] == ["primary"]
    assert rest.me().findtext("state") == "READY"
