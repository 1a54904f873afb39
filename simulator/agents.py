"""Finesse's agent side: credentials and lockout, User state machine, presence and forced logout.

``Finesse`` holds the one shared state of both nodes. It runs in the simulator's event loop;
nothing here blocks or does I/O: notifications leave through the ``Notifier`` it is given.
The call side (``calls.CallCenter``) extends it.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol

from . import render
from .config import SimConfig
from .model import Agent, Dialog

log = logging.getLogger("simulator")

FORCED_LOGOUT_REASON = 255  # docs/finesse.md 9.8
MAKE_CALL_WHILE_READY_REASON = 50006  # docs/finesse.md 5.5 (UCCE 12.5+)
SYSTEM_REASONS = {FORCED_LOGOUT_REASON: (FORCED_LOGOUT_REASON, "Forced logout"),
                  MAKE_CALL_WHILE_READY_REASON: (MAKE_CALL_WHILE_READY_REASON, "Outbound call")}
BUSY_STATES = ("RESERVED", "TALKING", "HOLD")


class FinesseError(Exception):
    """A refused request: HTTP status plus Finesse's ApiError fields."""

    def __init__(self, status: int, error_type: str, message: str, data: str = "") -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.data = status, error_type, message, data

    def xml(self) -> str:
        return render.api_errors(self.error_type, self.message, self.data)


class Notifier(Protocol):
    def publish(self, node: str, payload: str, users: Iterable[str]) -> None: ...


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any: ...


class Finesse:
    """Agents, reason codes and the User resource; see ``calls.CallCenter`` for dialogs."""

    def __init__(self, config: SimConfig, notifier: Notifier, scheduler: Scheduler,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.uccx = config.deployment == "UCCX"
        self.notifier = notifier
        self.scheduler = scheduler
        self.now = clock
        teams = {t.id: t.name for t in config.teams}
        self.agents: dict[str, Agent] = {}
        for seed in config.all_agents():
            self.agents[seed.id] = Agent(
                id=seed.id, login_name=seed.login_name, first_name=seed.first_name,
                last_name=seed.last_name, extension=seed.extension, team_id=seed.team_id,
                team_name=teams.get(seed.team_id, ""), roles=tuple(seed.roles),
                password=seed.password or config.password,
                wrap_up_on_incoming=seed.wrap_up_on_incoming, wrap_up_on_outgoing=seed.wrap_up_on_outgoing)
        self.by_name = {a.login_name.lower(): a for a in self.agents.values()}
        self.reasons = {r.id: r for r in config.reason_codes}
        self.wrap_ups = {w.id: w for w in config.wrap_up_reasons}
        self.dialogs: dict[str, Dialog] = {}
        self.seeded_extensions = {a.extension: a for a in self.agents.values()}
        self.signed_in_extensions: dict[str, Agent] = {}  # login extension -> agent
        self._timers: dict[tuple[str, str], Any] = {}

    # -- credentials -------------------------------------------------------------------------

    def find_agent(self, key: str) -> Agent | None:
        """An agent by loginId, loginName (case-insensitive) or signed-in/seeded extension."""
        return (self.agents.get(key) or self.by_name.get(key.lower()) or self.signed_in_extensions.get(key)
                or self.seeded_extensions.get(key))

    def signed_in_extension(self, number: str) -> Agent | None:
        """The agent signed in on this extension, if any."""
        return self.signed_in_extensions.get(number)

    def check_password(self, user: str, password: str) -> Agent | None:
        """Check credentials with Finesse's lockout: N bad attempts lock the user for a while."""
        agent = self.agents.get(user) or self.by_name.get(user.lower())
        if agent is None:
            return None
        now = self.now()
        if agent.locked_until > now:
            return None
        if password == agent.password:
            agent.failed_logins = 0
            return agent
        agent.failed_logins += 1
        if agent.failed_logins >= self.config.lockout_attempts:
            agent.failed_logins = 0
            agent.locked_until = now + self.config.lockout_seconds
            log.info("user %s locked for %.0f s after failed sign-ins", agent.id, self.config.lockout_seconds)
        return None

    def authenticate(self, user: str, password: str) -> Agent:
        agent = self.check_password(user, password)
        if agent is None:
            known = self.agents.get(user) or self.by_name.get(user.lower())
            if known is not None and known.locked_until > self.now():
                raise FinesseError(401, "Authorization Failure", "User account is locked", user)
            raise FinesseError(401, "Authorization Failure", "Invalid user ID or password", user)
        return agent

    # -- reading -----------------------------------------------------------------------------

    def visible_user(self, actor: Agent, user_id: str) -> Agent:
        """An agent sees itself; a supervisor also sees the agents of teams it supervises."""
        target = self.agents.get(user_id) or (self.by_name.get(user_id.lower()) if not self.uccx else None)
        if target is None:
            raise FinesseError(404, "User Not Found", f"User {user_id} not found", user_id)
        if target is not actor and not self.supervises(actor, target.team_id):
            raise FinesseError(401, "Invalid Authorization User Specified",
                               "Cannot act for another user", actor.id)
        return target

    def supervises(self, actor: Agent, team_id: str) -> bool:
        return actor.is_supervisor and team_id in self.config.supervised_teams.get(actor.id, ())

    def reason_of(self, agent: Agent) -> tuple[int, str, int, str] | None:
        rc = self.reasons.get(agent.reason_code_id)
        if rc is not None:
            return (rc.id, rc.category, rc.code, rc.label)
        if agent.reason_code_id in SYSTEM_REASONS:
            code, label = SYSTEM_REASONS[agent.reason_code_id]
            category = "LOGOUT" if agent.state == "LOGOUT" else "NOT_READY"
            return (agent.reason_code_id, category, code, label)
        return None

    def user_xml(self, agent: Agent, tag: str = "User") -> str:
        return render.user(agent, self.reason_of(agent), tag)

    def reason_codes_xml(self, category: str) -> str:
        if category not in ("NOT_READY", "LOGOUT"):
            raise FinesseError(400, "Invalid Input", "category must be NOT_READY or LOGOUT", category)
        body = "".join(render.reason_code(r.id, r.category, r.code, r.label)
                       for r in self.reasons.values() if r.category == category)
        return f'<ReasonCodes category="{category}">{body}</ReasonCodes>'

    def wrap_up_reasons_xml(self) -> str:
        body = "".join(f"<WrapUpReason>{render.el('uri', f'/finesse/api/WrapUpReason/{w.id}')}"
                       f"{render.el('label', w.label)}{render.el('forAll', 'true')}</WrapUpReason>"
                       for w in self.wrap_ups.values())
        return f"<WrapUpReasons>{body}</WrapUpReasons>"

    def team_users_xml(self, actor: Agent, team_id: str) -> str:
        if not any(t.id == team_id for t in self.config.teams):
            raise FinesseError(404, "Not Found", f"Team {team_id} not found", team_id)
        if not actor.is_supervisor:  # wrong role (docs/finesse.md 8.3)
            raise FinesseError(401, "Authorization Failure", "Only supervisors can read a team", actor.id)
        if not self.supervises(actor, team_id):
            raise FinesseError(401, "Invalid Supervisor", "Not a supervisor of this team", actor.id)
        users = "".join(self.user_xml(a) for a in self.agents.values() if a.team_id == team_id)
        return f"<Users>{users}</Users>"

    # -- notifications -----------------------------------------------------------------------

    def publish_user(self, agent: Agent, request_id: str = "") -> None:
        source = f"/finesse/api/User/{agent.id}"
        payload = render.update(self.user_xml(agent, "user"), "PUT", source, request_id)
        self.notifier.publish(source, payload, (agent.id,))
        self.notifier.publish(f"/finesse/api/Team/{agent.team_id}/Users", payload, ())

    def publish_user_error(self, agent: Agent, error_type: str, message: str, data: str,
                           request_id: str) -> None:
        source = f"/finesse/api/User/{agent.id}"
        payload = render.update(render.async_api_errors(error_type, message, data), "PUT", source, request_id)
        self.notifier.publish(source, payload, (agent.id,))

    def set_state(self, agent: Agent, state: str, reason: int = -1, request_id: str = "") -> None:
        """Move an agent and publish the User update (always, as Finesse does on every change)."""
        now = self.now()
        if state != agent.state:
            agent.state_change_time = now
        agent.state, agent.reason_code_id = state, reason
        if state == "READY":
            agent.ready_since = now
        self.publish_user(agent, request_id)
        if state == "READY":
            self.on_ready(agent)

    # -- the User resource -------------------------------------------------------------------

    def put_user(self, actor: Agent, user_id: str, fields: dict[str, str], request_id: str = "") -> None:
        """PUT /finesse/api/User/{id}: LOGIN, READY, NOT_READY, WORK, WORK_READY, LOGOUT."""
        agent = self.visible_user(actor, user_id)
        state = fields.get("state", "").upper()
        if not state:
            raise FinesseError(400, "Parameter Missing", "state is required", "state")
        reason = self._reason_param(fields.get("reasonCodeId"), state)
        if state == "LOGIN":
            if agent is not actor:  # a supervisor may change a member's state, not sign it in
                raise FinesseError(401, "Invalid Authorization User Specified",
                                   "Users sign in themselves", actor.id)
            self._login(agent, fields.get("extension", ""), request_id)
        elif not agent.signed_in:
            raise FinesseError(400, "Invalid State", f"Cannot change state to {state} while logged out", agent.id)
        elif state in ("READY", "NOT_READY"):
            self._ready_or_not(agent, state, reason, request_id)
        elif state in ("WORK", "WORK_READY"):
            self._request_wrap_up(agent, state, request_id)
        elif state == "LOGOUT":
            allowed = ("NOT_READY", "READY") if self.uccx else ("NOT_READY",)
            if agent.state not in allowed or agent.dialogs:
                raise FinesseError(400, "Invalid State", f"Cannot log out from {agent.state}", agent.id)
            self.logout(agent, reason, request_id)
        else:
            raise FinesseError(400, "Invalid Input", f"Invalid state {state}", "state")

    def _reason_param(self, raw: str | None, state: str) -> int:
        if raw in (None, ""):
            if state in ("NOT_READY", "LOGOUT") and self.config.require_reason_codes:
                raise FinesseError(400, "Parameter Missing", "reasonCodeId is required", "reasonCodeId")
            return -1
        try:
            reason = int(str(raw))
        except ValueError:
            raise FinesseError(400, "Invalid Input", "reasonCodeId must be a number", "reasonCodeId") from None
        rc = self.reasons.get(reason)
        if state not in ("NOT_READY", "LOGOUT") or rc is None or rc.category != state:
            raise FinesseError(400, "Invalid Input", f"Invalid reasonCodeId {reason} for {state}", "reasonCodeId")
        return reason

    def _login(self, agent: Agent, extension: str, request_id: str) -> None:
        if not extension:
            raise FinesseError(400, "Parameter Missing", "extension is required", "extension")
        other = self.signed_in_extensions.get(extension)
        if other is not None and other is not agent:
            raise FinesseError(400, "Invalid Input", f"Extension {extension} is in use", extension)
        self.signed_in_extensions.pop(agent.login_extension, None)
        self.signed_in_extensions[extension] = agent
        agent.login_extension = extension
        if agent.signed_in:  # forced sign-in keeps the current state (docs/finesse.md 5.2)
            self.publish_user(agent, request_id)
            return
        agent.pending_state = ""
        self.set_state(agent, "NOT_READY", -1, request_id)

    def _ready_or_not(self, agent: Agent, state: str, reason: int, request_id: str) -> None:
        on_call = bool(self.live_dialogs(agent))
        if agent.state in ("WORK", "WORK_READY"):
            self.end_wrap_up(agent, state, reason, request_id)
        elif on_call or agent.state in BUSY_STATES:
            if self.uccx and state == "READY":
                acd = any(self.dialogs[d].acd for d in agent.dialogs if d in self.dialogs)
                code, name = ("265", "CF_INVALID_AGENT_WORKMODE") if acd else ("33", "CF_RESOURCE_BUSY")
                self.publish_user_error(agent, "Invalid State", name, code, request_id)
                return
            agent.pending_state, agent.return_reason = state, reason
            self.publish_user(agent, request_id)
        else:
            self.set_state(agent, state, reason, request_id)

    def _request_wrap_up(self, agent: Agent, state: str, request_id: str) -> None:
        if agent.state in ("WORK", "WORK_READY"):
            self.set_state(agent, state, agent.reason_code_id, request_id)
            return
        if self.uccx and state == "WORK_READY":
            raise FinesseError(400, "Invalid State", "WORK_READY is not supported on UCCX", agent.id)
        if not self.live_dialogs(agent):
            raise FinesseError(400, "Invalid State", f"{state} is only possible during a call", agent.id)
        outgoing = all(d.from_address == agent.login_extension for d in self.live_dialogs(agent))
        setting = agent.wrap_up_on_outgoing if outgoing else agent.wrap_up_on_incoming
        if setting == "NOT_ALLOWED":
            raise FinesseError(400, "Invalid State", "Wrap-up is not allowed for this agent", agent.id)
        agent.wrap_up_pending = state
        agent.pending_state = state
        self.publish_user(agent, request_id)

    def logout(self, agent: Agent, reason: int, request_id: str = "") -> None:
        self.cancel_timer(agent.id, "wrap")
        agent.pending_state = agent.wrap_up_pending = agent.return_state = ""
        if self.signed_in_extensions.get(agent.login_extension) is agent:
            del self.signed_in_extensions[agent.login_extension]
        agent.login_extension = ""
        self.set_state(agent, "LOGOUT", reason, request_id)

    # -- presence (docs/finesse.md 9.8) -----------------------------------------------------------

    def presence(self, user: str, node: str, available: bool) -> None:
        """A node's XMPP endpoint reports a user's presence there appearing or going."""
        agent = self.agents.get(user)
        if agent is None:
            return
        if available:
            agent.presence_nodes.add(node)
            agent.presence_lost_at = None
            self.cancel_timer(agent.id, "presence")
            return
        agent.presence_nodes.discard(node)
        if not agent.presence_nodes:
            agent.presence_lost_at = self.now()
            if agent.signed_in:
                self.start_timer(agent.id, "presence", self.config.presence_grace_seconds, self._forced_logout, agent)

    def _forced_logout(self, agent: Agent) -> None:
        if agent.signed_in and not agent.presence_nodes:
            log.info("agent %s: presence gone for %.0f s, forced logout", agent.id, self.config.presence_grace_seconds)
            self.logout(agent, FORCED_LOGOUT_REASON)

    # -- timers ------------------------------------------------------------------------------

    def start_timer(self, key: str, kind: str, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.cancel_timer(key, kind)

        def fire() -> None:
            self._timers.pop((key, kind), None)
            try:
                fn(*args)
            except Exception:  # a timer must never take the loop down
                log.exception("simulator timer %s/%s failed", key, kind)
        self._timers[(key, kind)] = self.scheduler.call_later(delay, fire)

    def cancel_timer(self, key: str, kind: str) -> None:
        handle = self._timers.pop((key, kind), None)
        if handle is not None:
            handle.cancel()

    # -- hooks the call side fills in ----------------------------------------------------------

    def live_dialogs(self, agent: Agent) -> list[Dialog]:
        """The agent's dialogs in which it is still connected (not wrapping up)."""
        return []

    def on_ready(self, agent: Agent) -> None:
        """An agent became READY: the call side routes waiting calls to it."""

    def end_wrap_up(self, agent: Agent, state: str, reason: int, request_id: str = "") -> None:
        self.set_state(agent, state, reason, request_id)
