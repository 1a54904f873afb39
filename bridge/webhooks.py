"""Webhooks: server-side HTTP actions for call events, delivered from an outbox (design.md section 7).

Finesse's HTTP Request workflow action (finesse.md 13.4) fires once from the agent's browser and
forgets. Here each delivery is a row in the ``outbox`` table, written in the same transaction as
the call record (the ``record`` event) or in its own transaction as soon as the session emits
``call.ringing``, ``call.answered`` or ``call.ended``; a background worker sends it with retries,
exponential backoff and full jitter until ``max_age_hours``, signed the Standard Webhooks way.

Delivery is at least once: a worker killed between the receiver's answer and the row's update
leaves the row leased; when the lease (``lease_seconds``) runs out, the next worker sends it again
with the same ``webhook-id``, which receivers use to drop duplicates. The manual is docs/webhooks.md.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
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
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter

from . import logs
from .config import ConfigError
from .templating import Template, Unbuildable, call_field as _call_field, form_template, lookup, url_template
from .calls import start_key
from .store import Store, Tx, register_schema, table_columns, widen_unique

log = logs.get("bridge.webhooks")

EVENTS = ("ringing", "answered", "ended", "record")
TYPES = {"ringing": "call.ringing", "answered": "call.answered", "ended": "call.ended", "record": "record.created"}
BY_METHOD = {"call.ringing": "ringing", "call.answered": "answered", "call.ended": "ended"}
RECORD_FIELDS = ("id", "agentId", "callId", "direction", "from", "to", "startedAt", "answeredAt", "endedAt",
                 "durationSeconds", "talkSeconds", "outcome", "wrapUpReason")
_ENDPOINT_KEYS = ("name", "url", "events", "method", "body", "template", "secret", "timeout")
_SETTINGS = {"endpoints": [], "allow_hosts": [], "max_age_hours": 24.0, "retry_base_seconds": 5.0,
             "retry_max_seconds": 3600.0, "batch": 20, "workers": 4, "lease_seconds": 60.0, "poll_seconds": 5.0,
             "shutdown_seconds": 5.0}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
USER_AGENT = "cti-bridge-webhooks/1"

# started_at: the call's start (calls.start_key; "" if none). With call_id it names the call: a
# Finesse id is reused, and a later call under it must get its own rows (docs/webhooks.md).
_OUTBOX = {"sqlite": """CREATE TABLE IF NOT EXISTS {name} (
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
        started_at TEXT NOT NULL DEFAULT '', UNIQUE (endpoint, event, call_id, agent_id, started_at))"""}
_INDEXES = ["CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS outbox_claim ON outbox (claimed_by)"]
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

Resolver = Callable[..., list[tuple[Any, ...]]]


class Refused(Exception):
    """A destination the security rules forbid: the row goes dead with this reason, never retried."""


# -- settings --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """One ``[[webhooks.endpoints]]`` table, checked."""

    name: str
    url: Template
    events: frozenset[str]
    method: str
    body: str  # json | form
    template: tuple[tuple[str, Template], ...] | None
    key: bytes
    timeout: float


@dataclass(frozen=True)
class Settings:
    """The ``WEBHOOKS`` table, checked."""

    endpoints: tuple[Endpoint, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    max_age_seconds: float = 24 * 3600.0
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    batch: int = 20
    workers: int = 4
    lease_seconds: float = 60.0
    poll_seconds: float = 5.0
    shutdown_seconds: float = 5.0

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def _field(name: str, key: str) -> str:
    """A placeholder: the call model's fields (as in screen-pop rules) or ``record.<field>``."""
    head, _, rest = name.partition(".")
    if head != "record":
        return _call_field(name, key)
    sub, _, var = rest.partition(".")
    if rest in RECORD_FIELDS or (sub == "variables" and var):
        return name
    raise ConfigError(f"{key}: unknown field {name!r} (record fields: {', '.join(RECORD_FIELDS)}, "
                      "record.variables.<name>)")


def _template(text: Any, key: str, url: bool) -> Template:
    """A URL or form template (bridge/templating.py) whose fields may also be ``record.*``."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: expected a string, got {text!r}")
    if url:
        return url_template(text, key, _field, verb="called", noun="webhook URL")
    return form_template(text, key, _field)


def secret_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` is decoded as Standard Webhooks does; other text is its UTF-8."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    return secret.encode("utf-8")


def _number(raw: Mapping[str, Any], name: str, key: str, default: float, minimum: float = 0.0) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= minimum:
        raise ConfigError(f"{key}.{name}: expected a number above {minimum:g}, got {value!r}")
    return float(value)


def _endpoint(raw: Any, index: int, allow_hosts: frozenset[str]) -> Endpoint:
    key = f"WEBHOOKS.endpoints[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - set(_ENDPOINT_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected {', '.join(_ENDPOINT_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{key}.name: required: letters, digits, _ . - (at most 64), got {name!r}")
    url = _template(raw.get("url"), f"{key}.url", url=True)
    host = (urlsplit(url.text).hostname or "").rstrip(".")
    if urlsplit(url.text).scheme.lower() != "https" and host not in allow_hosts:
        raise ConfigError(f"{key}.url: https is required, except for hosts in WEBHOOKS.allow_hosts ({host!r} is not)")
    events = raw.get("events")
    if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
        raise ConfigError(f"{key}.events: expected a non-empty list of {', '.join(EVENTS)}, got {events!r}")
    method = raw.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
        raise ConfigError(f"{key}.method: expected POST or PUT, got {method!r}")
    body = raw.get("body", "json")
    if body not in ("json", "form"):
        raise ConfigError(f"{key}.body: expected json or form, got {body!r}")
    template = raw.get("template")
    if template is not None and (not isinstance(template, dict) or not template
                                 or not all(isinstance(k, str) and k for k in template)):
        raise ConfigError(f"{key}.template: expected a table of field = \"template\", got {template!r}")
    if template is None and body == "form":
        raise ConfigError(f"{key}.template: a form body needs a template (field = \"template\")")
    secret = raw.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{key}.secret: required, \"whsec_<base64>\" or a string of at least 16 characters")
    try:
        secret_bytes = secret_key(secret)
    except ValueError:
        raise ConfigError(f"{key}.secret: the part after whsec_ is not base64") from None
    if len(secret_bytes) < 16:
        raise ConfigError(f"{key}.secret: too short; at least 16 bytes (Standard Webhooks uses 24 to 64)")
    return Endpoint(
        name, url, frozenset(events), method.upper(), body,
        None if template is None else tuple((k, _template(v, f"{key}.template.{k}", url=False))
                                            for k, v in template.items()),
        secret_bytes, _number(raw, "timeout", key, 10.0))


def parse(table: Any) -> Settings:
    """``WEBHOOKS`` (the TOML ``[webhooks]`` table) -> settings; ``ConfigError`` naming the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"WEBHOOKS: expected a table, got {table!r}")
    unknown = sorted(set(table) - set(_SETTINGS))
    if unknown:
        raise ConfigError(f"WEBHOOKS.{unknown[0]}: unknown key (expected {', '.join(_SETTINGS)})")
    hosts = table.get("allow_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(f"WEBHOOKS.allow_hosts: expected a list of host names or addresses, got {hosts!r}")
    allow = frozenset(h.lower().strip("[]").rstrip(".") for h in hosts)
    numbers = {name: _number(table, name, "WEBHOOKS", float(default)) for name, default in _SETTINGS.items()
               if isinstance(default, (int, float))}
    for name in ("batch", "workers"):
        if numbers[name] != int(numbers[name]) or numbers[name] < 1:
            raise ConfigError(f"WEBHOOKS.{name}: expected a whole number of at least 1, got {table.get(name)!r}")
    if numbers["retry_base_seconds"] > numbers["retry_max_seconds"]:
        raise ConfigError("WEBHOOKS.retry_base_seconds: must not exceed retry_max_seconds")
    raw_endpoints = table.get("endpoints", [])
    if not isinstance(raw_endpoints, list):
        raise ConfigError(f"WEBHOOKS.endpoints: expected a list of endpoints, got {raw_endpoints!r}")
    endpoints: list[Endpoint] = []
    for index, raw in enumerate(raw_endpoints):
        endpoint = _endpoint(raw, index, allow)
        if any(e.name == endpoint.name for e in endpoints):
            raise ConfigError(f"WEBHOOKS.endpoints[{index}].name: {endpoint.name!r} is used twice")
        if numbers["lease_seconds"] <= 2 * endpoint.timeout:
            raise ConfigError(f"WEBHOOKS.lease_seconds: must be more than twice endpoints[{index}].timeout "
                              f"(connect + read), got {numbers['lease_seconds']:g}")
        endpoints.append(endpoint)
    return Settings(tuple(endpoints), allow, numbers["max_age_hours"] * 3600.0, numbers["retry_base_seconds"],
                    numbers["retry_max_seconds"], int(numbers["batch"]), int(numbers["workers"]),
                    numbers["lease_seconds"], numbers["poll_seconds"], numbers["shutdown_seconds"])


# -- pure parts: signature, backoff, destination checks -------------------------------------------

def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode("utf-8"), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def backoff(attempts: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after ``attempts`` failures: full jitter, uniform in
    [0, min(cap, base * 2 ** (attempts - 1))]."""
    return rand() * min(cap, base * 2.0 ** min(max(attempts - 1, 0), 60))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def refusal(address: str) -> str | None:
    """Why an address may not be a webhook destination, or None for a public unicast address."""
    ip = _address(address)
    for flag in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{flag}"):
            return f"{ip} is a {flag.replace('_', '-')} address"
    return None if ip.is_global else f"{ip} is not a public address"


def check_destination(url: str, allow_hosts: frozenset[str], resolver: Resolver) -> None:
    """Raise ``Refused`` unless ``url`` is https and every address of its host is public; hosts in
    ``allow_hosts`` may use http and private addresses. ``OSError`` if the host does not resolve."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if host in allow_hosts:
        return
    if parts.scheme.lower() != "https":
        raise Refused(f"{parts.scheme}:// to {host!r}: https is required for hosts not in allow_hosts")
    infos = resolver(host, parts.port or 443, 0, socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host!r} has no address")
    for info in infos:
        reason = refusal(str(info[4][0]))
        if reason is not None:
            raise Refused(f"{host!r} resolves to {reason}; add the host to allow_hosts to allow it")


def _checked_socket(sock: socket.socket) -> socket.socket:
    """Where the connection really went, checked again: DNS may answer differently the second time."""
    reason = refusal(str(sock.getpeername()[0]))
    if reason is not None:
        sock.close()
        raise Refused(f"connected to {reason}")
    return sock


class _CheckedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _checked_socket(super()._new_conn())


class _CheckedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _checked_socket(super()._new_conn())


class _CheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    """Refuses a connection whose peer is not a public address (before TLS, before any byte)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _session(checked: bool) -> requests.Session:
    """A fresh session that reads no proxy or netrc settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    if checked:
        session.mount("http://", _CheckedAdapter())
        session.mount("https://", _CheckedAdapter())
    return session


# -- enqueueing ------------------------------------------------------------------------------------

def _iso(at: float) -> str:
    stamp = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Webhooks:
    """The checked settings and the outbox writes; no threads (``WebhookWorker`` sends)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self.events = frozenset(e for endpoint in settings.endpoints for e in endpoint.events)

    def rows(self, event: str, call: Mapping[str, Any], agent: Mapping[str, Any],
             record: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The outbox rows for one event, one per endpoint that wants it."""
        now = self.clock()
        payload = {"type": TYPES[event], "timestamp": _iso(now),
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


# -- the worker ------------------------------------------------------------------------------------

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
            with _session(checked=host not in allow) as session:
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
