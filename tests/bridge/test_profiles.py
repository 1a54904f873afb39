"""bridge/profiles.py on every database, and its REST API through Flask's test client."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from app import create_app
from bridge.profiles import ContactNotFound, FieldError, Profiles, VersionConflict
from bridge.store import Store

NODES = [{"url": "http://127.0.0.1:9", "xmpp": "127.0.0.1:9"}]
ANN = {"name": "Ann Example", "phones": ["+1 (415) 555-0100", "71001"], "attributes": {"tier": "gold"}}


@pytest.fixture
def profiles(store: Store) -> Profiles:
    return Profiles(store)


# -- create, read, validate --------------------------------------------------------------------------

def test_create_and_get(profiles: Profiles) -> None:
    ann = profiles.create(ANN)
    assert ann == {"id": ann["id"], "name": "Ann Example", "phones": ["+1 (415) 555-0100", "71001"],
                   "attributes": {"tier": "gold"}, "updatedAt": ann["updatedAt"], "version": 1}
    assert ann["updatedAt"].endswith("Z")
    assert profiles.get(ann["id"]) == ann
    with pytest.raises(ContactNotFound):
        profiles.get("no-such-id")


@pytest.mark.parametrize("body, field", [
    ({}, "name"), ({"name": "  "}, "name"), ({"name": 7}, "name"), ({"name": "x" * 201}, "name"),
    ({"name": "A", "phones": "4155550100"}, "phones"), ({"name": "A", "phones": ["415", "call me"]}, "phones[1]"),
    ({"name": "A", "phones": [4155550100]}, "phones[0]"), ({"name": "A", "phones": ["1"] * 21}, "phones"),
    ({"name": "A", "attributes": ["x"]}, "attributes"), ({"name": "A", "email": "a@example.com"}, "email"),
    ([], "body")])
def test_validation_names_the_field(body: Any, field: str) -> None:
    profiles = Profiles(Store.from_url("sqlite:///:memory:"))
    with pytest.raises(FieldError) as bad:
        profiles.create(body)
    assert bad.value.field == field
    profiles.store.close()


# -- look up by number -------------------------------------------------------------------------------

def test_lookup_by_number_digits_then_the_last_ten(profiles: Profiles) -> None:
    ann = profiles.create(ANN)
    bob = profiles.create({"name": "Bob", "phones": ["+44 20 7946 0000"]})
    for number in ("+14155550100", "1 415 555 0100", "14155550100", "(415) 555-0100", "4155550100"):
        assert profiles.lookup(number) == ann, number
    assert profiles.lookup("71001") == ann  # short numbers match exactly
    assert profiles.lookup("1001") is None  # ...and only exactly
    # No full match, so the last ten digits: national format, a trunk 0, an international prefix.
    for number in ("020 7946 0000", "+44 (0)20 7946 0000", "00 44 20 7946 0000"):
        assert profiles.lookup(number) == bob, number
    assert profiles.lookup("+1 020 7946 0001") is None
    assert profiles.lookup("") is None and profiles.lookup("anonymous") is None  # caller ID withheld
    with pytest.raises(FieldError) as bad:
        profiles.find("anonymous")
    assert bad.value.field == "number"


def test_several_matches_most_recently_updated_first(profiles: Profiles) -> None:
    first = profiles.create({"name": "Old", "phones": ["4155550100"]})
    second = profiles.create({"name": "New", "phones": ["+1 415 555 0100"]})
    assert [c["id"] for c in profiles.find("+14155550100")] == [second["id"]]  # the full match wins
    assert [c["id"] for c in profiles.find("4155550100")] == [first["id"]]
    profiles.patch(first["id"], {"phones": ["+14155550100"]})
    assert [c["id"] for c in profiles.find("14155550100")] == [first["id"], second["id"]]


# -- versions ----------------------------------------------------------------------------------------

def test_replace_and_patch_with_versions(profiles: Profiles) -> None:
    ann = profiles.create(ANN)
    put = profiles.replace(ann["id"], {"name": "Ann B", "phones": ["4155550111"]}, if_match=1)
    assert (put["version"], put["name"], put["phones"], put["attributes"]) == (2, "Ann B", ["4155550111"], {})
    assert profiles.lookup("4155550100") is None and profiles.lookup("4155550111") == put  # phones re-indexed
    with pytest.raises(VersionConflict) as stale:
        profiles.patch(ann["id"], {"name": "Stale"}, if_match=1)
    assert stale.value.current == 2
    patched = profiles.patch(ann["id"], {"attributes": {"tier": "silver", "crmId": "C-9"}}, if_match=2)
    patched = profiles.patch(ann["id"], {"attributes": {"tier": None}})  # no If-Match: last writer wins
    assert (patched["version"], patched["name"], patched["attributes"]) == (4, "Ann B", {"crmId": "C-9"})
    with pytest.raises(FieldError) as wrong:
        profiles.replace(ann["id"], {"id": "other", "name": "X"})
    assert wrong.value.field == "id"
    echo = profiles.replace(ann["id"], {**patched, "name": "Ann C"}, if_match=4)  # a GET's body, edited
    assert echo["version"] == 5 and echo["name"] == "Ann C"


def test_delete_leaves_a_tombstone(profiles: Profiles) -> None:
    ann = profiles.create(ANN)
    with pytest.raises(VersionConflict):
        profiles.delete(ann["id"], if_match=7)
    gone = profiles.delete(ann["id"], if_match=1)
    assert gone == {"id": ann["id"], "deleted": True, "version": 2, "updatedAt": gone["updatedAt"]}
    assert profiles.lookup("4155550100") is None
    for action in (lambda: profiles.get(ann["id"]), lambda: profiles.delete(ann["id"]),
                   lambda: profiles.patch(ann["id"], {"name": "Back"})):
        with pytest.raises(ContactNotFound):
            action()


# -- the changes feed --------------------------------------------------------------------------------

def test_changes_since_a_cursor_with_tombstones_and_pages(profiles: Profiles) -> None:
    assert profiles.changes() == ([], "0", False)
    ann = profiles.create(ANN)
    bob = profiles.create({"name": "Bob", "phones": ["4155550122"]})
    items, cursor, more = profiles.changes()
    assert [(i["id"], i["version"], i["deleted"]) for i in items] == [(ann["id"], 1, False), (bob["id"], 1, False)]
    assert items[0] == {**ann, "deleted": False, "seq": items[0]["seq"]} and not more
    profiles.patch(ann["id"], {"name": "Ann 2"})
    profiles.patch(ann["id"], {"name": "Ann 3"})
    profiles.delete(bob["id"])
    carol = profiles.create({"name": "Carol"})
    later, cursor2, _ = profiles.changes(cursor)
    # Each contact once, in its latest state, in the order of its last change.
    assert [(i["id"], i["version"], i["deleted"]) for i in later] == [
        (ann["id"], 3, False), (bob["id"], 2, True), (carol["id"], 1, False)]
    assert later[0]["name"] == "Ann 3"
    assert later[1] == {"id": bob["id"], "deleted": True, "version": 2, "updatedAt": later[1]["updatedAt"],
                        "seq": later[1]["seq"]}
    assert [int(i["seq"]) for i in later] == sorted(int(i["seq"]) for i in later) and cursor2 == later[-1]["seq"]
    assert profiles.changes(cursor2) == ([], cursor2, False)
    page, next_cursor, more = profiles.changes(cursor, limit=2)
    assert len(page) == 2 and more and profiles.changes(next_cursor, limit=2)[0] == later[2:]


@pytest.mark.parametrize("since, limit, field", [("abc", 10, "since"), ("-1", 10, "since"), ("0", 0, "limit")])
def test_bad_feed_params(since: str, limit: int, field: str) -> None:
    profiles = Profiles(Store.from_url("sqlite:///:memory:"))
    with pytest.raises(FieldError) as bad:
        profiles.changes(since, limit)
    assert bad.value.field == field
    profiles.store.close()


def test_concurrent_writers_make_a_gapless_feed_in_commit_order(profiles: Profiles) -> None:
    """A reader following the feed while others write misses nothing (the counter row orders commits)."""
    ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    seen: dict[str, int] = {}
    cursor = "0"

    def writer(n: int) -> None:
        for i in range(15):
            contact = profiles.create({"name": f"W{n}-{i}", "phones": [f"41555{n:02d}{i:03d}"]})
            with lock:
                ids.append(contact["id"])

    def reader() -> None:
        nonlocal cursor
        while not stop.is_set():
            items, cursor, _ = profiles.changes(cursor)
            for item in items:
                seen[item["id"]] = int(item["seq"])
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    follower = threading.Thread(target=reader)
    follower.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    follower.join(10)
    items, cursor, _ = profiles.changes(cursor)
    for item in items:
        seen[item["id"]] = int(item["seq"])
    assert sorted(seen) == sorted(ids) and len(ids) == 60
    assert sorted(seen.values()) == list(range(1, 61))


# -- REST API (Flask test client; the full round trip over HTTP is in tests/integration) -------------

@pytest.fixture
def api() -> Any:
    app = create_app({"FINESSE_NODES": NODES, "DATABASE_URL": "sqlite:///:memory:", "API_KEYS": ["k1"]},
                     config_file="/dev/null")
    yield app.test_client()
    app.extensions["cti_bridge"].close()


AUTH = {"Authorization": "Bearer k1"}


def test_api_needs_the_key(api: Any) -> None:
    assert api.get("/api/contacts?number=1").status_code == 401
    assert api.get("/api/contacts/changes", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/api/records", headers={"Authorization": "Basic k1"}).status_code == 401


def test_api_errors_name_the_field(api: Any) -> None:
    bad = api.post("/api/contacts", json={"name": "A", "phones": ["x"]}, headers=AUTH)
    assert bad.status_code == 400 and bad.json["error"]["field"] == "phones[0]"
    assert bad.json["error"]["message"].startswith("phones[0]: ")
    not_json = api.post("/api/contacts", data="name=A", headers=AUTH)
    assert not_json.status_code == 400 and not_json.json["error"]["field"] == "body"
    assert api.get("/api/contacts", headers=AUTH).json["error"]["field"] == "number"
    assert api.get("/api/contacts?number=1&limit=x", headers=AUTH).json["error"]["field"] == "limit"
    assert api.get("/api/contacts/changes?since=x", headers=AUTH).json["error"]["field"] == "since"
    created = api.post("/api/contacts", json=ANN, headers=AUTH).json
    bad_match = api.put(f"/api/contacts/{created['id']}", json=ANN, headers={**AUTH, "If-Match": "v1"})
    assert bad_match.status_code == 400 and bad_match.json["error"]["field"] == "If-Match"
    assert api.get("/api/contacts/nope", headers=AUTH).status_code == 404


def test_api_versions_with_etag_and_if_match(api: Any) -> None:
    created = api.post("/api/contacts", json=ANN, headers=AUTH)
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    url = created.headers["Location"]
    assert url == f"/api/contacts/{created.json['id']}"
    got = api.get(url, headers=AUTH)
    assert got.json == created.json and got.headers["ETag"] == '"1"'
    ok = api.patch(url, json={"name": "Ann 2"}, headers={**AUTH, "If-Match": got.headers["ETag"]})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"'
    conflict = api.put(url, json=ANN, headers={**AUTH, "If-Match": 'W/"1"'})
    assert conflict.status_code == 409
    assert conflict.json["error"]["code"] == "version_conflict" and conflict.json["error"]["currentVersion"] == 2
    assert api.put(url, json=ANN, headers={**AUTH, "If-Match": "*"}).json["version"] == 3
    assert api.delete(url, headers={**AUTH, "If-Match": "2"}).status_code == 409
    gone = api.delete(url, headers={**AUTH, "If-Match": "3"})
    assert gone.status_code == 200 and gone.json["deleted"] is True and gone.json["version"] == 4


def test_api_database_down_is_503(tmp_path: Any) -> None:
    app = create_app({"FINESSE_NODES": NODES, "API_KEYS": ["k1"],
                      "DATABASE_URL": f"sqlite:///{tmp_path}/missing-dir/bridge.db"}, config_file="/dev/null")
    response = app.test_client().get("/api/records", headers=AUTH)
    assert response.status_code == 503 and response.json["error"]["code"] == "database_unavailable"
    app.extensions["cti_bridge"].close()
