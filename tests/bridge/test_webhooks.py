"""Webhooks: config, signatures, backoff, destination rules, and the worker against a local receiver.

``store`` is tests/bridge/conftest.py's: SQLite in memory, a SQLite file, and PostgreSQL (its
``FOR UPDATE SKIP LOCKED`` claim). The worker runs with a fake clock and ``run_once`` on the test thread, so retries and the 24-hour
limit take no time; the only traffic goes to the receiver on 127.0.0.1. Private, link-local and
other refused addresses come from a fake resolver: nothing is ever sent to them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import pytest

from bridge.config import ConfigError
from bridge.store import Store
from bridge.webhooks import (Refused, WebhookWorker, backoff, check_destination, parse, secret_key, sign)
from tests.bridge.conftest import Legacy
from tests.webhook_receiver import Receiver, verify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
CALL = {"id": "16777321", "direction": "inbound", "state": "ringing", "from": "4155550100", "to": "71001",
        "ani": "4155550100", "dnis": "8001", "callType": "ACD_IN", "queue": {"name": "Sales", "number": "8001"},
        "variables": {"callVariable1": "case 42", "user.crm.caseid": "C-9"}}
AGENT = {"id": "1001", "extension": "71001", "firstName": "Ann"}
RECORD = {"id": "rec-1", "agentId": "1001", "callId": "16777321", "direction": "inbound", "from": "4155550100",
          "to": "71001", "outcome": "answered", "talkSeconds": 12.5, "variables": {"callVariable1": "case 42"}}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def resolver_to(*addresses: str) -> Callable[..., list[tuple[Any, ...]]]:
    """A getaddrinfo stand-in: every host resolves to ``addresses``; records what was asked."""
    def resolve(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        resolve.asked.append(host)  # type: ignore[attr-defined]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]
    resolve.asked = []  # type: ignore[attr-defined]
    return resolve


def no_dns(*args: Any) -> list[tuple[Any, ...]]:
    raise AssertionError("no look-up expected for an allowed host")


def endpoint(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "crm", "url": url, "events": ["ringing", "ended", "record"], "secret": SECRET,
            "timeout": 2, **extra}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver().start()
    yield rx
    rx.stop()


@pytest.fixture
def make_worker(store: Store) -> Iterator[Callable[..., WebhookWorker]]:
    made: list[WebhookWorker] = []

    def make(*endpoints: dict[str, Any], clock: Clock | None = None, resolver: Any = no_dns,
             rand: Callable[[], float] = lambda: 1.0, **settings: Any) -> WebhookWorker:
        table = {"endpoints": list(endpoints), "allow_hosts": ["127.0.0.1"], "retry_base_seconds": 1,
                 "retry_max_seconds": 10, "lease_seconds": 10, **settings}
        worker = WebhookWorker(store, {"WEBHOOKS": table}, clock=clock or Clock(), resolver=resolver, rand=rand)
        made.append(worker)
        return worker
    yield make
    for worker in made:
        worker.close(timeout=5)


def rows(store: Store) -> list[dict[str, Any]]:
    with store.transaction() as tx:
        return tx.query("SELECT * FROM outbox ORDER BY id")


def ring(worker: WebhookWorker, call: dict[str, Any] = CALL) -> None:
    worker.webhooks.enqueue_event(worker.store, "ringing", call, AGENT)


# -- signature -------------------------------------------------------------------------------------

def test_signature_is_the_standard_webhooks_reference():
    # The Standard Webhooks specification's published example: secret, id, timestamp, payload, signature.
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # ...re-derived here from the specification's text: base64(HMAC-SHA256(base64decode(secret after
    # "whsec_"), "{id}.{timestamp}.{payload}")), prefixed with the version "v1,".
    mac = hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                   b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}', hashlib.sha256)
    assert got == "v1," + base64.b64encode(mac.digest()).decode()


def test_a_plain_secret_signs_with_its_utf8_bytes():
    assert secret_key("a plain secret, long enough") == b"a plain secret, long enough"
    mac = hmac.new(b"a plain secret, long enough", b"msg_1.5.{}", hashlib.sha256).digest()
    assert sign(secret_key("a plain secret, long enough"), "msg_1", 5, "{}") == "v1," + base64.b64encode(mac).decode()


# -- backoff ---------------------------------------------------------------------------------------

def test_backoff_doubles_with_full_jitter_and_a_cap():
    assert [backoff(n, 5, 3600, lambda: 1.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(20, 5, 3600, lambda: 1.0) == 3600
    assert backoff(10_000, 5, 3600, lambda: 1.0) == 3600  # no overflow after days of failures
    assert backoff(3, 5, 3600, lambda: 0.0) == 0
    assert backoff(3, 5, 3600, lambda: 0.5) == 10
    import random
    rng = random.Random(7)
    draws = [backoff(4, 5, 3600, rng.random) for _ in range(500)]
    assert all(0 <= d <= 40 for d in draws) and max(draws) > 35 and min(draws) < 5


# -- destination rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "172.16.5.4", "169.254.169.254", "127.0.0.1",
                                     "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0",
                                     "224.0.0.1", "240.0.0.1"])
def test_non_public_addresses_are_refused(address):
    with pytest.raises(Refused, match="hooks.example.invalid"):
        check_destination("https://hooks.example.invalid/x", frozenset(), resolver_to(address))


def test_one_private_address_among_public_ones_is_enough_to_refuse():
    with pytest.raises(Refused, match="10.0.0.1"):
        check_destination("https://hooks.example.invalid/x", frozenset(), resolver_to("93.184.216.34", "10.0.0.1"))


def test_a_public_address_over_https_passes():
    check_destination("https://hooks.example.invalid/x", frozenset(), resolver_to("93.184.216.34", "2606:2800::1"))


@pytest.mark.parametrize("host, address", [("127.0.0.1", "127.0.0.1"), ("localhost", "::1"),
                                           ("hooks.internal", "10.0.0.1"), ("[::1]", "::1")])
def test_allowed_hosts_may_use_http_and_private_addresses(host, address):
    allow = frozenset({"127.0.0.1", "localhost", "hooks.internal", "::1"})
    check_destination(f"http://{host}:8080/x", allow, no_dns)


def test_http_is_refused_for_a_host_not_allowed():
    with pytest.raises(Refused, match="https is required"):
        check_destination("http://hooks.example.invalid/x", frozenset({"localhost"}), resolver_to("93.184.216.34"))


def test_a_host_that_does_not_resolve_is_an_error_to_retry_not_a_refusal():
    def fail(*args: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(OSError):
        check_destination("https://hooks.example.invalid/x", frozenset(), fail)


def test_a_private_destination_goes_dead_with_the_reason_and_no_traffic(make_worker, store, caplog):
    resolve = resolver_to("10.0.0.1")
    worker = make_worker(endpoint("https://hooks.example.invalid/calls/{id}"), resolver=resolve)
    ring(worker)
    assert worker.run_once() == 1
    [row] = rows(store)
    assert row["state"] == "dead" and "10.0.0.1 is a private address" in row["last_error"]
    assert resolve.asked == ["hooks.example.invalid"]
    assert worker.run_once() == 0  # never tried again
    assert any("dropped" in r.message for r in caplog.records if r.levelno == logging.ERROR)


def test_the_address_actually_connected_is_checked_too(make_worker, store, receiver):
    # DNS rebinding: the check's look-up says public, the connection lands on loopback. Refused right
    # after the TCP connect: the receiver reads no request.
    url = f"https://localhost:{receiver.port}/hook"
    worker = make_worker(endpoint(url), resolver=resolver_to("93.184.216.34"), allow_hosts=[])
    ring(worker)
    worker.run_once()
    [row] = rows(store)
    assert row["state"] == "dead" and "connected to 127.0.0.1 is a loopback address" in row["last_error"]
    assert receiver.requests == []


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({"endpoint": []}, "WEBHOOKS.endpoint: unknown key"),
    ({"endpoints": [{"url": "https://h.example/x", "events": ["record"], "secret": SECRET}]},
     r"WEBHOOKS.endpoints\[0\].name: required"),
    ({"endpoints": [endpoint("http://crm.example.com/x")]}, r"endpoints\[0\].url: https is required"),
    ({"endpoints": [endpoint("ftp://crm.example.com/x")]}, r"endpoints\[0\].url: only http and https URLs can be called"),
    ({"endpoints": [endpoint("https://{ani}.example.com/x")]}, r"endpoints\[0\].url: a placeholder in the host"),
    ({"endpoints": [endpoint("https://crm.example.com/{record.nope}")]}, r"endpoints\[0\].url: unknown field 'record.nope'"),
    ({"endpoints": [endpoint("https://crm.example.com/x", events=["hangup"])]}, r"endpoints\[0\].events"),
    ({"endpoints": [endpoint("https://crm.example.com/x", method="GET")]}, r"endpoints\[0\].method: expected POST or PUT"),
    ({"endpoints": [endpoint("https://crm.example.com/x", body="form")]}, r"endpoints\[0\].template: a form body needs"),
    ({"endpoints": [endpoint("https://crm.example.com/x", secret="short")]}, r"endpoints\[0\].secret: too short"),
    ({"endpoints": [endpoint("https://crm.example.com/x", secret="whsec_!!!")]}, r"endpoints\[0\].secret: .* not base64"),
    ({"endpoints": [endpoint("https://crm.example.com/x", timeout=0)]}, r"endpoints\[0\].timeout"),
    ({"endpoints": [endpoint("https://crm.example.com/x", extra=1)]}, r"endpoints\[0\].extra: unknown key"),
    ({"endpoints": [endpoint("https://a.example/x"), endpoint("https://b.example/x")]}, r"endpoints\[1\].name: 'crm' is used twice"),
    ({"endpoints": [endpoint("https://a.example/x", timeout=40)]}, "WEBHOOKS.lease_seconds: must be more than twice"),
    ({"workers": 0}, "WEBHOOKS.workers"), ({"batch": 2.5}, "WEBHOOKS.batch"),
    ({"max_age_hours": -1}, "WEBHOOKS.max_age_hours"), ({"allow_hosts": "localhost"}, "WEBHOOKS.allow_hosts"),
    ({"retry_base_seconds": 10, "retry_max_seconds": 5}, "WEBHOOKS.retry_base_seconds"),
])
def test_bad_settings_stop_the_start_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse(table)


def test_the_config_loader_reads_a_webhooks_table_from_toml(tmp_path):
    from bridge import config
    path = tmp_path / "bridge.toml"
    path.write_text(f"""
finesse_nodes = [{{ url = "http://127.0.0.1:8082" }}]
[webhooks]
allow_hosts = ["localhost"]
max_age_hours = 12
[[webhooks.endpoints]]
name = "crm"
url = "https://crm.example.com/hooks/{{id}}?outcome={{record.outcome}}"
events = ["record"]
secret = "{SECRET}"
[webhooks.endpoints.template]
phone = "{{ani}}"
""")
    settings = parse(config.load(file=str(path), environ={})["WEBHOOKS"])
    assert settings.max_age_seconds == 12 * 3600 and settings.allow_hosts == {"localhost"}
    assert [e.name for e in settings.endpoints] == ["crm"]


def test_the_bridge_checks_webhooks_at_start():
    from app import create_app
    nodes = [{"url": "http://127.0.0.1:1"}]
    with pytest.raises(ConfigError, match="WEBHOOKS.endpoints"):
        create_app({"FINESSE_NODES": nodes, "DATABASE_URL": "sqlite:///:memory:", "WEBHOOKS": {"endpoints": {}}},
                   config_file="/dev/null")


# -- rows: templates, payloads, uniqueness ---------------------------------------------------------

def test_url_and_body_templates_take_call_and_record_fields(make_worker, store):
    worker = make_worker(
        endpoint("https://crm.example.com/calls/{id}/{record.outcome}?case={variables.callVariable1}", events=["ended"],
                 body="form", method="PUT", template={"phone": "{ani}", "agent": "{agent.id}", "talk": "{record.talkSeconds}",
                                                      "case": "{variables.user.crm.caseid}"}))
    worker.webhooks.enqueue_event(store, "ended", CALL, AGENT, RECORD)
    [row] = rows(store)
    assert row["url"] == "https://crm.example.com/calls/16777321/answered?case=case%2042"
    assert row["method"] == "PUT" and json.loads(row["headers"])["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(row["body"]) == {"phone": ["4155550100"], "agent": ["1001"], "talk": ["12.5"], "case": ["C-9"]}


def test_the_default_body_is_the_whole_event_as_json(make_worker, store):
    worker = make_worker(endpoint("https://crm.example.com/hook"))
    worker.webhooks.enqueue_event(store, "ended", CALL, AGENT, RECORD)
    with store.transaction() as tx:
        worker.enqueue_for_record(tx, RECORD)
    ended, record = rows(store)
    body = json.loads(ended["body"])
    assert body["type"] == "call.ended" and body["data"] == {"call": CALL, "agent": AGENT, "record": RECORD}
    assert body["timestamp"].endswith("Z")
    assert json.loads(record["body"])["data"] == {"record": RECORD} and record["event"] == "record"
    assert (record["call_id"], record["agent_id"]) == ("16777321", "1001")


def test_one_row_per_endpoint_event_call_and_agent(make_worker, store):
    worker = make_worker(endpoint("https://crm.example.com/hook"), {**endpoint("https://b.example.com/h"), "name": "b"})
    for _ in range(2):
        worker.webhooks.enqueue_event(store, "ended", CALL, AGENT, RECORD)
        with store.transaction() as tx:
            worker.enqueue_for_record(tx, RECORD)
    worker.webhooks.enqueue_event(store, "ended", CALL, {**AGENT, "id": "1002"}, RECORD)  # another agent's part
    assert sorted((r["endpoint"], r["event"], r["agent_id"]) for r in rows(store)) == [
        ("b", "ended", "1001"), ("b", "ended", "1002"), ("b", "record", "1001"),
        ("crm", "ended", "1001"), ("crm", "ended", "1002"), ("crm", "record", "1001")]
    assert len({r["idempotency_key"] for r in rows(store)}) == 6


def test_a_reused_call_id_with_another_start_gets_its_own_webhooks_and_a_replay_does_not(make_worker, store, receiver):
    # Finesse's dialog ids are CTI call ids: after a CTI server restart a new call may reuse one.
    worker = make_worker(endpoint(receiver.url("/calls/{id}"), events=["ringing", "answered", "ended", "record"]))
    first = {**CALL, "startedAt": "2025-03-01T09:00:00.000Z"}
    later = {**CALL, "startedAt": "2025-03-01T11:00:00.000Z", "from": "4155550199", "ani": "4155550199"}
    for call in (first, later, first, later):  # each call, then a replay of each (a re-sync, a restart)
        record = {**RECORD, "id": f"rec-{call['from']}", "startedAt": call["startedAt"], "from": call["from"]}
        for event in ("ringing", "answered", "ended"):
            worker.webhooks.enqueue_event(store, event, call, AGENT, record if event == "ended" else None)
        with store.transaction() as tx:
            worker.enqueue_for_record(tx, record)
    assert len(rows(store)) == 8
    while worker.run_once():
        pass
    got = receiver.wait_for(8)
    assert len(got) == 8 and all(r["state"] == "delivered" for r in rows(store))
    sent = sorted((json.loads(r.body)["type"], (json.loads(r.body)["data"].get("call") or
                                                json.loads(r.body)["data"]["record"])["from"]) for r in got)
    assert sent == sorted((kind, number) for kind in ("call.ringing", "call.answered", "call.ended", "record.created")
                          for number in ("4155550100", "4155550199"))
    assert {r.path for r in got} == {"/calls/16777321"}


def test_events_no_endpoint_wants_write_nothing(make_worker, store):
    worker = make_worker(endpoint("https://crm.example.com/hook", events=["record"]))
    worker.on_call("call.ringing", {"call": CALL}, AGENT)
    worker.on_call("call.updated", {"call": CALL}, AGENT)
    worker.run_once()
    assert rows(store) == []


def test_a_value_that_cannot_be_a_path_segment_leaves_a_dead_row(make_worker, store):
    worker = make_worker(endpoint("https://crm.example.com/calls/{ani}"))
    ring(worker, {**CALL, "ani": ".."})
    [row] = rows(store)
    assert row["state"] == "dead" and row["last_error"].startswith("url:")


# -- an outbox from before the start time was part of a call's identity -----------------------------

OLD_OUTBOX = {"sqlite": """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, event TEXT NOT NULL,
        call_id TEXT NOT NULL, agent_id TEXT NOT NULL DEFAULT '', idempotency_key TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
        delivered_at REAL, last_error TEXT, state TEXT NOT NULL DEFAULT 'pending',
        claimed_until REAL, claimed_by TEXT, UNIQUE (endpoint, event, call_id, agent_id))""",
              "postgresql": """CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY, endpoint TEXT NOT NULL, event TEXT NOT NULL,
        call_id TEXT NOT NULL, agent_id TEXT NOT NULL DEFAULT '', idempotency_key TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, delivered_at DOUBLE PRECISION, last_error TEXT,
        state TEXT NOT NULL DEFAULT 'pending', claimed_until DOUBLE PRECISION, claimed_by TEXT,
        UNIQUE (endpoint, event, call_id, agent_id))"""}


def test_an_older_outbox_is_upgraded_in_place_and_its_pending_rows_still_go_out(legacy: Legacy, receiver):
    legacy.run(OLD_OUTBOX[legacy.dialect])
    legacy.run("CREATE INDEX outbox_due ON outbox (state, next_attempt_at)")
    first = {**CALL, "startedAt": "2025-03-01T09:00:00.000Z"}
    body = json.dumps({"type": "call.ringing", "timestamp": "2025-03-01T09:00:00.100Z",
                       "data": {"call": first, "agent": AGENT}}, separators=(",", ":"))
    old = [("crm", "ringing", "msg_delivered_before", "delivered", "{}"),  # a template's body: no start in it
           ("crm", "answered", "msg_pending_before", "pending", body)]
    for name, event, key, state, text in old:
        legacy.run("INSERT INTO outbox (endpoint, event, call_id, agent_id, idempotency_key, url, method, headers, "
                   "body, next_attempt_at, created_at, state) VALUES (?, ?, ?, ?, ?, ?, 'POST', ?, ?, ?, ?, ?)",
                   (name, event, "16777321", "1001", key, receiver.url("/old"),
                    json.dumps({"Content-Type": "application/json"}), text, 1_700_000_000.0, 1_700_000_000.0, state))
    store = Store.from_url(legacy.url)  # the new bridge starts on it
    worker = WebhookWorker(store, {"WEBHOOKS": {"allow_hosts": ["127.0.0.1"], "lease_seconds": 10, "endpoints": [
        endpoint(receiver.url("/calls/{id}"), events=["ringing", "answered"])]}}, clock=Clock(), resolver=no_dns)
    try:
        # The same live call again (its start was read from the old row's body): no second row.
        worker.webhooks.enqueue_event(store, "answered", first, AGENT)
        # The id's next call after a CTI restart: its own rows, which the old UNIQUE refused.
        later = {**CALL, "startedAt": "2025-03-01T11:00:00.000Z"}
        worker.webhooks.enqueue_event(store, "ringing", later, AGENT)
        worker.webhooks.enqueue_event(store, "answered", later, AGENT)
        table = rows(store)
        assert [(r["event"], r["idempotency_key"], r["started_at"]) for r in table] == [
            ("ringing", "msg_delivered_before", ""), ("answered", "msg_pending_before", "2025-03-01T09:00:00.000Z"),
            ("ringing", table[2]["idempotency_key"], "2025-03-01T11:00:00.000Z"),
            ("answered", table[3]["idempotency_key"], "2025-03-01T11:00:00.000Z")]
        assert table[0]["id"] < table[1]["id"] < table[2]["id"] < table[3]["id"]  # ids kept, new ones after them
        while worker.run_once():
            pass
        got = receiver.wait_for(3)
        assert sorted(r.headers["webhook-id"] for r in got if r.path == "/old") == ["msg_pending_before"]
        assert len(got) == 3 and all(r["state"] == "delivered" for r in rows(store))
    finally:
        worker.close(timeout=5)
        store.close()


# -- delivery --------------------------------------------------------------------------------------

def test_delivered_with_standard_webhooks_headers(make_worker, store, receiver):
    clock = Clock()
    worker = make_worker(endpoint(receiver.url("/calls/{id}")), clock=clock)
    ring(worker)
    assert worker.run_once() == 1
    [got] = receiver.wait_for(1)
    [row] = rows(store)
    assert got.method == "POST" and got.path == "/calls/16777321"
    assert got.headers["webhook-id"] == got.headers["idempotency-key"] == row["idempotency_key"]
    assert got.headers["webhook-timestamp"] == str(int(clock.now))
    assert got.headers["content-type"] == "application/json"
    assert verify(SECRET, got.headers, got.body)
    assert not verify("whsec_" + base64.b64encode(b"another key, another key!").decode(), got.headers, got.body)
    assert json.loads(got.body)["data"]["call"]["id"] == "16777321"
    assert row["state"] == "delivered" and row["attempts"] == 1 and row["claimed_by"] is None


def test_500_twice_then_200_three_attempts_with_one_id(make_worker, store, receiver):
    clock = Clock()
    worker = make_worker(endpoint(receiver.url()), clock=clock)
    receiver.statuses.extend([500, 500])
    ring(worker)
    for attempt, expected_delay in ((1, 1.0), (2, 2.0)):
        worker.run_once()
        [row] = rows(store)
        assert (row["state"], row["attempts"], row["last_error"]) == ("pending", attempt, "HTTP 500")
        assert row["next_attempt_at"] == pytest.approx(clock.now + expected_delay)  # rand() == 1: the full backoff
        assert worker.run_once() == 0  # not due yet
        clock.now += expected_delay
    worker.run_once()
    got = receiver.wait_for(3)
    assert len(got) == 3 and rows(store)[0]["state"] == "delivered"
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert [int(r.headers["webhook-timestamp"]) for r in got] == [1_700_000_000, 1_700_000_001, 1_700_000_003]
    assert all(verify(SECRET, r.headers, r.body) for r in got)
    assert len({r.body for r in got}) == 1


def test_receiver_down_then_up(make_worker, store):
    receiver = Receiver().start()
    receiver.stop()  # the port is known, nothing listens on it
    clock = Clock()
    worker = make_worker(endpoint(receiver.url()), clock=clock)
    ring(worker)
    worker.run_once()
    [row] = rows(store)
    assert row["state"] == "pending" and row["last_error"].startswith("ConnectionError")
    receiver.start()
    try:
        clock.now = row["next_attempt_at"]
        worker.run_once()
        [got] = receiver.wait_for(1)
        assert got.headers["webhook-id"] == row["idempotency_key"] and verify(SECRET, got.headers, got.body)
        assert rows(store)[0]["state"] == "delivered" and rows(store)[0]["attempts"] == 2
    finally:
        receiver.stop()


def test_a_redirect_is_a_failure_and_is_not_followed(make_worker, store, receiver):
    elsewhere = Receiver().start()
    try:
        receiver.default, receiver.redirect_to = 302, elsewhere.url("/stolen")
        worker = make_worker(endpoint(receiver.url()))
        ring(worker)
        worker.run_once()
        [row] = rows(store)
        assert row["state"] == "pending" and "HTTP 302" in row["last_error"] and "not followed" in row["last_error"]
        assert len(receiver.wait_for(1)) == 1
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


def test_gives_up_at_max_age_and_says_so(make_worker, store, receiver, caplog):
    clock = Clock()
    worker = make_worker(endpoint(receiver.url()), clock=clock, max_age_hours=1, retry_max_seconds=3600,
                         retry_base_seconds=1000)
    receiver.default = 503
    ring(worker)
    created = clock.now
    for _ in range(10):
        if worker.run_once() == 0:
            break
        [row] = rows(store)
        if row["state"] != "pending":
            break
        assert row["next_attempt_at"] <= created + 3600  # the last try is at the deadline, not after
        clock.now = row["next_attempt_at"]
    [row] = rows(store)
    assert row["state"] == "dead" and row["last_error"].startswith(f"gave up after {row['attempts']} attempts: HTTP 503")
    assert clock.now >= created + 3600
    assert any("dropped" in r.message and r.levelno == logging.ERROR for r in caplog.records)


def test_an_expired_lease_is_sent_again_with_the_same_id(make_worker, store, receiver):
    clock = Clock()
    dead_worker = make_worker(endpoint(receiver.url()), clock=clock)
    ring(dead_worker)
    [claimed] = dead_worker._claim(5)  # claimed, then the process is "killed" before it sends
    other = make_worker(endpoint(receiver.url()), clock=clock)
    assert other.run_once() == 0  # leased: left alone
    clock.now += 10.5  # lease_seconds = 10
    assert other.run_once() == 1
    [got] = receiver.wait_for(1)
    assert got.headers["webhook-id"] == claimed["idempotency_key"]
    assert rows(store)[0]["state"] == "delivered"


def test_two_workers_on_one_table_send_each_row_once(make_worker, store, receiver):
    # Two bridges on one database: the claim gives each row to one of them (SKIP LOCKED on PostgreSQL,
    # the write lock on SQLite).
    clock = Clock()
    first, second = (make_worker(endpoint(receiver.url()), clock=clock, batch=3) for _ in range(2))
    for n in range(12):
        ring(first, {**CALL, "id": str(n)})
    start = threading.Barrier(2)
    sent: list[int] = []

    def drain(worker: WebhookWorker) -> None:
        start.wait(5)
        while (n := worker.run_once()) > 0:
            sent.append(n)
    threads = [threading.Thread(target=drain, args=(w,)) for w in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = receiver.wait_for(12)
    assert len(got) == 12 and sum(sent) == 12
    assert len({r.headers["webhook-id"] for r in got}) == 12
    assert all(r["state"] == "delivered" and r["attempts"] == 1 for r in rows(store))


def test_a_row_for_an_endpoint_no_longer_configured_goes_dead(make_worker, store):
    make_worker(endpoint("https://crm.example.com/hook")).webhooks.enqueue_event(store, "ringing", CALL, AGENT)
    later = make_worker({**endpoint("https://crm.example.com/hook"), "name": "renamed"})
    later.run_once()
    assert rows(store)[0]["state"] == "dead" and "no longer configured" in rows(store)[0]["last_error"]


# -- the thread ------------------------------------------------------------------------------------

def test_the_thread_wakes_on_a_new_event_and_closes_promptly(make_worker, store, receiver):
    worker = make_worker(endpoint(receiver.url()), poll_seconds=60, clock=__import__("time").time).start()
    worker.on_call("call.ringing", {"seq": 1, "call": CALL}, AGENT)  # from a session, on the XMPP thread
    [got] = receiver.wait_for(1, timeout=5)
    assert json.loads(got.body)["type"] == "call.ringing"
    worker.on_call("call.ringing", {"seq": 2, "call": CALL}, AGENT)  # the same call rings again: no second row
    worker.on_call("call.ended", {"call": {**CALL, "state": "ended"}, "record": RECORD}, AGENT)
    receiver.wait_for(2, timeout=5)
    import time
    started = time.monotonic()
    worker.close(timeout=5)
    assert time.monotonic() - started < 2
    assert [r["event"] for r in rows(store)] == ["ringing", "ended"]
    assert all(r["state"] == "delivered" for r in rows(store))


def test_an_idle_worker_does_not_spin(make_worker, store):
    calls = {"n": 0}
    real = store.transaction

    def counting() -> Any:
        calls["n"] += 1
        return real()
    store.transaction = counting  # type: ignore[method-assign]
    worker = make_worker(endpoint("https://crm.example.com/hook"), poll_seconds=60, clock=__import__("time").time)
    worker.start()
    threading.Event().wait(0.5)  # measuring, not synchronising
    worker.close(timeout=5)
    assert calls["n"] <= 4


def test_close_writes_queued_events_before_it_returns(make_worker, store):
    worker = make_worker(endpoint("https://crm.example.com/hook"))  # not started: nothing writes until close
    worker.on_call("call.ended", {"call": CALL, "record": RECORD}, AGENT)
    worker.close(timeout=5)
    assert [r["event"] for r in rows(store)] == ["ended"]
