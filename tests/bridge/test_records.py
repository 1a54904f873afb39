"""bridge/records.py: one record per call, hooks in the same transaction, reading with filters and
pages, the retrying queue, and records that survive a kill -9 and a restart."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.calls import make_record
from bridge.finesse.model import Agent, Call
from bridge.profiles import FieldError
from bridge.records import RecordQueue, RecordWriter, list_records
from bridge.sessions import AgentSession
from bridge.store import Store, Tx
from tests.bridge.conftest import Legacy

ROOT = Path(__file__).resolve().parents[2]


def record(n: int, agent: str = "1001", ended: str = "2025-03-01T10:00:00.000Z", **extra: Any) -> dict[str, Any]:
    base = {"id": f"r{n:03d}", "agentId": agent, "callId": f"D{n}", "direction": "inbound",
            "from": "+1 415 555 0100", "to": "71001", "startedAt": "2025-03-01T09:59:00.000Z",
            "answeredAt": "2025-03-01T09:59:05.000Z", "endedAt": ended, "durationSeconds": 60.0,
            "talkSeconds": 55.0, "outcome": "answered", "wrapUpReason": "", "variables": {"callVariable1": "x"}}
    return {**base, **extra}


def count(store: Store) -> int:
    with store.transaction() as tx:
        row = tx.one("SELECT count(*) AS n FROM call_records")
    return int(row["n"]) if row else 0


# -- writing ---------------------------------------------------------------------------------------

def test_a_record_is_stored_once_and_reads_back_equal(store: Store) -> None:
    writer = RecordWriter(store)
    first = record(1)
    assert writer.write(first) is True
    assert writer.write(first) is False  # the same record again (a retry that had committed)
    assert writer.write({**first, "id": "another-id"}) is False  # the same call again (a re-sync, a restart)
    assert writer.write({**first, "id": "r-other-agent", "agentId": "1002"}) is True  # a transfer's other agent
    items, following = list_records(store)
    assert following is None
    assert sorted(items, key=lambda r: r["agentId"]) == [first, {**first, "id": "r-other-agent", "agentId": "1002"}]


def test_a_reused_call_id_with_another_start_is_another_record_and_a_replay_is_not(store: Store) -> None:
    # Finesse's dialog ids are CTI call ids: they start again when the CTI server restarts.
    hooked: list[str] = []
    writer = RecordWriter(store, [lambda tx, rec: hooked.append(rec["id"])])
    first = record(1, callId="16777217", startedAt="2025-03-01T09:00:00.000Z", ended="2025-03-01T09:05:00.000Z")
    later = record(2, callId="16777217", startedAt="2025-03-01T11:00:00.000Z", ended="2025-03-01T11:05:00.000Z",
                   **{"from": "4155550199"})
    assert writer.write(first) is True
    assert writer.write(later) is True  # the first call after the restart: stored, and its webhooks queued
    assert writer.write({**later, "id": "replayed"}) is False  # the same call again (a re-sync, a restart)
    assert writer.write({**first, "id": "same-start", "startedAt": "2025-03-01T10:00:00+01:00"}) is False  # same instant
    assert [r["id"] for r in list_records(store)[0]] == ["r002", "r001"]
    assert hooked == ["r001", "r002"]


def test_hooks_run_in_the_records_transaction_and_only_for_a_new_record(store: Store) -> None:
    seen: list[tuple[str, str]] = []
    hooks: list[Any] = []
    writer = RecordWriter(store, hooks)
    hooks.append(lambda tx, rec: seen.append(("first", rec["id"])))  # added after the writer was made

    def check_visible(tx: Tx, rec: dict[str, Any]) -> None:
        assert tx.one("SELECT id FROM call_records WHERE id = ?", (rec["id"],)) == {"id": rec["id"]}
        seen.append(("second", rec["id"]))
    hooks.append(check_visible)
    writer.write(record(1))
    writer.write(record(1))
    assert seen == [("first", "r001"), ("second", "r001")]


def test_a_failing_hook_rolls_the_record_back(store: Store) -> None:
    def outbox_down(tx: Tx, rec: dict[str, Any]) -> None:
        raise RuntimeError("outbox refused")
    hooks = [outbox_down]
    writer = RecordWriter(store, hooks)
    with pytest.raises(RuntimeError):
        writer.write(record(1))
    assert count(store) == 0  # record and webhooks commit together or not at all
    hooks.clear()
    assert writer.write(record(1)) is True


def test_a_record_without_its_keys_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="callId"):
        RecordWriter(store).write({**record(1), "callId": ""})


# -- a database from before the start time was part of a call's identity ---------------------------

OLD_RECORDS = [
    """CREATE TABLE call_records (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, call_id TEXT NOT NULL, ended_at TEXT NOT NULL,
        from_tail TEXT NOT NULL, to_tail TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (agent_id, call_id))""",
    "CREATE INDEX call_records_ended ON call_records (ended_at, id)",
    "CREATE INDEX call_records_agent ON call_records (agent_id, ended_at, id)",
]


def test_an_older_records_table_is_upgraded_in_place_keeping_every_row(legacy: Legacy) -> None:
    for statement in OLD_RECORDS:
        legacy.run(statement)
    old = [record(1, callId="16777217", startedAt="2025-03-01T09:00:00.000Z"),
           record(2, callId="16777218", startedAt="")]  # a record without a start keeps ""
    for rec in old:
        legacy.run("INSERT INTO call_records (id, agent_id, call_id, ended_at, from_tail, to_tail, body) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (rec["id"], rec["agentId"], rec["callId"],
                                                    "2025-03-01T10:00:00.000000Z", "4155550100", "71001",
                                                    json.dumps(rec, separators=(",", ":"), sort_keys=True)))
    store = Store.from_url(legacy.url)  # the new bridge starts on it
    writer = RecordWriter(store)
    later = record(3, callId="16777217", startedAt="2025-03-01T11:00:00.000Z", ended="2025-03-01T11:05:00.000Z")
    assert writer.write(later) is True  # the old table's UNIQUE (agent_id, call_id) would refuse it
    assert writer.write({**old[0], "id": "replayed"}) is False  # the old row's start was read from its body
    assert writer.write({**old[1], "id": "replayed-2"}) is False
    assert list_records(store)[0] == [later, old[1], old[0]]  # every old row, unchanged
    assert list_records(store, number="4155550100")[0] == [later, old[1], old[0]]  # the indexes are there
    store.close()
    again = Store.from_url(legacy.url)  # the next start finds it up to date: nothing to do
    assert [r["id"] for r in list_records(again)[0]] == ["r003", "r002", "r001"]
    again.close()


# -- reading ---------------------------------------------------------------------------------------

def test_newest_first_by_end_then_id_with_pages(store: Store) -> None:
    writer = RecordWriter(store)
    for n in range(1, 8):  # two records end in the same millisecond: the id decides
        writer.write(record(n, ended=f"2025-03-01T10:0{min(n, 6)}:00.000Z"))
    writer.write(record(8, ended="2025-03-01T12:00:00+02:00"))  # 10:00Z, the oldest: compared as times, not as text
    everything, _ = list_records(store, limit=500)
    assert [r["id"] for r in everything] == ["r007", "r006", "r005", "r004", "r003", "r002", "r001", "r008"]
    pages, cursor = [], None
    while True:
        items, cursor = list_records(store, limit=3, cursor=cursor)
        pages.append([r["id"] for r in items])
        if cursor is None:
            break
    assert pages == [["r007", "r006", "r005"], ["r004", "r003", "r002"], ["r001", "r008"]]


def test_filters_by_agent_number_and_since(store: Store) -> None:
    writer = RecordWriter(store)
    writer.write(record(1, agent="1001", ended="2025-03-01T09:00:00Z"))
    writer.write(record(2, agent="1002", ended="2025-03-01T10:00:00Z", **{"from": "4155550199"}))
    writer.write(record(3, agent="1001", ended="2025-03-01T11:00:00Z", direction="outbound",
                        **{"from": "71001", "to": "+44 20 7946 0000"}))
    writer.write(record(4, agent="1001", ended="2025-03-01T12:00:00Z", **{"from": ""}))  # caller ID withheld

    def ids(**params: Any) -> list[str]:
        return [r["id"] for r in list_records(store, **params)[0]]
    assert ids(agent_id="1001") == ["r004", "r003", "r001"]
    assert ids(number="(415) 555-0100") == ["r001"]  # the last ten digits: with or without +1
    assert ids(number="+14155550100") == ["r001"]
    assert ids(number="442079460000") == ["r003"]  # matches "to" as well as "from"
    assert ids(number="71001") == ["r004", "r003", "r002", "r001"]  # the agent's extension, either side
    assert ids(since="2025-03-01T10:00:00Z") == ["r004", "r003", "r002"]
    assert ids(since="2025-03-01T11:30:00+01:00") == ["r004", "r003"]  # 10:30Z
    assert ids(agent_id="1001", number="4155550100", since="2025-03-01T08:00:00Z") == ["r001"]
    assert ids(agent_id="9999") == []


@pytest.mark.parametrize("params, field", [
    ({"number": "anonymous"}, "number"), ({"number": ""}, "number"), ({"since": "yesterday"}, "since"),
    ({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "WyJhIl0"}, "cursor"), ({"agent_id": ""}, "agentId")])
def test_bad_params_name_themselves(params: dict[str, Any], field: str) -> None:
    store = Store.from_url("sqlite:///:memory:")
    with pytest.raises(FieldError) as bad:
        list_records(store, **params)
    assert bad.value.field == field and str(bad.value).startswith(f"{field}: ")
    store.close()


# -- the queue -------------------------------------------------------------------------------------

def test_the_queue_retries_with_backoff_until_the_database_takes_the_record(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[float] = []
    stored: list[str] = []
    healthy = threading.Event()

    def write(rec: dict[str, Any]) -> None:
        attempts.append(time.monotonic())
        if not healthy.is_set():
            raise ConnectionError("database down")
        stored.append(rec["id"])
    queue = RecordQueue(write, retry_min=0.05, retry_max=0.2)
    caplog.set_level(logging.WARNING, "bridge.records")
    queue.submit(record(1))  # never raises, never blocks
    deadline = time.monotonic() + 5
    while len(attempts) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored == [] and queue.pending() == 1
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert all(gap >= 0.02 for gap in gaps)  # waits between tries (0.05 doubling, half of it at least)
    healthy.set()
    assert queue.flush(5)
    assert stored == ["r001"] and queue.pending() == 0
    assert "storing the call record failed (attempt 1), will retry: ConnectionError" in caplog.text
    queue.submit(record(2))  # the thread lived on
    assert queue.flush(5) and stored == ["r001", "r002"]
    queue.close()


def test_the_queue_stores_records_in_the_order_they_came(store: Store) -> None:
    writer = RecordWriter(store)
    queue = RecordQueue(writer.write)
    for n in range(1, 51):
        queue.submit(record(n, ended=f"2025-03-01T10:00:{n:02d}.000Z"))
    assert queue.flush(10)
    assert count(store) == 50 and queue.written == 50
    queue.close()


def test_close_tries_once_more_then_logs_what_it_could_not_store(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def write(rec: dict[str, Any]) -> None:
        calls.append(rec["id"])
        raise ConnectionError("database down")
    queue = RecordQueue(write, retry_min=60.0, retry_max=60.0)
    queue.submit(record(1))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    caplog.set_level(logging.ERROR, "bridge.records")
    queue.close(timeout=5)  # does not wait the minute of backoff
    assert calls == ["r001", "r001"]
    assert "call record lost at shutdown" in caplog.text and '"callId":"D1"' in caplog.text


# -- the session hands its records over, with or without a tab ------------------------------------

def test_the_session_queues_each_call_end_with_no_socket_attached() -> None:
    got: list[dict[str, Any]] = []
    agent = Agent(id="1001", extension="71001", state="READY")
    session = AgentSession(agent, password_check=lambda _: True, replay_events=100, replay_seconds=60.0,
                           grace_seconds=5.0, on_expire=lambda _: None, on_record=got.append)
    ringing = Call(id="D1", state="ringing", ani="4155550100", from_="4155550100", to="71001")
    session.resync(agent, [ringing])
    session.resync(agent, [])  # ended (no browser ever attached)
    session.resync(agent, [])  # and nothing more
    assert len(got) == 1 and got[0]["callId"] == "D1" and got[0]["agentId"] == "1001"
    ended = json.loads(session._buffer[-1][2])
    assert ended["method"] == "call.ended" and ended["params"]["record"] == got[0]


def test_a_failing_record_hand_over_never_costs_the_call_event(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: dict[str, Any]) -> None:
        raise RuntimeError("queue broken")
    agent = Agent(id="1001", extension="71001")
    session = AgentSession(agent, password_check=lambda _: True, replay_events=100, replay_seconds=60.0,
                           grace_seconds=5.0, on_expire=lambda _: None, on_record=broken)
    caplog.set_level(logging.ERROR, "bridge.sessions")
    session.resync(agent, [Call(id="D1", state="ringing")])
    session.resync(agent, [])
    assert json.loads(session._buffer[-1][2])["method"] == "call.ended"
    assert "queueing the call record failed" in caplog.text


# -- durability ------------------------------------------------------------------------------------

WRITER = """
import sys, time
from bridge.records import RecordWriter
from bridge.store import Store
store = Store.from_url(sys.argv[1])
RecordWriter(store).write({"id": "r-kill", "agentId": "1001", "callId": "D-kill", "from": "4155550100",
                           "to": "71001", "endedAt": "2025-03-01T10:00:00.000Z"})
print("stored", flush=True)
time.sleep(60)
"""


def test_a_stored_record_survives_a_kill_9_and_a_restart_does_not_write_it_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bridge.db"
    child = subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "stored"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    store = Store.from_url(url)  # the bridge restarted
    items, _ = list_records(store)
    assert [r["id"] for r in items] == ["r-kill"]
    # The restarted bridge's session sees the same call end again (a new record id): not stored.
    assert RecordWriter(store).write(make_record("1001", Call(id="D-kill", endedAt="2025-03-01T10:00:01Z"),
                                                 "answered")) is False
    assert [r["id"] for r in list_records(store)[0]] == ["r-kill"]
    store.close()
