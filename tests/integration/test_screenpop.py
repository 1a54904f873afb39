"""Screen pops end to end: rules in the bridge's config, WebSocket clients, the simulator.

A pop is one ``call.screenPop`` right after the call notification that triggered it, once per
call and trigger for the agent: tabs share it (the same message, the same seq), and a resume or a
new login of the same agent does not pop again. Every message the clients receive is checked
against openrpc.json. No sleeps: "no second pop" is shown by reading every notification up to a
later event (the call's end) that the bridge sends after anything it could have sent before.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

import pytest
import requests

from bridge.client import CtiClient

from .conftest import PASSWORD
from tests.waiting import take_until as _take_until

KEY = "it-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RING_RULES = {"rules": [
    {"name": "VIP caller", "on": "ringing", "match": "all",
     "when": [{"field": "variables.callVariable3", "op": "equals", "value": "VIP"},
              {"field": "ani", "op": "not_empty"}],
     "url": "https://crm.example.com/vip/{ani}?case={variables.callVariable1}#agent={agent.id}",
     "target": "window:crm"},
    {"name": "Search by number", "on": "ringing", "when": [{"field": "ani", "op": "not_empty"}],
     "url": "https://crm.example.com/search?phone={ani}"},
]}
LIFECYCLE_RULES = {"rules": [
    {"name": "Log on answer", "on": "answered", "method": "POST", "target": "iframe",
     "url": "https://crm.example.com/calls/new?dnis={dnis}",
     "form": {"phone": "{ani}", "agent": "{agent.id}", "case": "{variables.user.crm.caseid}"}},
    {"name": "Outbound", "on": "dialing", "url": "https://crm.example.com/dial/{to}", "target": "callback"},
    {"name": "Wrap-up", "on": "ended", "url": "https://crm.example.com/wrap?call={id}"},
]}


@pytest.fixture(autouse=True)
def _every_message_valid(request: pytest.FixtureRequest) -> Iterator[None]:
    # The tests on stack_from_file check their clients themselves.
    stack = request.getfixturevalue("stack") if "stack" in request.fixturenames else None
    yield
    for client in stack.clients if stack is not None else []:
        assert client.validation_errors == []




def _pops(notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n["params"] for n in notes if n["method"] == "call.screenPop"]


def _answer_and_end(client: CtiClient, call_id: str) -> None:
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)
    client.call("call.end", callId=call_id)


def _api(stack: Any, path: str, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{stack.base}/api/screenpop/{path}", json=body, headers=AUTH if headers is None else headers, timeout=5)


# -- pops ----------------------------------------------------------------------------------------

@pytest.mark.bridge(SCREENPOP=RING_RULES)
def test_a_ringing_rule_pops_once_right_after_call_ringing(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="+1 415/555 0100",
                         variables={"callVariable3": "VIP", "callVariable1": "A&B #7 ü"})
    ringing = client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    pop = client.next_notification()
    assert pop["method"] == "call.screenPop" and pop["params"]["seq"] == ringing["seq"] + 1
    assert {k: v for k, v in pop["params"].items() if k not in ("seq", "at")} == {
        "callId": call_id, "method": "GET", "target": "window:crm",
        "url": "https://crm.example.com/vip/%2B1%20415%2F555%200100?case=A%26B%20%237%20%C3%BC#agent=1001"}

    _answer_and_end(client, call_id)
    assert _pops(_take_until(client, "call.ended", lambda p: p["call"]["id"] == call_id)) == []

    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    withheld = stack.ring(to="1001", ani="")  # caller ID withheld: neither rule matches
    assert client.wait_for("call.ringing", lambda p: p["call"]["id"] == withheld)["call"]["ani"] == ""
    _answer_and_end(client, withheld)
    assert _pops(_take_until(client, "call.ended", lambda p: p["call"]["id"] == withheld)) == []


@pytest.mark.bridge(SCREENPOP=RING_RULES)
def test_no_second_pop_in_another_tab_after_a_resume_or_a_new_login(stack):
    one = stack.agent("1001", ready=True)
    two = stack.client()
    two.login("1001", PASSWORD, "71001")  # a second tab, open before the call
    call_id = stack.ring(to="1001", ani="4155550100")
    first = _pops(_take_until(one, "call.screenPop"))
    assert _pops(_take_until(two, "call.screenPop")) == first  # one pop, the same message in both tabs
    assert first[0]["url"] == "https://crm.example.com/search?phone=4155550100"

    token, last_seq = one.resume_token, one.last_seq
    one.close()  # the page reloads and resumes where it was
    resumed = stack.client()
    assert resumed.resume(token, last_seq)["replayed"] == 0
    joined = stack.client()
    login = joined.login("1001", PASSWORD, "71001")  # a new page that signs in again joins the session
    assert [c["id"] for c in login["calls"]] == [call_id]

    _answer_and_end(two, call_id)
    for client in (resumed, joined, two):
        notes = _take_until(client, "call.ended", lambda p: p["call"]["id"] == call_id)
        assert [n["method"] for n in notes if n["method"].startswith("call.")] == \
            ([] if client is two else ["call.answered"]) + ["call.ended"]
        assert _pops(notes) == []


@pytest.mark.bridge(SCREENPOP=RING_RULES)
def test_a_resume_that_missed_the_pop_gets_that_pop_replayed_not_a_new_one(stack):
    one = stack.agent("1001", ready=True)
    two = stack.client()
    two.login("1001", PASSWORD, "71001")
    token, last_seq = one.resume_token, one.last_seq
    one.close()
    call_id = stack.ring(to="1001", ani="4155550100")
    pop = two.wait_for("call.screenPop")
    back = stack.client()
    replayed = back.resume(token, last_seq)["replayed"]
    missed = [back.next_notification() for _ in range(replayed)]
    assert _pops(missed) == [pop]  # the same message, same seq: the toolbar performs each seq once
    _answer_and_end(two, call_id)
    assert _pops(_take_until(back, "call.ended")) == []


@pytest.mark.bridge(SCREENPOP=LIFECYCLE_RULES)
def test_answered_dialing_and_ended_rules(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550100", dnis="8001", variables={"user.crm.caseid": "C-1 & 2"})
    notes = _take_until(client, "call.ringing", lambda p: p["call"]["id"] == call_id)
    client.call("call.answer", callId=call_id)
    notes += _take_until(client, "call.answered", lambda p: p["call"]["id"] == call_id)
    assert _pops(notes) == []  # no ringing rule
    pop = client.next_notification()
    assert pop["method"] == "call.screenPop"
    assert {k: v for k, v in pop["params"].items() if k not in ("seq", "at")} == {
        "callId": call_id, "url": "https://crm.example.com/calls/new?dnis=8001", "method": "POST",
        "target": "iframe", "form": {"phone": "4155550100", "agent": "1001", "case": "C-1 & 2"}}
    client.call("call.end", callId=call_id)
    client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    assert client.next_notification()["params"]["url"] == f"https://crm.example.com/wrap?call={call_id}"

    client.call("agent.setState", state="NOT_READY")
    client.call("call.make", to="4155550199")
    dialing = client.wait_for("call.dialing")
    pop = client.next_notification()["params"]
    assert pop["seq"] == dialing["seq"] + 1 and pop["callId"] == dialing["call"]["id"]
    assert pop["url"] == "https://crm.example.com/dial/4155550199" and pop["target"] == "callback"


# -- the admin API -------------------------------------------------------------------------------

@pytest.mark.bridge(SCREENPOP=RING_RULES, API_KEYS=["another-key", KEY])
def test_dry_run_api_needs_a_key_and_says_which_rule_matches(stack):
    call = {"id": "D9", "ani": "4155550100", "variables": {"callVariable3": "VIP", "callVariable1": "X 1"}}
    body = {"call": call, "on": "ringing", "agent": {"id": "1001", "extension": "71001"}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"}):
        refused = _api(stack, "dryrun", body, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    done = _api(stack, "dryrun", body)
    assert done.status_code == 200
    assert done.json() == {
        "on": "ringing", "matched": "VIP caller", "index": 0,
        "pop": {"callId": "D9", "url": "https://crm.example.com/vip/4155550100?case=X%201#agent=1001",
                "method": "GET", "target": "window:crm"},
        "rules": [{"index": 0, "name": "VIP caller", "on": "ringing", "result": "matched", "reason": ""},
                  {"index": 1, "name": "Search by number", "on": "ringing", "result": "not_evaluated",
                   "reason": "rule 'VIP caller' matched first"}]}

    nobody = _api(stack, "dryrun", {"call": {"id": "D9", "ani": ""}}).json()
    assert nobody["pop"] is None and nobody["matched"] is None
    assert nobody["rules"][0]["reason"] == "variables.callVariable3 equals 'VIP': got ''"
    assert nobody["rules"][1]["reason"] == "ani not_empty: got ''"

    for bad in (None, [], {"on": "ringing"}, {"call": "D9"}, {"call": {}, "on": "ring"}, {"call": {}, "agent": "1001"}):
        answer = _api(stack, "dryrun", bad)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"
    assert _api(stack, "reload").status_code == 409  # the rules came from create_app: no file


def test_the_api_is_off_without_keys(stack):
    refused = _api(stack, "dryrun", {"call": {}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "api_disabled"


RULES_A = '''
[[screenpop.rules]]
name = "A"
on = "ringing"
url = "https://crm.example.com/a/{ani}"
'''
RULES_B = RULES_A.replace('"A"', '"B"').replace("/a/", "/b/")
RULES_BAD = RULES_A + 'when = [{ field = "ani", op = "equal", value = "1" }]\n'


def _ring_and_pop(stack: Any, client: CtiClient, ani: str) -> str:
    call_id = stack.ring(to="1001", ani=ani)
    url = str(client.wait_for("call.screenPop", lambda p: p["callId"] == call_id)["url"])
    _answer_and_end(client, call_id)
    client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    return url


def test_reload_api_reads_the_file_again_and_keeps_the_rules_when_the_file_is_bad(stack_from_file):
    stack = stack_from_file(RULES_A, API_KEYS=[KEY], SCREENPOP_RELOAD_SECONDS=3600.0)
    path = stack.app.config["SCREENPOP_FILE"]
    client = stack.agent("1001", ready=True)
    assert _ring_and_pop(stack, client, "111") == "https://crm.example.com/a/111"

    with open(path, "w") as handle:
        handle.write(RULES_B)
    assert _ring_and_pop(stack, client, "222") == "https://crm.example.com/a/222"  # not checked for an hour
    done = _api(stack, "reload")
    assert done.status_code == 200 and done.json() == {"file": path, "rules": ["B"]}
    assert _ring_and_pop(stack, client, "333") == "https://crm.example.com/b/333"

    with open(path, "w") as handle:
        handle.write(RULES_BAD)
    refused = _api(stack, "reload")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "bad_rules"
    assert refused.json()["error"]["message"].startswith(
        "SCREENPOP.rules[0].when[0].op: unknown op 'equal'") and "(rule 'A')" in refused.json()["error"]["message"]
    assert _ring_and_pop(stack, client, "444") == "https://crm.example.com/b/444"
    assert _api(stack, "reload", headers={}).status_code == 401
    assert [c.validation_errors for c in stack.clients] == [[]]


def test_rules_reload_by_themselves_when_the_file_changes(stack_from_file):
    stack = stack_from_file(RULES_A, SCREENPOP_RELOAD_SECONDS=0.0)  # check the mtime at every use
    path = stack.app.config["SCREENPOP_FILE"]
    client = stack.agent("1001", ready=True)
    assert _ring_and_pop(stack, client, "111") == "https://crm.example.com/a/111"
    with open(path, "w") as handle:
        handle.write(RULES_B)
    stamp = os.stat(path).st_mtime_ns + 1_000_000_000  # a coarse mtime must not hide the change
    os.utime(path, ns=(stamp, stamp))
    assert _ring_and_pop(stack, client, "222") == "https://crm.example.com/b/222"
    with open(path, "w") as handle:
        handle.write(RULES_BAD)
    os.utime(path, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    assert _ring_and_pop(stack, client, "333") == "https://crm.example.com/b/333"  # the bad file is ignored
    assert [c.validation_errors for c in stack.clients] == [[]]
