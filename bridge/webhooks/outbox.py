"""The webhook outbox: its table, and the rows an event becomes, one per endpoint that wants it.

A row is written in the same transaction as the call record (the ``record`` event), or in its own
transaction when the session emits ``call.ringing``, ``call.answered`` or ``call.ended``, so a
delivery is never lost between the event and the send: ``worker.WebhookWorker`` sends what is
here. The table and its columns are described in docs/webhooks.md.
"""
from __future__ import annotations

import json
import time
import uuid
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

from .. import logs
from ..calls import start_key
from ..store import Store, Tx, register_schema, table_columns, widen_unique
from ..templating import Unbuildable, lookup
from ..times import iso_at
from .settings import Settings

log = logs.get("bridge.webhooks")

TYPES: Mapping[str, str] = MappingProxyType(
    {"ringing": "call.ringing", "answered": "call.answered", "ended": "call.ended", "record": "record.created"})
USER_AGENT = "cti-bridge-webhooks/1"

# started_at: the call's start (calls.start_key; "" if none). With call_id it names the call: a
# Finesse id is reused, and a later call under it must get its own rows (docs/webhooks.md).
_OUTBOX: Mapping[str, str] = MappingProxyType({"sqlite": """CREATE TABLE IF NOT EXISTS {name} (
        id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, event TEXT NOT NULL,
        call_id TEXT NOT NULL, agent_id TEXT NOT NULL DEFAULT '', idempotency_key TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
        delivered_at REAL, last_error TEXT, state TEXT NOT NULL DEFAULT 'pending',
        claimed_until REAL, claimed_by TEXT, started_at TEXT NOT NULL DEFAULT '',
        UNIQUE (endpoint, event, call_id, agent_id, started_at))""",
           "postgresql": """CREATE TABLE IF NOT EXISTS {name} (
        id BIGSERIAL PRIMARY KEY, endpoint TEXT NOT NULL, event TEXT NOT NULL,
        call_id TEXT NOT NULL, agent_id TEXT NOT NULL DEFAULT '', idempotency_key TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, delivered_at DOUBLE PRECISION, last_error TEXT,
        state TEXT NOT NULL DEFAULT 'pending', claimed_until DOUBLE PRECISION, claimed_by TEXT,
        started_at TEXT NOT NULL DEFAULT '', UNIQUE (endpoint, event, call_id, agent_id, started_at))"""})
_INDEXES = ("CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS outbox_claim ON outbox (claimed_by)")
_OLD_COLUMNS = ("id, endpoint, event, call_id, agent_id, idempotency_key, url, method, headers, body, attempts, "
                "next_attempt_at, created_at, delivered_at, last_error, state, claimed_until, claimed_by")


def _upgrade(tx: Tx) -> None:
    """An outbox from before ``started_at`` (unique on endpoint, event, call id and agent) gets the
    column and the new unique key; every row is kept, with its id. The start is read back from the
    rows whose body is the default JSON event; other rows keep ""."""
    columns = table_columns(tx, "outbox")
    if not columns or "started_at" in columns:
        return
    widen_unique(tx, "outbox", "endpoint, event, call_id, agent_id", "started_at", _OUTBOX["sqlite"], _OLD_COLUMNS)
    for row in tx.query("SELECT id, body FROM outbox"):
        try:
            data = json.loads(row["body"])["data"]
            started = start_key((data.get("call") or data.get("record") or {}).get("startedAt"))
        except (ValueError, TypeError, KeyError, AttributeError):  # a template's body: no start to read
            started = ""
        if started:
            tx.execute("UPDATE outbox SET started_at = ? WHERE id = ?", (started, row["id"]))
    log.warning("outbox upgraded: unique on endpoint, event, call id, agent and start time "
                "(a Finesse call id is reused)")


register_schema("outbox", [_OUTBOX["sqlite"].format(name="outbox"), *_INDEXES],
                [_OUTBOX["postgresql"].format(name="outbox"), *_INDEXES], _upgrade)


class Webhooks:
    """The checked settings and the outbox writes; no threads (``WebhookWorker`` sends)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self.events = frozenset(e for endpoint in settings.endpoints for e in endpoint.events)

    def rows(self, event: str, call: Mapping[str, Any], agent: Mapping[str, Any],
             record: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The outbox rows for one event, one per endpoint that wants it."""
        now = self.clock()
        payload = {"type": TYPES[event], "timestamp": iso_at(now),
                   "data": {"record": dict(record or {})} if event == "record" else
                   {"call": dict(call), "agent": dict(agent), **({"record": dict(record)} if record else {})}}
        call_value, record_value = lookup(call, agent), lookup(record or {}, {})

        def value(name: str) -> str:
            return record_value(name[len("record."):]) if name.startswith("record.") else call_value(name)
        rows = []
        for endpoint in self.settings.endpoints:
            if event not in endpoint.events:
                continue
            state, error = "pending", None
            try:
                url = endpoint.url.render(value)
            except Unbuildable as exc:  # kept as a dead row, so the outbox shows what was not sent
                url, state, error = endpoint.url.text, "dead", f"url: {exc}"
                log.warning("webhook %s: %s event for call %s not sent: %s", endpoint.name, event, call.get("id"), exc)
            if endpoint.template is None:
                body = json.dumps(payload, separators=(",", ":"))
            else:
                fields = {name: template.render(value) for name, template in endpoint.template}
                body = json.dumps(fields, separators=(",", ":")) if endpoint.body == "json" else urlencode(fields)
            content_type = "application/json" if endpoint.body == "json" else "application/x-www-form-urlencoded"
            headers = json.dumps({"Content-Type": content_type, "User-Agent": USER_AGENT})
            rows.append((endpoint.name, event, str(call.get("id") or ""), str(agent.get("id") or ""),
                         start_key(call.get("startedAt")), f"msg_{uuid.uuid4().hex}", url, endpoint.method,
                         headers, body, now, now, state, error))
        return rows

    @staticmethod
    def insert(tx: Tx, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows; one that exists for (endpoint, event, call, agent) is left alone: never two.
        The call is its id and its start: a reused id with another start is another call."""
        for row in rows:
            tx.execute("INSERT INTO outbox (endpoint, event, call_id, agent_id, started_at, idempotency_key, url,"
                       " method, headers, body, next_attempt_at, created_at, state, last_error)"
                       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                       " ON CONFLICT (endpoint, event, call_id, agent_id, started_at) DO NOTHING", row)

    def enqueue_for_record(self, tx: Tx, record: Mapping[str, Any]) -> None:
        """The record hook: the ``record`` event's rows, in the transaction that writes the record."""
        if "record" not in self.events:
            return
        call = {"id": record.get("callId"), "direction": record.get("direction"), "from": record.get("from"),
                "to": record.get("to"), "startedAt": record.get("startedAt"),
                "variables": record.get("variables") or {}}
        self.insert(tx, self.rows("record", call, {"id": record.get("agentId")}, record))

    def enqueue_event(self, store: Store, event: str, call: Mapping[str, Any], agent: Mapping[str, Any],
                      record: Mapping[str, Any] | None = None) -> None:
        """A ringing, answered or ended event's rows, in a transaction of their own."""
        if event not in self.events:
            return
        rows = self.rows(event, call, agent, record)
        with store.transaction() as tx:
            self.insert(tx, rows)
