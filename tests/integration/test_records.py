"""Call records and customer profiles end to end: the simulator, the bridge on a real port, real
WebSocket clients and the REST API over HTTP.

Exactly one record per call, written by the server whether or not a browser is open, equal to the
``call.ended`` record; no duplicate after an XMPP drop and its re-sync; ``GET /api/records``
filters, order, pages and auth; the profile sync round trip; the same on PostgreSQL.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable, Iterator

import pytest
import requests

from bridge.client import CtiClient
from tests.waiting import until
from tests.webhook_receiver import verify

_until = until

KEY = "it-records-key"
SECRET = "whsec_" + base64.b64encode(b"integration-test-records-secret!").decode()
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.bridge(API_KEYS=[KEY])


@pytest.fixture(autouse=True)
def _every_message_valid(request: pytest.FixtureRequest) -> Iterator[None]:
    stacks: list[Any] = []
    if "stack" in request.fixturenames:
        stacks.append(request.getfixturevalue("stack"))
    yield
    for stack in stacks:
        for client in stack.clients:
            assert client.validation_errors == []


def _bridge(stack: Any) -> Any:
    return stack.app.extensions["cti_bridge"]


def _records(stack: Any, **params: Any) -> dict[str, Any]:
    response = requests.get(stack.base + "/api/records", params=params, headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _stored(stack: Any, **params: Any) -> list[dict[str, Any]]:
    """The records once every record the bridge has queued is written."""
    assert _bridge(stack).records.flush(5), "records still waiting for the database"
    return list(_records(stack, limit=500, **params)["items"])




def _for(call_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda params: bool(params["call"]["id"] == call_id)


def _talk(stack: Any, client: CtiClient, agent_id: str, ani: str) -> dict[str, Any]:
    """A customer call to a READY agent, answered and ended by the agent: its call.ended params."""
    call_id = stack.ring(to=agent_id, ani=ani)
    client.wait_for("call.ringing", _for(call_id))
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    client.call("call.end", callId=call_id)
    ended = client.wait_for("call.ended", _for(call_id))
    client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
    return dict(ended)


# -- exactly one record per call -----------------------------------------------------------------

def test_a_normal_call_gets_one_record_equal_to_the_call_ended_record(stack):
    client = stack.agent("1001", ready=True)
    ended = _talk(stack, client, "1001", "4155550100")
    assert _stored(stack) == [ended["record"]]
    assert ended["record"]["outcome"] == "answered" and ended["record"]["from"] == "4155550100"


def test_a_call_that_ends_with_no_browser_open_gets_one_record(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550111")
    client.wait_for("call.ringing", _for(call_id))
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    client.close()  # the tab is gone; the session waits out its grace period
    _until(lambda: not _bridge(stack).registry.get("1001").sockets, what="socket detached")
    assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200  # the customer hangs up
    records = _until(lambda: _records(stack, agentId="1001")["items"], what="record stored")
    assert len(records) == 1
    record = records[0]
    assert (record["callId"], record["agentId"], record["outcome"], record["from"]) == (
        call_id, "1001", "answered", "4155550111")
    assert record["endedAt"] and record["talkSeconds"] >= 0
    # A missed call (rang while nobody was looking) is a record too.
    missed = stack.ring(to="1001", ani="4155550112")
    _until(lambda: any(d["id"] == missed for d in stack.sim_state()["dialogs"]), what="ringing")
    stack.sim_post(f"/calls/{missed}/hangup")
    _until(lambda: len(_records(stack)["items"]) == 2, what="second record")
    assert [(r["callId"], r["outcome"]) for r in _stored(stack)] == [(missed, "missed"), (call_id, "answered")]


@pytest.mark.bridge(API_KEYS=[KEY], SESSION_GRACE_SECONDS=0.3)
def test_a_live_call_outlasts_the_grace_period_and_still_gets_its_record(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550113")
    client.wait_for("call.ringing", _for(call_id))
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    session = _bridge(stack).registry.get("1001")
    client.close()
    # Well past the grace period the session, and so the agent's XMPP connection, is still there.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert _bridge(stack).registry.get("1001") is session, "session ended during a live call"
        time.sleep(0.05)
    assert stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200
    records = _until(lambda: _records(stack, agentId="1001")["items"], what="record stored")
    assert [(r["callId"], r["outcome"]) for r in records] == [(call_id, "answered")]
    _until(lambda: _bridge(stack).registry.get("1001") is None, what="session ended after the call")


def test_a_resync_after_an_xmpp_drop_does_not_duplicate(stack):
    client = stack.agent("1001", ready=True)
    first = _talk(stack, client, "1001", "4155550121")
    # A call that ends while XMPP is down: its record comes from the re-sync, once.
    call_id = stack.ring(to="1001", ani="4155550122")
    client.wait_for("call.ringing", _for(call_id))
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    stack.sim_post("/nodes/primary", {"xmpp": "down"})
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting")
    stack.sim_post(f"/calls/{call_id}/hangup")
    stack.sim_post("/nodes/primary", {"xmpp": "up"})
    second = client.wait_for("call.ended", _for(call_id))
    # Another drop and re-sync: nothing new ended, nothing new stored.
    stack.sim_post("/nodes/primary", {"xmpp": "down"})
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting")
    stack.sim_post("/nodes/primary", {"xmpp": "up"})
    client.wait_for("connection.changed", lambda p: p["state"] == "connected")
    assert _stored(stack) == [second["record"], first["record"]]
    # Even were the same call to end again in a new session (a restart), the store keeps one record.
    again = {**second["record"], "id": "a-new-record-id"}
    assert _bridge(stack).record_writer.write(again) is False
    assert [r["id"] for r in _stored(stack)] == [second["record"]["id"], first["record"]["id"]]


def _outbox_delivered(stack: Any, count: int) -> list[dict[str, Any]]:
    """The outbox once it holds ``count`` rows, every one delivered: the receiver's count is final."""
    def check() -> list[dict[str, Any]]:
        with _bridge(stack).store.transaction() as tx:
            rows = tx.query("SELECT event, call_id, started_at, state FROM outbox ORDER BY id")
        return rows if len(rows) == count and all(r["state"] == "delivered" for r in rows) else []
    return list(_until(check, timeout=15, what=f"{count} delivered webhooks"))


def test_a_reused_finesse_call_id_gets_its_own_record_and_webhooks(stack_from_file, webhook_receiver):
    # Finesse's dialog ids are CTI call ids: they start again when the CTI server or peripheral
    # restarts. The simulator's control API makes the next call reuse the first one's id.
    stack = stack_from_file("", API_KEYS=[KEY], WEBHOOKS={
        "allow_hosts": ["127.0.0.1"], "retry_base_seconds": 0.2, "retry_max_seconds": 0.5, "lease_seconds": 5,
        "endpoints": [{"name": "crm", "url": webhook_receiver.url("/calls/{id}"), "secret": SECRET, "timeout": 2,
                       "events": ["ringing", "answered", "ended", "record"]}]})
    client = stack.agent("1001", ready=True)
    first = _talk(stack, client, "1001", "4155550161")["record"]
    assert stack.sim_post("/dialog-ids", {"next": int(first["callId"])}).status_code == 200
    second = _talk(stack, client, "1001", "4155550162")["record"]
    assert second["callId"] == first["callId"] and second["startedAt"] > first["startedAt"]
    assert _stored(stack) == [second, first]  # the second call is not "a record stored already"

    # The id once more, and this live call re-synced after an XMPP drop: still one call, one record.
    assert stack.sim_post("/dialog-ids", {"next": int(first["callId"])}).status_code == 200
    call_id = stack.ring(to="1001", ani="4155550163")
    assert call_id == first["callId"]
    client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id and p["call"]["from"] == "4155550163")
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", _for(call_id))
    stack.sim_post("/nodes/primary", {"xmpp": "down"})
    client.wait_for("connection.changed", lambda p: p["state"] == "reconnecting")
    stack.sim_post("/nodes/primary", {"xmpp": "up"})
    client.wait_for("connection.changed", lambda p: p["state"] == "connected")
    client.call("call.end", callId=call_id)
    third = client.wait_for("call.ended", _for(call_id))["record"]
    assert _bridge(stack).records.flush(timeout=5)  # the record is stored (its queue writes it on a thread)...
    assert _bridge(stack).record_writer.write({**third, "id": "replayed"}) is False  # ...so a replay is refused
    assert _stored(stack) == [third, second, first]
    assert [r["from"] for r in _stored(stack)] == ["4155550163", "4155550162", "4155550161"]

    rows = _outbox_delivered(stack, 12)  # ringing, answered, ended and record for each of the three calls
    assert {r["call_id"] for r in rows} == {call_id}
    assert len({(r["event"], r["started_at"]) for r in rows}) == 12
    kinds: dict[tuple[str, str], int] = {}
    for got in webhook_receiver.requests:
        body = json.loads(got.body)
        number = (body["data"].get("call") or body["data"]["record"])["from"]
        kinds[(body["type"], number)] = kinds.get((body["type"], number), 0) + 1
    assert kinds == {(kind, number): 1 for kind in ("call.ringing", "call.answered", "call.ended", "record.created")
                     for number in ("4155550161", "4155550162", "4155550163")}
    assert all(verify(SECRET, got.headers, got.body) for got in webhook_receiver.requests)


# -- GET /api/records ------------------------------------------------------------------------------

def test_records_api_filters_orders_and_pages(stack):
    one = stack.agent("1001", ready=True)
    two = stack.agent("1002", ready=True)
    a = _talk(stack, one, "1001", "+1 415 555 0131")["record"]
    b = _talk(stack, two, "1002", "4155550132")["record"]
    c = _talk(stack, one, "1001", "4155550132")["record"]
    assert [r["id"] for r in _stored(stack)] == [c["id"], b["id"], a["id"]]  # newest first
    assert _stored(stack, agentId="1001") == [c, a]
    assert _stored(stack, number="(415) 555-0132") == [c, b]
    assert _stored(stack, number="14155550131") == [a]
    assert _stored(stack, number="71002") == [b]  # the agent's side of the call matches too
    assert _stored(stack, since=b["endedAt"]) == [c, b]
    assert _stored(stack, agentId="1001", since=b["endedAt"]) == [c]
    page = _records(stack, limit=2)
    assert page["items"] == [c, b] and page["next"]
    rest = _records(stack, limit=2, cursor=page["next"])
    assert rest == {"items": [a], "next": None}


def test_records_api_refuses_bad_params_and_keys(stack):
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "ten"}, "limit"), ({"since": "today"}, "since"),
                          ({"number": "unknown"}, "number"), ({"cursor": "???"}, "cursor")]:
        response = requests.get(stack.base + "/api/records", params=params, headers=AUTH, timeout=5)
        assert response.status_code == 400, params
        assert response.json()["error"]["field"] == field and field in response.json()["error"]["message"]
    no_key = requests.get(stack.base + "/api/records", timeout=5)
    assert no_key.status_code == 401 and no_key.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(stack.base + "/api/records", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401


@pytest.mark.bridge(API_KEYS=[])
def test_records_api_is_off_without_keys(stack):
    response = requests.get(stack.base + "/api/records", headers=AUTH, timeout=5)
    assert response.status_code == 403 and response.json()["error"]["code"] == "api_disabled"


# -- profiles: the sync round trip -----------------------------------------------------------------

def test_profile_sync_round_trip(stack):
    api = requests.Session()
    api.headers.update(AUTH)
    contacts = stack.base + "/api/contacts"
    start = api.get(contacts + "/changes", timeout=5).json()
    assert start == {"items": [], "next": "0", "more": False}

    created = api.post(contacts, json={"name": "Ann Example", "phones": ["+1 415 555 0141"],
                                       "attributes": {"crmId": "C-1", "tier": "gold"}}, timeout=5)
    assert created.status_code == 201
    ann = created.json()
    url = stack.base + created.headers["Location"]
    found = api.get(contacts, params={"number": "4155550141"}, timeout=5).json()["items"]
    assert found == [ann]
    assert _bridge(stack).profiles.lookup("(415) 555-0141") == ann  # what the gadgets call

    updated = api.patch(url, json={"attributes": {"tier": "platinum"}}, headers={"If-Match": created.headers["ETag"]},
                        timeout=5)
    assert updated.status_code == 200 and updated.json()["version"] == 2
    assert updated.json()["attributes"] == {"crmId": "C-1", "tier": "platinum"}
    stale = api.put(url, json={"name": "Ann (stale copy)"}, headers={"If-Match": "1"}, timeout=5)
    assert stale.status_code == 409 and stale.json()["error"]["currentVersion"] == 2
    assert api.get(url, timeout=5).json()["name"] == "Ann Example"  # the conflict changed nothing

    bob = api.post(contacts, json={"name": "Bob", "phones": ["4155550142"]}, timeout=5).json()
    gone = api.delete(url, headers={"If-Match": "2"}, timeout=5)
    assert gone.status_code == 200 and gone.json()["deleted"] is True and gone.json()["version"] == 3
    assert api.get(url, timeout=5).status_code == 404
    assert api.get(contacts, params={"number": "4155550141"}, timeout=5).json()["items"] == []

    feed = api.get(contacts + "/changes", params={"since": start["next"]}, timeout=5).json()
    assert [(i["id"], i["version"], i["deleted"]) for i in feed["items"]] == [
        (bob["id"], 1, False), (ann["id"], 3, True)]
    assert feed["items"][1] == {"id": ann["id"], "deleted": True, "version": 3,
                                "updatedAt": gone.json()["updatedAt"], "seq": feed["next"]}
    # A CRM that kept the cursor sees nothing new; one page at a time works the same.
    assert api.get(contacts + "/changes", params={"since": feed["next"]}, timeout=5).json()["items"] == []
    first_page = api.get(contacts + "/changes", params={"limit": 1}, timeout=5).json()
    assert first_page["more"] is True and len(first_page["items"]) == 1


# -- PostgreSQL --------------------------------------------------------------------------------------

def test_records_and_profiles_on_postgresql(stack_from_file, postgres_url):
    stack = stack_from_file("", DATABASE_URL=postgres_url, API_KEYS=[KEY])
    bridge = stack.app.extensions["cti_bridge"]
    assert bridge.store.dialect == "postgresql"
    client = stack.agent("1001", ready=True)
    ended = _talk(stack, client, "1001", "4155550151")
    assert bridge.records.flush(5)
    assert _records(stack) == {"items": [ended["record"]], "next": None}
    created = requests.post(stack.base + "/api/contacts", json={"name": "Pat", "phones": ["4155550151"]},
                            headers=AUTH, timeout=5)
    assert created.status_code == 201
    assert bridge.profiles.lookup("+1 415 555 0151")["name"] == "Pat"
