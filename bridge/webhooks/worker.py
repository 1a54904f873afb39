"""The webhook worker: claims due outbox rows and sends them, with retries, until they are delivered.

Sending is kept off the XMPP and request threads: a session's call events are queued here and
written to the outbox by the worker's own thread, and each delivery runs on a small pool, so a
slow receiver never delays an agent. Retries use exponential backoff with full jitter until
``max_age_hours``; a lease (``lease_seconds``) lets another worker, or the next start, send a row
whose worker died (docs/webhooks.md, the section on retries and idempotency).
"""
from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import requests

from .. import logs
from ..backoff import delay as retry_delay
from ..store import Store, Tx
from .outbox import Webhooks
from .settings import parse
from .signing import sign
from .transport import Refused, Resolver, check_destination, open_session

log = logs.get("bridge.webhooks")

BY_METHOD: Mapping[str, str] = MappingProxyType(
    {"call.ringing": "ringing", "call.answered": "answered", "call.ended": "ended"})


def backoff(attempts: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after ``attempts`` failures: bridge/backoff.py's full jitter,
    uniform in [0, min(cap, base * 2 ** (attempts - 1))]."""
    return retry_delay(attempts - 1, base, cap, rand=rand)


class WebhookWorker:
    """Claims due outbox rows and sends them on a pool of ``workers`` threads; one dispatcher thread.

    Waits on an Event, never polls faster than it must: a new row, a finished delivery or ``close``
    wakes it; otherwise it sleeps until the next row is due or a lease runs out, at most
    ``poll_seconds`` (rows other processes write). Every exception is logged and the loop goes on.
    """

    def __init__(self, store: Store, config: Mapping[str, Any], *, clock: Callable[[], float] = time.time,
                 resolver: Resolver = socket.getaddrinfo, rand: Callable[[], float] = random.random) -> None:
        self.store, self.clock, self.resolver, self.rand = store, clock, resolver, rand
        self.settings = parse(config.get("WEBHOOKS") or {})
        self.webhooks = Webhooks(self.settings, clock)
        self._postgres = str(store.dialect).startswith("postgres")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._intake: deque[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = deque()
        self._inflight: dict[int, Future[None]] = {}
        self._hint_until = 0.0
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="webhook-send")

    # -- intake (any thread; never blocks) ---------------------------------------------------------

    def on_call(self, method: str, params: Mapping[str, Any], agent: Mapping[str, Any]) -> None:
        """A session's call notification (on the XMPP thread): queued, written by the worker's thread."""
        event = BY_METHOD.get(method)
        if event is None or event not in self.webhooks.events or not isinstance(params.get("call"), dict):
            return
        record = params.get("record")
        with self._lock:
            self._intake.append((event, dict(params["call"]), dict(agent), dict(record) if record else None))
        self._wake.set()

    def enqueue_for_record(self, tx: Tx, record: Mapping[str, Any]) -> None:
        """The record hook (``bridge.record_hooks``). The row is not visible until the record's
        transaction commits, so the worker looks again every 50 ms for the next second."""
        self.webhooks.enqueue_for_record(tx, record)
        if "record" in self.webhooks.events:
            self._hint_until = time.monotonic() + 1.0
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------

    def start(self) -> WebhookWorker:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self._wake.clear()
            stopping = self._stopping.is_set()
            timeout = self.settings.poll_seconds
            try:
                if not self._write_intake():
                    timeout = 1.0
                if stopping:
                    return
                self._dispatch()
                timeout = min(timeout, self._next_wait())
            except Exception:  # a database hiccup must not end deliveries for the process's life
                log.exception("webhooks: worker loop failed; trying again")
                timeout = min(timeout, 1.0)
                if stopping:
                    return
            self._wake.wait(timeout)

    def run_once(self) -> int:
        """Write queued events, claim the due rows and send them on this thread (tests, tools)."""
        self._write_intake()
        rows = self._claim(self.settings.batch)
        for row in rows:
            self._attempt(row)
        return len(rows)

    def _write_intake(self) -> bool:
        """Queued session events -> outbox rows, oldest first; False if the database refused one."""
        while True:
            with self._lock:
                if not self._intake:
                    return True
                item = self._intake[0]
            try:
                self.webhooks.enqueue_event(self.store, *item)
            except Exception:
                log.exception("webhooks: could not write the %s event of call %s; will try again",
                              item[0], item[1].get("id"))
                return False
            with self._lock:
                self._intake.popleft()

    def _busy(self) -> tuple[str, list[int]]:
        with self._lock:
            ids = list(self._inflight)
        return (f" AND id NOT IN ({','.join('?' * len(ids))})" if ids else ""), ids

    def _dispatch(self) -> None:
        with self._lock:
            free = self.settings.workers - len(self._inflight)
        if free <= 0:
            return
        for row in self._claim(min(free, self.settings.batch)):
            with self._lock:
                self._inflight[int(row["id"])] = self._pool.submit(self._attempt, row)

    def _claim(self, limit: int) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due rows (not already being sent by this process) for this worker."""
        now, token = self.clock(), uuid.uuid4().hex
        busy_sql, busy = self._busy()
        due = ("state = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?)"
               + busy_sql)
        params = (now, now, *busy, limit)
        with self.store.transaction() as tx:
            if self._postgres:  # other bridges share the table: skip what they hold
                ids = [r["id"] for r in tx.query(
                    f"SELECT id FROM outbox WHERE {due} ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
                    params)]
                if not ids:
                    return []
                tx.execute(f"UPDATE outbox SET claimed_until = ?, claimed_by = ? WHERE id IN ({','.join('?' * len(ids))})",
                           (now + self.settings.lease_seconds, token, *ids))
            else:  # SQLite: one writer at a time; the UPDATE takes the write lock first
                tx.execute("UPDATE outbox SET claimed_until = ?, claimed_by = ? WHERE id IN "
                           f"(SELECT id FROM outbox WHERE {due} ORDER BY next_attempt_at, id LIMIT ?)",
                           (now + self.settings.lease_seconds, token, *params))
            return tx.query("SELECT * FROM outbox WHERE claimed_by = ? ORDER BY next_attempt_at, id", (token,))

    def _next_wait(self) -> float:
        """Seconds until a row may be due: its next attempt, or a lease running out."""
        with self._lock:
            if len(self._inflight) >= self.settings.workers:
                return self.settings.poll_seconds  # a finished delivery wakes the loop
        now = self.clock()
        busy_sql, busy = self._busy()
        with self.store.transaction() as tx:
            due = tx.one("SELECT MIN(next_attempt_at) AS t FROM outbox WHERE state = 'pending' AND "
                         f"(claimed_until IS NULL OR claimed_until <= ?){busy_sql}", (now, *busy))
            lease = tx.one("SELECT MIN(claimed_until) AS t FROM outbox WHERE state = 'pending' AND "
                           f"claimed_until > ?{busy_sql}", (now, *busy))
        times = [float(r["t"]) for r in (due, lease) if r is not None and r["t"] is not None]
        wait_for = min(times) - now if times else self.settings.poll_seconds
        if time.monotonic() < self._hint_until:
            wait_for = min(wait_for, 0.05)
        return max(0.01, min(wait_for, self.settings.poll_seconds))

    # -- one attempt -------------------------------------------------------------------------------

    def _attempt(self, row: dict[str, Any]) -> None:
        try:
            state, error, next_at = self._send(row)
            self._finish(row, state, error, next_at)
        except Exception:  # the lease runs out and the row is tried again
            log.exception("webhook %s: attempt on outbox row %s failed", row.get("endpoint"), row.get("id"))
        finally:
            with self._lock:
                self._inflight.pop(int(row["id"]), None)
            self._wake.set()

    def _send(self, row: dict[str, Any]) -> tuple[str, str | None, float]:
        """One HTTP attempt -> (state, error, next_attempt_at)."""
        endpoint = self.settings.endpoint(row["endpoint"])
        if endpoint is None:
            return "dead", f"endpoint {row['endpoint']!r} is no longer configured", row["next_attempt_at"]
        now = self.clock()
        key, allow = str(row["idempotency_key"]), self.settings.allow_hosts
        try:
            check_destination(row["url"], allow, self.resolver)  # at every attempt: DNS answers change
            timestamp = int(now)
            headers = {**json.loads(row["headers"]), "webhook-id": key, "webhook-timestamp": str(timestamp),
                       "webhook-signature": sign(endpoint.key, key, timestamp, row["body"]), "Idempotency-Key": key}
            host = (urlsplit(row["url"]).hostname or "").rstrip(".")
            with open_session(checked=host not in allow) as session:
                response = session.request(row["method"], row["url"], data=row["body"].encode("utf-8"),
                                           headers=headers, timeout=(endpoint.timeout, endpoint.timeout),
                                           allow_redirects=False, stream=True)
                response.close()
        except Refused as exc:
            return "dead", f"refused: {exc}", row["next_attempt_at"]
        except (OSError, requests.RequestException) as exc:  # the URL's path and query stay out of logs
            error = f"{type(exc).__name__}: {re.sub(r'with url: [^ ]* ', '', str(exc))}"
        else:
            if 200 <= response.status_code < 300:
                return "delivered", None, row["next_attempt_at"]
            error = f"HTTP {response.status_code}"
            if response.is_redirect:
                error += f": redirect to {response.headers.get('Location', '')!r} not followed"
        attempts = int(row["attempts"]) + 1
        deadline = float(row["created_at"]) + self.settings.max_age_seconds
        if now >= deadline:
            return "dead", f"gave up after {attempts} attempts: {error}"[:500], row["next_attempt_at"]
        delay = backoff(attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds, self.rand)
        return "pending", error[:500], min(now + delay, deadline)

    def _finish(self, row: dict[str, Any], state: str, error: str | None, next_at: float) -> None:
        now = self.clock()
        with self.store.transaction() as tx:  # only if the lease is still ours (it may have run out)
            tx.execute("UPDATE outbox SET state = ?, attempts = attempts + 1, next_attempt_at = ?, delivered_at = ?,"
                       " last_error = ?, claimed_until = NULL, claimed_by = NULL WHERE id = ? AND claimed_by = ?",
                       (state, next_at, now if state == "delivered" else None, error, row["id"], row["claimed_by"]))
        what = f"webhook {row['endpoint']}: {row['event']} of call {row['call_id']} ({row['idempotency_key']})"
        if state == "delivered":
            log.log(logging.INFO if row["attempts"] else logging.DEBUG, "%s delivered (attempt %d)", what,
                    int(row["attempts"]) + 1)
        elif state == "dead":
            log.error("%s dropped after %d attempts: %s", what, int(row["attempts"]) + 1, error)
        else:
            log.warning("%s: attempt %d failed (%s); next in %.1f s", what, int(row["attempts"]) + 1, error,
                        next_at - now)

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Write the queued events, then wait (at most ``shutdown_seconds``) for deliveries in flight;
        those still running keep their lease, which runs out, and the next start sends them again."""
        deadline = time.monotonic() + (self.settings.shutdown_seconds if timeout is None else timeout)
        self._stopping.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        else:
            self._write_intake()
        with self._lock:
            futures = list(self._inflight.values())
            left = len(self._intake)
        if left:
            log.error("webhooks: %d call events could not be written to the outbox before shutdown", left)
        _, running = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if running:
            log.warning("webhooks: %d deliveries still running at shutdown; they are sent again after "
                        "their lease (%.0f s) runs out", len(running), self.settings.lease_seconds)
        self._pool.shutdown(wait=False, cancel_futures=True)
