"""One AgentSession per signed-in agent, and the registry that owns them.

A session holds the agent's Finesse REST client and XMPP connection, its current agent and calls,
a per-agent sequence number on every notification, a replay buffer for resumes, and the sockets
(browser tabs) attached to it. Events arrive on the XMPP thread and leave through each socket's
own send queue, so a slow browser never blocks the XMPP loop.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

from .times import iso_now
from . import logs
from .calls import CallTracker
from .errors import NoSuchCall, NotAllowed
from .finesse import model
from .finesse.model import Agent, Call, Update

log = logs.get("bridge.sessions")

# Call notifications that are screen-pop triggers (docs/screenpop.md).
POP_TRIGGERS = {"call.ringing": "ringing", "call.dialing": "dialing", "call.answered": "answered",
                "call.ended": "ended"}
# (trigger, call JSON, agent JSON) -> call.screenPop params or None; see screenpop.ScreenPop.pop.
ScreenPopper = Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any] | None]


class Socket(Protocol):
    """What a session needs of a connected browser socket (see ``ws.Connection``)."""

    id: str

    def send(self, text: str) -> bool: ...  # enqueue without blocking; False if the socket is gone

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class Backend(Protocol):
    """The Finesse side of a session: REST calls and the XMPP connection (see ``rpc.FinesseLink``)."""

    def get_user(self) -> Agent: ...

    def get_calls(self) -> list[Call]: ...

    def close(self) -> None: ...


def secret_check(secret: str) -> Callable[[str], bool]:
    """A check that a later sign-in gives the same password (or token) as ``secret``, for ``password_check``.

    Keeps a salted hash, not the secret, and compares in constant time. A fast keyed hash
    (HMAC-SHA-256 with a random salt per session) rather than a slow one: the agent's Finesse
    credentials are in this process's memory anyway while the session lasts (XMPP reconnects
    need them), and guesses are limited by the sign-in throttle (bridge/throttle.py), not by
    the cost of one comparison.
    """
    salt = os.urandom(16)
    digest = hmac.new(salt, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def same(given: str) -> bool:
        mac = hmac.new(salt, given.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return hmac.compare_digest(mac, digest)
    return same


class AgentSession:
    """Everything the bridge knows and holds for one signed-in agent."""

    def __init__(self, agent: Agent, *, password_check: Callable[[str], bool], replay_events: int,
                 replay_seconds: float, grace_seconds: float, on_expire: Callable[["AgentSession"], None],
                 on_emit: Callable[[str], None] | None = None, screenpop: ScreenPopper | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_call: Callable[[str, dict[str, Any], dict[str, Any]], None] | None = None,
                 max_sockets: int = 0) -> None:
        self.id = secrets.token_hex(8)
        self.agent = agent
        self.extension = agent.extension
        self.calls = CallTracker(agent.id, agent.extension)
        self.backend: Any = None  # set once the Finesse side is connected
        self._password_check = password_check
        self.lock = threading.RLock()
        self.seq = 0
        self._buffer: deque[tuple[int, float, str]] = deque()
        self._replay_events, self._replay_seconds = replay_events, replay_seconds
        self._grace = grace_seconds
        self._on_expire = on_expire
        self._on_emit = on_emit
        self._screenpop = screenpop
        self._on_record = on_record  # each call.ended record, to the store (must not block)
        self._on_call = on_call  # (method, params, agent) of each call notification, to webhooks (must not block)
        self._popped: dict[tuple[str, str], None] = {}  # (callId, trigger) that popped (bounded)
        self.sockets: dict[str, Socket] = {}
        self._timer: threading.Timer | None = None
        self.closed = False
        self.connection_state = "connected"
        self.max_sockets = max_sockets  # tabs (sockets) of this agent at once; 0: no limit

    # -- identity ----------------------------------------------------------------------------

    def same_password(self, password: str) -> bool:
        return self._password_check(password)

    # -- sockets -----------------------------------------------------------------------------

    def check_room(self, socket: Socket) -> None:
        """NotAllowed (4003) if ``socket`` would be one more than ``max_sockets`` tabs of this agent."""
        with self.lock:
            if self.max_sockets and socket.id not in self.sockets and len(self.sockets) >= self.max_sockets:
                raise NotAllowed(f"The agent has {len(self.sockets)} sockets open, the most allowed "
                                 f"(MAX_SOCKETS_PER_AGENT); close one first")

    def attach(self, socket: Socket) -> None:
        with self.lock:
            self.sockets[socket.id] = socket
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def detach(self, socket: Socket) -> None:
        with self.lock:
            if self.sockets.pop(socket.id, None) is None or self.sockets or self.closed:
                return
            # The last tab went away: keep Finesse (and the agent's presence) for a grace period.
            self._timer = threading.Timer(self._grace, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self.lock:
            if self.sockets or self.closed:
                return
            if self.calls.calls:
                # A call is still live: keep Finesse until it ends, so its record is written.
                self._timer = threading.Timer(self._grace, self._expire)
                self._timer.daemon = True
                self._timer.start()
                return
        log.info("agent %s: no socket for %.0f s, closing the session", self.agent.id, self._grace)
        self._on_expire(self)

    # -- notifications -----------------------------------------------------------------------

    def emit(self, method: str, params: dict[str, Any]) -> None:
        """Stamp, buffer and fan out one notification; never blocks."""
        with self.lock:
            self.seq += 1
            body = {"seq": self.seq, "at": iso_now(), **params}
            text = json.dumps({"jsonrpc": "2.0", "method": method, "params": body}, separators=(",", ":"))
            now = time.monotonic()
            self._buffer.append((self.seq, now, text))
            while len(self._buffer) > self._replay_events or (
                    self._buffer and now - self._buffer[0][1] > self._replay_seconds):
                self._buffer.popleft()
            for socket in list(self.sockets.values()):
                socket.send(text)
        if self._on_emit is not None:
            self._on_emit(method)

    def resume(self, socket: Socket, last_seq: int, reply: Callable[[dict[str, Any]], str]) -> None:
        """Attach ``socket`` and send the reply then the missed events, or a snapshot if too old.

        Under the session lock, so no live event can slip between the reply and the replay.
        """
        with self.lock:
            now = time.monotonic()
            missed = [text for seq, at, text in self._buffer if seq > last_seq]
            oldest = self._buffer[0][0] if self._buffer else self.seq + 1
            fresh = all(now - at <= self._replay_seconds for seq, at, _ in self._buffer if seq > last_seq)
            covered = last_seq <= self.seq and (last_seq + 1 >= oldest or last_seq == self.seq) and fresh
            if covered:
                socket.send(reply({"replayed": len(missed)}))
                for text in missed:
                    socket.send(text)
            else:
                socket.send(reply({"snapshot": self.snapshot()}))
            self.attach(socket)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"agent": self.agent.to_json(), "calls": self.calls.as_json(), "seq": self.seq}

    # -- Finesse events (called on the XMPP thread: must not block) --------------------------

    def on_update(self, update: Update) -> None:
        with self.lock:
            if update.kind == "user" and update.user is not None:
                self._set_agent(update.user)
            elif update.kind in ("dialog", "dialogs"):
                for doc in update.dialogs:
                    try:
                        call = model.parse_call(doc, self.extension)
                    except model.XmlError as exc:  # logged and dropped; the other dialogs go on
                        log.warning("agent %s: dropped a dialog from Finesse: %s", self.agent.id, exc)
                        continue
                    for method, params in self.calls.update(call, update.event):
                        self._emit_call(method, params)
            elif update.kind == "apierrors" and update.errors:
                first = update.errors[0]
                data = {"errorType": first.errorType, "errorMessage": first.message, "errorData": first.data}
                if "/Dialog/" in update.source:
                    call_id = update.source.rsplit("/", 1)[-1]
                    self.emit("call.error", {"callId": call_id, "code": 4090, "message": first.message or first.errorType,
                                             "data": data})
                else:
                    self.emit("agent.error", {"code": 4090, "message": first.message or first.errorType, "data": data})
            elif update.kind == "systeminfo" and update.system is not None:
                state = "connected" if update.system.status == "IN_SERVICE" else "degraded"
                self.set_connection(state, update.system.xmppDomain)

    def _set_agent(self, agent: Agent) -> None:
        if not agent.id:
            return
        changed = agent != self.agent  # the dataclasses' own field-by-field comparison
        self.agent = agent
        if changed:
            self.emit("agent.stateChanged", {"agent": agent.to_json()})

    def _emit_call(self, method: str, params: dict[str, Any]) -> None:
        """A call notification, then its screen pop if a rule matches: once per call and trigger,
        whatever the tabs, reloads and resumes (they share this session and its replay buffer).
        A ``call.ended`` record goes to the store from here, with or without a tab open."""
        if method == "call.ended" and self._on_record is not None:
            try:
                self._on_record(params["record"])
            except Exception:  # the store's trouble must never cost the agent its call events
                log.exception("agent %s: queueing the call record failed", self.agent.id)
        self.emit(method, params)
        if self._on_call is not None:
            try:
                self._on_call(method, params, {**self.agent.to_json(), "extension": self.extension})
            except Exception:  # a webhook must never cost the agent its call events
                log.exception("agent %s: queueing webhooks failed", self.agent.id)
        trigger = POP_TRIGGERS.get(method)
        if trigger is None or self._screenpop is None:
            return
        # The call is its id and its start (the tracker keeps one start per call): Finesse reuses
        # ids (calls.start_key, docs/screenpop.md), and a later call under a popped id pops again.
        call = params["call"]
        key = (f"{call['id']}@{call.get('startedAt') or ''}", trigger)
        if key in self._popped:
            return
        agent = {**self.agent.to_json(), "extension": self.extension}
        try:
            pop = self._screenpop(trigger, params["call"], agent)
        except Exception:  # a rule must never cost the agent its call events
            log.exception("agent %s: screen-pop rules failed", self.agent.id)
            return
        if pop is not None:
            self._popped[key] = None
            while len(self._popped) > 1000:
                self._popped.pop(next(iter(self._popped)))
            self.emit("call.screenPop", pop)

    def set_connection(self, state: str, node: str = "") -> None:
        with self.lock:
            if state != self.connection_state:
                self.connection_state = state
                self.emit("connection.changed", {"state": state, "node": node})

    def resync(self, agent: Agent, calls: list[Call]) -> None:
        """After the XMPP connection came back: Finesse's state is the truth; send the differences."""
        with self.lock:
            self._set_agent(agent)
            for method, params in self.calls.reconcile(calls):
                self._emit_call(method, params)

    def call(self, call_id: str) -> Call:
        """A call of this agent's, or NoSuchCall: whatever the params say, never another agent's."""
        with self.lock:
            call = self.calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            raise NoSuchCall(f"No call {call_id!r} for this agent")
        return call

    def end(self, reason: str) -> None:
        """Tell every tab the session is over and let go of Finesse (XMPP) and the sockets."""
        with self.lock:
            if self.closed:
                return
            self.emit("session.ended", {"reason": reason})
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
            sockets = list(self.sockets.values())
            self.sockets.clear()
        for socket in sockets:
            socket.close(1000, reason)


class SessionRegistry:
    """All sessions of this process, by agent id and by resume token; its own lock."""

    def __init__(self, tokens_per_session: int = 64) -> None:
        self._lock = threading.Lock()
        self._by_agent: dict[str, AgentSession] = {}
        self._tokens: dict[str, AgentSession] = {}
        # Each sign-in and resume issues a token; a session keeps only its newest ones, so a client
        # signing in again and again on a signed-in agent's session cannot grow the registry.
        self._issued: dict[str, deque[str]] = {}  # session id -> its live tokens, oldest first
        self._tokens_per_session = max(1, tokens_per_session)
        self._agent_locks: dict[str, tuple[threading.Lock, int]] = {}  # agent id -> (lock, holders and waiters)

    @contextmanager
    def agent_lock(self, agent_id: str) -> Iterator[None]:
        """Serialises the sign-ins of one agent (by its Finesse id, resolved first: an agentId and a
        loginName of one agent take the same lock), so two tabs signing in at once make one session.
        The lock exists only while someone holds it or waits for it: identifiers that were tried
        leave nothing behind."""
        with self._lock:
            lock, users = self._agent_locks.get(agent_id, (threading.Lock(), 0))
            self._agent_locks[agent_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._agent_locks[agent_id]
                if users == 1:
                    del self._agent_locks[agent_id]
                else:
                    self._agent_locks[agent_id] = (lock, users - 1)

    def find(self, agent_id: str | None = None, login_name: str | None = None) -> AgentSession | None:
        """The live session of the agent with this id, or with this loginName (case-insensitive)."""
        if agent_id:
            return self.get(agent_id)
        if login_name:
            name = login_name.lower()
            with self._lock:
                return next((s for s in self._by_agent.values()
                             if not s.closed and s.agent.loginName.lower() == name), None)
        return None

    def lock_count(self) -> int:
        """Per-agent locks held or waited for now (0 when no sign-in is in flight)."""
        with self._lock:
            return len(self._agent_locks)

    def get(self, agent_id: str) -> AgentSession | None:
        with self._lock:
            session = self._by_agent.get(agent_id)
            return session if session is not None and not session.closed else None

    def add(self, session: AgentSession) -> None:
        with self._lock:
            self._by_agent[session.agent.id] = session

    def remove(self, session: AgentSession) -> None:
        with self._lock:
            if self._by_agent.get(session.agent.id) is session:
                del self._by_agent[session.agent.id]
            for token in self._issued.pop(session.id, ()):
                self._tokens.pop(token, None)

    def issue_token(self, session: AgentSession, old: str | None = None) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            issued = self._issued.setdefault(session.id, deque())
            if old is not None and self._tokens.get(old) is session:
                del self._tokens[old]
                issued.remove(old)
            self._tokens[token] = session
            issued.append(token)
            while len(issued) > self._tokens_per_session:  # the oldest tab's token: it signs in again
                self._tokens.pop(issued.popleft(), None)
        return token

    def by_token(self, token: str) -> AgentSession | None:
        with self._lock:
            session = self._tokens.get(token)
            return session if session is not None and not session.closed else None

    def token_count(self) -> int:
        """Resume tokens that would be honoured now (at most ``tokens_per_session`` per session)."""
        with self._lock:
            return len(self._tokens)

    def all(self) -> list[AgentSession]:
        with self._lock:
            return list(self._by_agent.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_agent)
