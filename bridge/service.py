"""The bridge's long-lived parts in one place, and the sign-in, resume and sign-out flows.

Sign-in: SystemInfo picks an IN_SERVICE node -> GET User checks the
credentials (and resolves a loginName) -> PUT LOGIN with the extension -> XMPP connect with
presence -> GET User and Dialogs -> a snapshot and a resume token for the browser.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from . import logs
from .failover import IN_SERVICE, NodeWatcher
from .gcfreeze import GcFreezer
from .metrics import Metrics
from .profiles import Profiles
from .records import RecordHook, RecordQueue, RecordWriter
from .errors import BadCredentials, InvalidParams, NotSignedIn, TooManyAttempts
from .finesse.model import Agent, Call, Update, is_loopback
from .finesse.notify import AgentConnection, NotifyHub
from .finesse.rest import FinesseNodes, FinesseRest, NodeAddress, SystemInfoProbe
from .screenpop import ScreenPop
from .sessions import AgentSession, SessionRegistry, Socket, secret_check
from .store import Store
from .throttle import SignInThrottle
from .webhooks import WebhookWorker
from .webhooks import parse as parse_webhooks

log = logs.get("bridge")




class FinesseLink:
    """One agent's Finesse side: its REST client and its XMPP connection."""

    def __init__(self, rest: FinesseRest, agent_id: str, extension: str) -> None:
        self.rest, self.agent_id, self.extension = rest, agent_id, extension
        self.xmpp: AgentConnection | None = None

    def get_user(self) -> Agent:
        return self.rest.get_user(self.agent_id)

    def get_calls(self) -> list[Call]:
        return self.rest.get_dialogs(self.agent_id, self.extension)

    def close(self) -> None:
        try:
            if self.xmpp is not None:
                self.xmpp.close()
        finally:
            self.rest.close()


class Bridge:
    """Config, Finesse nodes, the XMPP hub, the sessions; created unbound, attached by the app."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.nodes = FinesseNodes([NodeAddress.from_config(n) for n in config["FINESSE_NODES"]],
                                  pool_size=config["FINESSE_HTTP_CONNECTIONS"])
        # Sign-ins in flight toward Finesse (REST and XMPP), whatever the number of browsers asking
        self.signin_slots = threading.BoundedSemaphore(max(1, config["SIGNIN_MAX_CONCURRENT"]))
        self.registry = SessionRegistry()
        writable = config["WRITABLE_VARIABLES"]
        self._writable = (frozenset(n for n in writable if not n.endswith("*")),
                          tuple(n[:-1] for n in writable if n.endswith("*")))
        self.signin_throttle = SignInThrottle(
            per_agent=config["SIGNIN_MAX_FAILURES_PER_AGENT"], per_address=config["SIGNIN_MAX_FAILURES_PER_ADDRESS"],
            window=config["SIGNIN_FAILURE_WINDOW_SECONDS"], backoff=config["SIGNIN_BACKOFF_SECONDS"])
        self.failover = self._watcher(config)
        self.screenpop = ScreenPop.from_config(config)  # checks the rules: ConfigError at start
        self._hub: NotifyHub | None = None
        self._hub_lock = threading.Lock()
        self.gc = GcFreezer(config["GC_FREEZE_SECONDS"])
        self.workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bridge-work")
        self.sockets = 0  # connected WebSockets, kept by ws.py
        self.metrics = Metrics(self._gauges)
        # Call records (records.py): the store connects on first use; hooks run in the record's transaction.
        self.store = Store.from_url(config["DATABASE_URL"], busy_timeout=config["DATABASE_TIMEOUT_SECONDS"])
        self.record_hooks: list[RecordHook] = []  # e.g. the webhook outbox's enqueue_for_record
        self.record_writer = RecordWriter(self.store, self.record_hooks)
        self.records = RecordQueue(self.record_writer.write, retry_min=config["RECORD_RETRY_MIN_SECONDS"],
                                   retry_max=config["RECORD_RETRY_MAX_SECONDS"])
        self.profiles = Profiles(self.store)
        # Webhooks (bridge/webhooks/): checked at start; with endpoints, the outbox worker starts now, so rows
        # left by an earlier run are sent without waiting for an agent.
        self.webhooks: WebhookWorker | None = None
        if parse_webhooks(config["WEBHOOKS"]).endpoints:
            self.webhooks = WebhookWorker(self.store, config).start()
            self.record_hooks.append(self.webhooks.enqueue_for_record)

    def writable_variable(self, name: str) -> bool:
        """May a client write this call variable (``WRITABLE_VARIABLES``: names, or prefixes ending in *)?"""
        names, prefixes = self._writable
        return name in names or name.startswith(prefixes)

    def _gauges(self) -> dict[str, float]:
        hub = self._hub
        return {"cti_signed_in_agents": len(self.registry), "cti_sockets": self.sockets,
                "cti_xmpp_clients": hub.client_count() if hub is not None else 0}

    @property
    def hub(self) -> NotifyHub:
        """Started on first use: nothing connects at import or app creation."""
        with self._hub_lock:
            if self._hub is None:
                c = self.config
                self._hub = NotifyHub(ca_bundle=c["FINESSE_CA_BUNDLE"], ping_interval=c["XMPP_PING_SECONDS"],
                                      connect_timeout=c["XMPP_CONNECT_TIMEOUT"],
                                      reconnect_min=c["XMPP_RECONNECT_MIN_SECONDS"],
                                      reconnect_max=c["XMPP_RECONNECT_MAX_SECONDS"],
                                      max_concurrent=self.failover.max_concurrent,
                                      max_stanza_bytes=c["XMPP_MAX_STANZA_BYTES"], max_depth=c["XMPP_MAX_DEPTH"],
                                      max_elements=c["XMPP_MAX_ELEMENTS"])
                self._hub.start()
                self.gc.start()  # with the first agent: a process that never signs one in needs none
            return self._hub

    close_hooks: list[Callable[[], None]]  # ws.py: stop the request workers

    def close(self) -> None:
        self.failover.stop()
        for session in self.registry.all():
            self.finish(session, "shutdown", sign_out_xmpp=True)
        for hook in list(getattr(self, "close_hooks", ())):
            try:
                hook()
            except Exception:
                log.exception("close: a hook failed")
        with self._hub_lock:
            if self._hub is not None:
                self._hub.stop()
                self._hub = None
        self.gc.thaw()
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.records.close(timeout=self.config["DATABASE_TIMEOUT_SECONDS"])
        if self.webhooks is not None:  # after the records: their outbox rows are written by then
            self.webhooks.close()
        self.store.close()

    def _rest(self, user: str, password: str | None, token: str | None) -> FinesseRest:
        c = self.config
        return FinesseRest(self.nodes, user, password or "", ca_bundle=c["FINESSE_CA_BUNDLE"],
                           timeout=(c["FINESSE_CONNECT_TIMEOUT"], c["FINESSE_READ_TIMEOUT"]), token=token)

    def _tls(self, host: str) -> str:
        mode = self.config["XMPP_TLS"]
        if mode == "auto":
            return "none" if is_loopback(host) else "starttls"
        return str(mode)

    # -- sign-in -----------------------------------------------------------------------------

    def sign_in(self, socket: Socket, *, extension: str, agentId: str | None = None, loginName: str | None = None,
                password: str | None = None, token: str | None = None, address: str = "") -> dict[str, Any]:
        """A new session, or this socket joins the agent's session (docs/security.md: sign-in guesses).

        Failed sign-ins are limited per agent and per ``address`` (bridge/throttle.py) before anything
        reaches Finesse. A signed-in agent's password is checked against its session in memory; a
        new session's identity is resolved by Finesse (GET User) before the per-agent lock is
        taken, so an agentId and a loginName of one agent make one session.
        """
        if bool(agentId) == bool(loginName):
            raise InvalidParams("Give exactly one of agentId and loginName")
        if bool(password) == bool(token):
            raise InvalidParams("Give exactly one of password and token")
        if not extension:
            raise InvalidParams("extension is required")
        name = str(agentId or loginName)  # as given: Finesse checks the credentials with it
        key = self.signin_throttle.alias(name)  # the agent's one count, once its names are known
        secret = str(password or token)
        self.signin_throttle.check(key, address)
        session = self.registry.find(agentId, loginName)
        if session is not None:
            return self._join(session, socket, secret, extension, token is not None, key, address)
        with self.signin_slots:  # bounded concurrency toward Finesse
            return self._new_session(socket, name, key, password, token, extension, address)

    def _join(self, session: AgentSession, socket: Socket, secret: str, extension: str, is_token: bool,
              key: str, address: str, verified: bool = False) -> dict[str, Any]:
        """Another tab of a signed-in agent shares its session and its XMPP connection.

        A password is compared with the session's (a salted hash, in memory) and never sent to
        Finesse as a guess: after a password change, the session keeps the one it signed in with.
        A different SSO token is asked of Finesse (tokens are renewed, cannot be guessed, and do
        not lock the account), within the same limits. ``verified``: Finesse has just accepted
        these credentials (a sign-in that lost the race to create the session).
        """
        if not verified and not session.same_password(secret):
            try:
                if not is_token:
                    raise BadCredentials("The password does not match the agent's signed-in session")
                with self._rest(session.agent.id, None, secret) as rest:
                    rest.get_user(session.agent.id)
            except (BadCredentials, TooManyAttempts):
                self.signin_throttle.failed(key, address)
                self.metrics.logins.labels("rejected").inc()
                raise
        if extension != session.extension:
            raise InvalidParams(f"Agent is signed in on extension {session.extension}")
        session.check_room(socket)
        session.attach(socket)
        self.metrics.logins.labels("joined").inc()
        return self._login_result(session)

    def _new_session(self, socket: Socket, name: str, key: str, password: str | None, token: str | None,
                     extension: str, address: str) -> dict[str, Any]:
        rest = self._rest(name, password, token)
        try:
            # SystemInfo read by another sign-in a moment ago (or notified) serves this one too
            info = self.failover.fresh_info(self.nodes.current(), self.config["SYSTEMINFO_MAX_AGE_SECONDS"])
            if info is None:
                info = rest.system_info()
            try:
                user = rest.get_user(name)  # checks the credentials; resolves a loginName to its id
            except (BadCredentials, TooManyAttempts):
                self.signin_throttle.failed(key, address)
                self.metrics.logins.labels("rejected").inc()
                raise
            self.signin_throttle.succeeded(key, user.id, user.loginName)
            with self.registry.agent_lock(user.id):
                session = self.registry.get(user.id)
                if session is not None:  # the same agent signed in meanwhile (another tab, its other name)
                    rest.close()
                    return self._join(session, socket, password or token or "", extension, token is not None,
                                      key, address, verified=True)
                return self._start_session(socket, rest, user, info, password or token or "", extension)
        except BaseException:
            rest.close()
            raise

    def _start_session(self, socket: Socket, rest: FinesseRest, user: Agent, info: Any, secret: str,
                       extension: str) -> dict[str, Any]:
        """PUT LOGIN, XMPP, the first snapshot; the agent's lock is held."""
        rest.sign_in(user.id, extension)
        session = AgentSession(
            user, password_check=secret_check(secret),
            replay_events=self.config["REPLAY_BUFFER_EVENTS"], replay_seconds=self.config["REPLAY_BUFFER_SECONDS"],
            grace_seconds=self.config["SESSION_GRACE_SECONDS"], on_expire=self.expire,
            on_emit=lambda method: self.metrics.notifications.labels(method).inc(), screenpop=self.screenpop.pop,
            on_record=self.records.submit, on_call=self.webhooks.on_call if self.webhooks else None,
            max_sockets=self.config["MAX_SOCKETS_PER_AGENT"])
        session.extension = extension
        session.calls.extension = extension
        link = FinesseLink(rest, user.id, extension)
        session.backend = link
        node = self.nodes.current()
        link.xmpp = self.hub.connect(
            user=user.id, password=secret, host=node.xmpp_host, port=node.xmpp_port, domain=info.xmppDomain,
            tls=self._tls(node.xmpp_host), on_update=self._updates_for(session),
            on_state=self._states_for(session, info.xmppDomain), pubsub=info.pubsubDomain or None,
            route=self._route)
        try:
            agent, calls = link.get_user(), link.get_calls()
        except Exception:
            link.close()
            raise
        with session.lock:
            session.agent = agent
            for call in calls:  # the starting point: no notifications for what the snapshot shows
                session.calls.update(call, "PUT")
        self.registry.add(session)
        session.attach(socket)
        self.metrics.logins.labels("new").inc()
        log.info("agent %s signed in on extension %s", user.id, extension)
        return self._login_result(session)

    def _login_result(self, session: AgentSession) -> dict[str, Any]:
        snap = session.snapshot()
        return {"sessionId": session.id, "resumeToken": self.registry.issue_token(session),
                "agent": snap["agent"], "calls": snap["calls"], "seq": snap["seq"]}

    def _updates_for(self, session: AgentSession) -> Callable[..., None]:
        def on_update(*args: Any) -> None:
            update: Update = args[-1]
            if update.kind == "systeminfo" and update.system is not None:
                self._learn_from(session, update)
            session.on_update(update)
            self.metrics.finesse_events.labels(update.kind).inc()
            if update.kind == "user" and update.user is not None:
                self._end_if_logged_out(session, update.user)
        return on_update

    def _end_if_logged_out(self, session: AgentSession, agent: Agent) -> None:
        """Finesse signed the agent out (another desktop, a supervisor, lost presence): end the session."""
        if agent.state == "LOGOUT" and not getattr(session, "signing_out", False) and not session.closed:
            self.workers.submit(self.finish, session, "logged_out", True)

    def _states_for(self, session: AgentSession, domain: str) -> Callable[[str, str], None]:
        """XMPP and Finesse-presence states -> ``connection.changed``, and a re-sync after each reconnect.

        After a reconnect the ``finesse`` user's presence arrives before the XMPP connection reports
        itself connected (that waits for a ping round trip), so the link state is kept here rather
        than read back from the session's reported state: the re-sync must not be skipped. While
        down: "reconnecting" to the same node, "degraded" while no node is in service, "failover"
        once moving to another node (bridge/failover.py); each drop or presence loss makes the
        node suspect, so SystemInfo is polled.
        """
        link = {"down": False, "finesse": "available", "label": "reconnecting"}

        def reported() -> str:
            return "connected" if link["finesse"] == "available" else "degraded"

        def where() -> tuple[str, NodeAddress | None]:
            conn = session.backend.xmpp if session.backend is not None else None
            if conn is None:
                return domain, None
            return conn.domain, self.failover.node_at(conn.host, conn.port)

        def on_state(kind: str, state: str) -> None:
            at, node = where()
            if kind == "xmpp":
                if state == "connected":
                    if link["down"]:
                        link["down"], link["label"] = False, "reconnecting"
                        session.set_connection(reported(), at)
                        self.workers.submit(self._resync, session)
                elif state in ("disconnected", "reconnecting"):
                    if state == "disconnected":
                        link["label"] = "reconnecting"
                        self.failover.suspect(node)
                    link["down"] = True
                    session.set_connection(str(link["label"]), at)
                elif state == "waiting":  # no node in service
                    link["down"], link["label"] = True, "degraded"
                    session.set_connection("degraded", "")
                elif state == "failover":  # moving to another node
                    link["down"], link["label"] = True, "failover"
                    session.set_connection("failover", at)
                elif state == "failed":  # credentials refused on reconnect: no more attempts
                    link["down"] = True
                    session.set_connection("disconnected", at)
            elif kind == "finesse":
                was, link["finesse"] = link["finesse"], state
                if state == "unavailable":
                    self.failover.suspect(node)
                if not link["down"]:
                    session.set_connection(reported(), at)
                    if was == "unavailable" and state == "available":  # it published nothing meanwhile
                        self.workers.submit(self._resync, session)
        return on_state

    # -- failover (bridge/failover.py) -------------------------------------------------------

    def _watcher(self, config: dict[str, Any]) -> NodeWatcher:
        probe = SystemInfoProbe(ca_bundle=config.get("FINESSE_CA_BUNDLE"),
                                timeout=(config.get("FINESSE_CONNECT_TIMEOUT", 3.05),
                                         config.get("FINESSE_READ_TIMEOUT", 10.0)))
        watcher = NodeWatcher(self.nodes, probe, poll_seconds=config.get("FAILOVER_POLL_SECONDS", 5.0),
                              max_concurrent=config.get("FAILOVER_MAX_CONCURRENT", 50),
                              switch_after=config.get("FAILOVER_SWITCH_SECONDS", 15.0))
        self.nodes.gate = watcher
        watcher.add_listener(self._node_changed)
        return watcher

    def _route(self, host: str, port: int, down_for: float) -> tuple[str, int, str, str] | None:
        """Where an agent's XMPP reconnects (runs in the XMPP loop: no blocking)."""
        current = self.failover.node_at(host, port)
        target = self.failover.choose(current, down_for)
        if target is None:
            return None
        info = self.failover.info(target)
        if target == current:
            return (host, port, info.xmppDomain, info.pubsubDomain or f"pubsub.{info.xmppDomain}") if info else \
                (host, port, "", "")
        if info is None:  # its XMPP domain is not known yet: poll, and wait for it
            self.failover.suspect(None)
            return None
        return target.xmpp_host, target.xmpp_port, info.xmppDomain, info.pubsubDomain or f"pubsub.{info.xmppDomain}"

    def _learn_from(self, session: AgentSession, update: Update) -> None:
        conn = session.backend.xmpp if session.backend is not None else None
        node = self.failover.node_at(conn.host, conn.port) if conn is not None else None
        if node is not None and update.system is not None:
            self.failover.learn(node, update.system)

    def _node_changed(self, node: NodeAddress, status: str) -> None:
        """A node left or came back into service: move its agents away, or re-sync them."""
        for session in self.registry.all():
            conn = session.backend.xmpp if session.backend is not None else None
            if conn is None or not conn.connected or self.failover.node_at(conn.host, conn.port) != node:
                continue
            if status == IN_SERVICE:
                session.set_connection("connected", conn.domain)
                self.workers.submit(self._resync, session)
            else:
                session.set_connection("degraded", conn.domain)
        if status != IN_SERVICE:
            self.workers.submit(self._move_off, node)

    def _move_off(self, node: NodeAddress) -> None:
        """Agents on a node out of service move to another node, once a fresh SystemInfo shows it in
        service; with none, they keep their XMPP session (and presence) where it is (docs/finesse.md 10.2)."""
        target = self.failover.choose(node, float("inf"))
        if target is None or target == node or not self.failover.refresh(target) or self.failover.in_service(node):
            return
        for session in self.registry.all():
            conn = session.backend.xmpp if session.backend is not None else None
            if conn is not None and conn.connected and self.failover.node_at(conn.host, conn.port) == node:
                conn.failover()

    def _resync(self, session: AgentSession) -> None:
        backend = session.backend
        if backend is None or session.closed:
            return
        try:
            with self.failover.rest_slots:  # bounded concurrency toward Finesse
                agent = backend.get_user()
                calls = [] if agent.state == "LOGOUT" else backend.get_calls()
            session.resync(agent, calls)
        except Exception as exc:  # logged; the next reconnect tries again
            log.warning("agent %s: re-sync after reconnect failed: %s", session.agent.id, type(exc).__name__)
            return
        self._end_if_logged_out(session, agent)

    # -- resume and sign-out -----------------------------------------------------------------

    def resume(self, socket: Socket, token: str, last_seq: int, reply: Callable[[dict[str, Any]], str]) -> AgentSession:
        session = self.registry.by_token(token)
        if session is None:
            raise NotSignedIn("Session expired; sign in again")
        session.check_room(socket)  # before the token is spent: a refusal leaves everything as it was
        new_token = self.registry.issue_token(session, old=token)
        session.resume(socket, last_seq, lambda body: reply({"resumeToken": new_token, **body}))
        return session

    def sign_out(self, session: AgentSession, reason_code_id: str | None) -> None:
        backend: FinesseLink = session.backend
        session.signing_out = True  # type: ignore[attr-defined]
        try:
            backend.rest.sign_out(session.agent.id, reason_code_id)
        except Exception:
            session.signing_out = False  # type: ignore[attr-defined]
            raise

    def expire(self, session: AgentSession) -> None:
        self.finish(session, "expired", sign_out_xmpp=True)

    def finish(self, session: AgentSession, reason: str, sign_out_xmpp: bool = True) -> None:
        """End a session: tell the tabs, drop it from the registry, let go of XMPP."""
        self.registry.remove(session)
        session.end(reason)
        if sign_out_xmpp and session.backend is not None:
            try:
                session.backend.close()
            except Exception as exc:
                log.warning("agent %s: closing XMPP failed: %s", session.agent.id, type(exc).__name__)

    # -- graceful shutdown (docs/operations.md) ----------------------------------------------

    draining = False  # set by drain(): ws.py answers new WebSockets with 503
    drain_hooks: list[Callable[[], None]]  # ws.py: close every socket with 1012

    def drain(self) -> None:
        """The first half of a SIGTERM: refuse new sockets, close every socket with 1012 (service
        restart), write the waiting records and stop the webhook worker (in-flight deliveries
        finish within its shutdown_seconds; the others keep their outbox rows for the next
        process). Agents' XMPP sessions stay open: ``shutdown`` closes them after the hold."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: closing %d sockets with 1012, keeping %d agents' XMPP sessions",
                 self.sockets, len(self.registry))
        for hook in list(getattr(self, "drain_hooks", ())):
            try:
                hook()
            except Exception:
                log.exception("shutdown: a drain hook failed")
        self.records.flush(timeout=self.config["DATABASE_TIMEOUT_SECONDS"])
        if self.webhooks is not None:
            self.webhooks.close()

    def shutdown(self, hold: float | None = None, stop: threading.Event | None = None) -> None:
        """A whole SIGTERM: ``drain``, then keep the agents' XMPP sessions (their presence) for
        ``hold`` seconds (``SHUTDOWN_XMPP_HOLD_SECONDS``; ``stop`` ends the wait early), then
        ``close``. Finesse logs an agent out 60 s after its presence goes, so a replacement
        process that signs the agent in within hold + 60 s keeps the agent signed in."""
        self.drain()
        hold = self.config["SHUTDOWN_XMPP_HOLD_SECONDS"] if hold is None else hold
        if len(self.registry) and hold > 0:
            log.info("shutting down: holding %d XMPP sessions for %.0f s", len(self.registry), hold)
            (stop or threading.Event()).wait(hold)
        self.close()

