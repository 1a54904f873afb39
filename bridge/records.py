"""Call records (docs/records.md): one per call end, written on the server.

The session hands each ``call.ended`` record to a ``RecordQueue`` on the XMPP thread (never
blocking it, whether or not a browser is open); the queue's own thread writes it through a
``RecordWriter`` and retries with backoff while the database is unavailable, for as long as the
process lives. ``RecordWriter.write`` inserts the record and, in the same transaction, runs every
``on_record(tx, record)`` hook (the webhook outbox), so a record and its webhooks commit together.

A call has at most one record per agent: the table is unique on the record id and on
(agentId, callId, startedAt), so a re-sync, a second session or a restart never writes a call
twice, while a later call under a reused Finesse id (``calls.start_key``) gets its own record.
``list_records`` reads them newest first, by ``endedAt`` then id, with a keyset cursor.
"""
from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
import threading
import time
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from .times import UTC, iso_now, parse
from . import backoff, logs
from .calls import start_key
from .profiles import FieldError, digits_of, number_param, tail_of
from .store import Store, Tx, register_schema, table_columns, widen_unique

log = logs.get("bridge.records")

RecordHook = Callable[[Tx, dict[str, Any]], None]
MAX_LIMIT = 500

# ended_at: endedAt in one UTC format, so text order is time order on both databases.
# started_at: start_key(startedAt), "" if none: with call_id, the call (a Finesse id is reused).
_COLUMNS = "id, agent_id, call_id, started_at, ended_at, from_tail, to_tail, body"
_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, call_id TEXT NOT NULL, started_at TEXT NOT NULL DEFAULT '',
        ended_at TEXT NOT NULL, from_tail TEXT NOT NULL, to_tail TEXT NOT NULL, body TEXT NOT NULL,
        UNIQUE (agent_id, call_id, started_at))"""
_DDL = [
    _TABLE.format(name="call_records"),
    "CREATE INDEX IF NOT EXISTS call_records_ended ON call_records (ended_at, id)",
    "CREATE INDEX IF NOT EXISTS call_records_agent ON call_records (agent_id, ended_at, id)",
    "CREATE INDEX IF NOT EXISTS call_records_from ON call_records (from_tail)",
    "CREATE INDEX IF NOT EXISTS call_records_to ON call_records (to_tail)",
]


def _upgrade(tx: Tx) -> None:
    """A table from before ``started_at`` (unique on agent and call id alone) gets the column,
    filled from each record's ``startedAt``, and the new unique key; every row is kept."""
    columns = table_columns(tx, "call_records")
    if not columns or "started_at" in columns:
        return
    widen_unique(tx, "call_records", "agent_id, call_id", "started_at", _TABLE,
                 "id, agent_id, call_id, ended_at, from_tail, to_tail, body")
    for row in tx.query("SELECT id, body FROM call_records"):
        try:
            started = start_key(json.loads(row["body"]).get("startedAt"))
        except (ValueError, AttributeError):  # a body that is not a JSON object keeps ""
            started = ""
        if started:
            tx.execute("UPDATE call_records SET started_at = ? WHERE id = ?", (started, row["id"]))
    log.warning("call_records upgraded: unique on agent, call id and start time (a Finesse call id is reused)")


register_schema("records", _DDL, _DDL, _upgrade)


def utc_text(value: str) -> str:
    """An ISO 8601 time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (naive times are UTC); ValueError if not one."""
    return parse(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ended_at(record: Mapping[str, Any]) -> str:
    try:
        return utc_text(str(record.get("endedAt") or ""))
    except ValueError:  # the tracker always sets it; a record from elsewhere is stamped now
        return utc_text(iso_now())


class RecordWriter:
    """Inserts records, at most one per (agentId, callId, startedAt), and runs the hooks in that transaction."""

    def __init__(self, store: Store, on_record: Sequence[RecordHook] = ()) -> None:
        self.store = store
        self.on_record = on_record  # read at each write: hooks added later (webhooks) take part

    def write(self, record: dict[str, Any]) -> bool:
        """Store ``record``; False if this record or another for the same call (agent, call id and
        start) was already there."""
        for key in ("id", "agentId", "callId"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise ValueError(f"record {key}: expected a non-empty string")
        body = json.dumps(record, separators=(",", ":"), sort_keys=True)
        from_tail, to_tail = (tail_of(digits_of(str(record.get(side) or ""))) for side in ("from", "to"))
        with self.store.transaction() as tx:
            inserted = tx.one(
                f"INSERT INTO call_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (record["id"], record["agentId"], record["callId"], start_key(record.get("startedAt")),
                 _ended_at(record), from_tail, to_tail, body))
            if inserted is None:
                log.info("agent %s call %s started %s: a record is stored already; %s not written",
                         record["agentId"], record["callId"], record.get("startedAt") or "(unknown)", record["id"])
                return False
            for hook in list(self.on_record):
                hook(tx, record)
        return True


class RecordQueue:
    """Records from the XMPP thread, written on a thread of their own, retried until they are stored.

    ``submit`` never blocks and never raises. A failed write waits ``retry_min`` seconds, doubling
    up to ``retry_max`` (with jitter), and is tried again for as long as the process lives;
    ``close`` tries what is waiting once more, at once, and logs a record it still cannot store.
    """

    def __init__(self, write: Callable[[dict[str, Any]], Any], *, retry_min: float = 0.5,
                 retry_max: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._write, self._retry_min, self._retry_max, self._clock = write, retry_min, retry_max, clock
        self._cond = threading.Condition()
        self._ready: deque[tuple[int, dict[str, Any]]] = deque()  # (failed attempts, record)
        self._later: list[tuple[float, int, int, dict[str, Any]]] = []  # heap: (due, tiebreak, attempts, record)
        self._tiebreak = itertools.count()
        self._busy = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self.written = 0
        self.failures = 0

    def submit(self, record: dict[str, Any]) -> None:
        """Queue a record for writing (called on the XMPP thread)."""
        with self._cond:
            self._ready.append((0, record))
            if self._thread is None or not self._thread.is_alive():  # first use, or a record after close
                self._thread = threading.Thread(target=self._run, name="bridge-records", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Records submitted and not stored yet."""
        with self._cond:
            return len(self._ready) + len(self._later) + self._busy

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted record is stored; False if some are still waiting."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._ready or self._later or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """One last try at everything waiting (no more backoff), then the thread ends."""
        with self._cond:
            self._closing = True
            while self._later:
                _, _, attempts, record = heapq.heappop(self._later)
                self._ready.append((attempts, record))
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("%d call records still being written at shutdown", self.pending())

    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._next()
                if item is None:
                    return
                self._busy += 1
            attempts, record = item
            stored = False
            try:
                stored = self._attempt(record, attempts)
            finally:
                with self._cond:
                    self._busy -= 1
                    if not stored and self._closing:
                        log.error("call record lost at shutdown (the database did not take it): %s",
                                  json.dumps(record, separators=(",", ":")))
                    elif not stored:
                        delay = backoff.delay(attempts, self._retry_min, self._retry_max, floor=self._retry_min)
                        heapq.heappush(self._later, (self._clock() + delay, next(self._tiebreak), attempts + 1, record))
                    self._cond.notify_all()

    def _next(self) -> tuple[int, dict[str, Any]] | None:
        """The next record to try, waiting for one; None when closing with nothing left. Lock held."""
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._closing:
                return None
            if not self._later:
                self._cond.wait()
                continue
            due = self._later[0][0] - self._clock()
            if due <= 0:
                _, _, attempts, record = heapq.heappop(self._later)
                return attempts, record
            self._cond.wait(due)

    def _attempt(self, record: dict[str, Any], attempts: int) -> bool:
        try:
            self._write(record)
        except Exception as exc:  # never lose the thread: log, and the record waits for a retry
            self.failures += 1
            log.warning("agent %s call %s: storing the call record failed (attempt %d), will retry: %s: %s",
                        record.get("agentId"), record.get("callId"), attempts + 1, type(exc).__name__, exc)
            return False
        self.written += 1
        return True


# -- reading -----------------------------------------------------------------------------------

def _encode_cursor(ended_at: str, record_id: str) -> str:
    raw = json.dumps([ended_at, record_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ended_at, record_id = json.loads(raw)
        if not isinstance(ended_at, str) or not isinstance(record_id, str):
            raise ValueError("not a pair of strings")
        return ended_at, record_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise FieldError("cursor", "expected the 'next' value of an earlier reply") from exc


def list_records(store: Store, agent_id: str | None = None, number: str | None = None, since: str | None = None,
                 limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Records newest first (``endedAt``, then id): (items, cursor for the next page or None).

    ``number`` matches the record's from or to on the last ten digits (all of them if fewer);
    ``since`` keeps records that ended at or after that ISO 8601 time. FieldError names a bad one.
    """
    where: list[str] = []
    params: list[Any] = []
    if agent_id is not None:
        if not agent_id:
            raise FieldError("agentId", "expected an agent id")
        where.append("agent_id = ?")
        params.append(agent_id)
    if number is not None:
        tail = tail_of(number_param(number))
        where.append("(from_tail = ? OR to_tail = ?)")
        params += [tail, tail]
    if since is not None:
        try:
            where.append("ended_at >= ?")
            params.append(utc_text(since))
        except ValueError as exc:
            raise FieldError("since", f"expected an ISO 8601 time such as 2025-01-31T09:00:00Z, got {since!r}") from exc
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise FieldError("limit", f"expected 1 to {MAX_LIMIT}")
    if cursor:
        ended_at, record_id = _decode_cursor(cursor)
        where.append("(ended_at < ? OR (ended_at = ? AND id < ?))")
        params += [ended_at, ended_at, record_id]
    sql = "SELECT id, ended_at, body FROM call_records"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ended_at DESC, id DESC LIMIT ?"
    with store.transaction() as tx:
        rows = tx.query(sql, (*params, limit + 1))
    page = rows[:limit]
    following = _encode_cursor(page[-1]["ended_at"], page[-1]["id"]) if len(rows) > limit else None
    return [json.loads(row["body"]) for row in page], following
