"""The calls themselves: ring, route, make, answer, hold, consult, transfer, conference, end.

``FinesseSim`` is the complete shared state of the simulated Finesse pair. REST requests call
``make_call`` and ``dialog_action``; the control API calls ``ring``, ``hangup`` and
``far_end_answer``.
"""
from __future__ import annotations

from typing import Any

from .agents import MAKE_CALL_WHILE_READY_REASON, FinesseError
from .calls import CONNECTED, DTMF, CallCenter, ControlError
from .model import Agent, Dialog


class FinesseSim(CallCenter):
    # -- inbound calls (control API) ---------------------------------------------------------

    def ring(self, *, to: str = "", ani: str = "", dnis: str = "", queue: str = "",
             variables: dict[str, str] | None = None, call_type: str = "") -> Dialog:
        """A customer calls an agent (id, loginName or extension) or a queue."""
        variables = {str(k): str(v) for k, v in (variables or {}).items()}
        try:
            self.check_variables(variables)
        except FinesseError as exc:
            raise ControlError(400, exc.message) from exc
        q = self.queues.get(queue) if queue else None
        if queue and q is None:
            raise ControlError(404, f"no queue named {queue!r}; queues: {sorted(self.queues)}")
        agent = None
        if to:
            agent = self.find_agent(to)
            if agent is None:
                raise ControlError(404, f"no agent or extension {to!r}")
            if not agent.signed_in:
                raise ControlError(409, f"agent {agent.id} is not signed in")
        elif q is None:
            raise ControlError(400, "give 'to' (an agent or extension) or 'queue'")
        acd = bool(q) or (agent is not None and agent.state == "READY" and not agent.dialogs)
        number = dnis or (q.number if q else (agent.login_extension if agent else ""))
        dialog = self._new_dialog(
            from_address=ani, to_address=number, call_type=call_type or ("ACD_IN" if acd else "OTHER_IN"),
            state="ALERTING", dnis=number, dialed_number=number, queue_number=q.number if q else "",
            queue_name=q.name if q else "", variables=self._variables(variables), acd=acd)
        dialog.participants.append(self._outside_party(ani, "ACTIVE"))
        if agent is not None:
            self._deliver(dialog, agent)
        else:
            dialog.queued = True
            self.waiting.append(dialog.id)
            self._route()
        return dialog

    def _deliver(self, dialog: Dialog, agent: Agent, request_id: str = "") -> None:
        dialog.queued = False
        dialog.participants.append(self._agent_party(agent, "ALERTING"))
        dialog.state = "ALERTING"
        if dialog.acd and agent.state == "READY":
            agent.return_state, agent.return_reason = "READY", -1
            agent.dialogs.append(dialog.id)  # RESERVED comes first, then the Dialogs POST
            self._busy_state(agent, request_id)
            agent.dialogs.remove(dialog.id)
        self._post_or_delete(dialog, agent, "POST", request_id)
        self._busy_state(agent, request_id)

    def _route(self) -> None:
        """Queued calls go, oldest first, to the longest-ready member agent."""
        for dialog_id in list(self.waiting):
            dialog = self.dialogs.get(dialog_id)
            if dialog is None or not dialog.queued:
                self.waiting.remove(dialog_id)
                continue
            q = self.queues[dialog.queue_name]
            ready = [a for a in self.agents.values() if a.state == "READY" and not a.dialogs
                     and (not q.members or a.id in q.members)]
            if not ready:
                continue
            self.waiting.remove(dialog_id)
            self._deliver(dialog, min(ready, key=lambda a: a.ready_since))

    def on_ready(self, agent: Agent) -> None:
        if self.waiting:
            self._route()

    # -- outbound calls (REST) ---------------------------------------------------------------

    def make_call(self, actor: Agent, user_id: str, from_address: str, to_address: str,
                  variables: dict[str, str] | None, request_id: str = "") -> Dialog:
        """POST /finesse/api/User/{id}/Dialogs with MAKE_CALL (docs/finesse.md 6.7)."""
        if user_id != actor.id and self.by_name.get(user_id.lower()) is not actor:
            raise FinesseError(401, "Invalid Authorization User Specified", "Cannot act for another user", actor.id)
        if not to_address:
            raise FinesseError(400, "Parameter Missing", "toAddress is required", "toAddress")
        if not actor.signed_in:
            raise FinesseError(400, "Invalid State", "Agent is not signed in", actor.id)
        if from_address != actor.login_extension:
            raise FinesseError(400, "Invalid Input", "fromAddress must be the signed-in extension", from_address)
        if to_address == from_address:
            raise FinesseError(400, "Invalid Destination", "Cannot call yourself", to_address)
        if variables and self.uccx:
            raise FinesseError(400, "Invalid Input", "mediaProperties are not supported on UCCX", "mediaProperties")
        self.check_variables(variables or {})
        if any(self._party(d, actor).state in ("ACTIVE", "ALERTING", "INITIATING", "INITIATED")
               for d in self.live_dialogs(actor)):
            raise FinesseError(400, "Invalid State", "Agent already has an active call", actor.id)
        if actor.state == "READY":
            if self.uccx:
                raise FinesseError(400, "Invalid State", "Cannot make a call while READY", actor.id)
            self.set_state(actor, "NOT_READY", MAKE_CALL_WHILE_READY_REASON, request_id)
        if actor.state in ("WORK", "WORK_READY"):
            self.end_wrap_up(actor, "NOT_READY", -1, request_id)
        target = self.signed_in_extension(to_address)
        dialog = self._new_dialog(
            from_address=from_address, to_address=to_address,
            call_type="AGENT_INSIDE" if target else "AGENT_OUT", state="INITIATING",
            dialed_number=to_address, variables=self._variables(variables or {}), outbound=target is None)
        self._dial(dialog, actor, to_address, request_id)
        return dialog

    def _dial(self, dialog: Dialog, actor: Agent, to_address: str, request_id: str) -> None:
        """INITIATING -> INITIATED -> ALERTING at the far end (an agent or an outside number)."""
        dialog.participants.append(self._agent_party(actor, "INITIATING"))
        self._post_or_delete(dialog, actor, "POST", request_id)
        self._busy_state(actor, request_id)
        dialog.state = "INITIATED"
        self._party(dialog, actor).set_state("INITIATED", self.now())
        self._put(dialog, request_id)
        target = self.signed_in_extension(to_address)
        if target is not None:
            delay = self.config.internal_ring_seconds
            if delay > 0:
                self.start_timer(dialog.id, "ring", delay, self._ring_agent, dialog, target)
            else:
                self._ring_agent(dialog, target)
            return
        if self.find_agent(to_address) is not None:  # an agent's extension, but not signed in
            dialog.state = "FAILED"
            self._party(dialog, actor).set_state("FAILED", self.now(), "DEVICE_RESOURCE_NOT_AVAILABLE")
            self._put(dialog)
            return
        dialog.participants.append(self._outside_party(to_address, "ALERTING"))
        dialog.state = "ALERTING"
        self._put(dialog)
        if self.config.outbound_answer_seconds is not None:
            self.start_timer(dialog.id, "answer", self.config.outbound_answer_seconds, self._far_end_answer, dialog)

    def _ring_agent(self, dialog: Dialog, target: Agent) -> None:
        if dialog.state not in ("INITIATED",) or not target.signed_in:
            return
        dialog.state = "ALERTING"
        dialog.participants.append(self._agent_party(target, "ALERTING"))
        self._put(dialog)
        self._post_or_delete(dialog, target, "POST")
        self._busy_state(target)

    def _far_end_answer(self, dialog: Dialog) -> None:
        if dialog.state != "ALERTING":
            return
        for party in dialog.participants:
            if party.state in ("ALERTING", "INITIATED"):
                party.set_state("ACTIVE", self.now())
        dialog.state = "ACTIVE"
        self._put(dialog)
        self._sync_original(dialog)
        for agent in self._agents_of(dialog):
            self._busy_state(agent)

    def far_end_answer(self, dialog_id: str) -> Dialog:
        dialog = self._control_dialog(dialog_id)
        if dialog.state != "ALERTING" or not any(p.agent_id is None and p.state == "ALERTING"
                                                 for p in dialog.participants):
            raise ControlError(409, f"dialog {dialog_id} has no ringing outside party")
        self.cancel_timer(dialog.id, "answer")
        self._far_end_answer(dialog)
        return dialog

    def hangup(self, dialog_id: str) -> Dialog:
        """The customer (every outside party) hangs up."""
        dialog = self._control_dialog(dialog_id)
        outside = [p for p in dialog.participants if p.agent_id is None and p.state in CONNECTED]
        if not outside:
            raise ControlError(409, f"dialog {dialog_id} has no outside party on the call")
        if dialog.queued:
            dialog.queued = False
            dialog.state = "DROPPED"
            self.dialogs.pop(dialog.id, None)
            return dialog
        for party in outside:
            party.set_state("DROPPED", self.now())
        self._settle(dialog, "")
        return dialog

    def _control_dialog(self, dialog_id: str) -> Dialog:
        dialog = self.dialogs.get(dialog_id)
        if dialog is None:
            raise ControlError(404, f"no dialog {dialog_id}")
        return dialog

    # -- participant actions (REST) ------------------------------------------------------------

    def dialog_action(self, actor: Agent, dialog_id: str, fields: dict[str, Any], request_id: str = "") -> None:
        """PUT /finesse/api/Dialog/{id} with a requestedAction (docs/finesse.md 6.8)."""
        action = str(fields.get("requestedAction", "")).upper()
        if not action:
            raise FinesseError(400, "Parameter Missing", "requestedAction is required", "requestedAction")
        dialog, party = self.dialog_for(actor, dialog_id)
        target = fields.get("targetMediaAddress")
        if target and action != "UPDATE_CALL_DATA" and target != party.media_address:
            other = self.signed_in_extension(str(target))
            if other is not None and other is not actor:
                raise FinesseError(401, "Invalid Authorization User Specified", "Cannot act for another user", actor.id)
            raise FinesseError(400, "Invalid Destination", f"{target} is not on this dialog", str(target))
        if action == "START_RECORDING" and not self.uccx:
            raise FinesseError(501, "Not Implemented", "START_RECORDING is not supported on UCCE", action)
        if action == "SEND_DTMF" and party.state == "HELD":
            raise FinesseError(401, "Invalid State", "Cannot send DTMF while held", actor.id)
        handler = getattr(self, f"_do_{action.lower()}", None)
        if handler is None:
            raise FinesseError(400, "Invalid Input", f"Unknown requestedAction {action}", action)
        if action not in self.actions(dialog, party):
            # docs/finesse.md 6.8: a consult from an alerting or held call is a Generic Error.
            kind = "Generic Error" if action == "CONSULT_CALL" else "Invalid State"
            raise FinesseError(400, kind, f"{action} is not allowed in state {party.state}", action)
        handler(actor, dialog, party, fields, request_id)

    def _do_answer(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        now = self.now()
        party.set_state("ACTIVE", now)
        for other in dialog.participants:  # the caller's leg connects too
            if other.state in ("INITIATED", "INITIATING"):
                other.set_state("ACTIVE", now)
        dialog.state = "ACTIVE"
        self._put(dialog, rid)
        self._sync_original(dialog, rid, actor)
        for agent in self._agents_of(dialog):
            self._busy_state(agent, rid if agent is actor else "")

    def _do_hold(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        party.set_state("HELD", self.now())
        self._put(dialog, rid)
        self._sync_original(dialog, rid, actor)
        self._busy_state(actor, rid)

    def _do_retrieve(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        # Like a phone line: retrieving a held call holds the agent's active call first.
        others = [d for d in self.live_dialogs(actor) if d is not dialog and self._party(d, actor).state == "ACTIVE"]
        for other in others:
            self._party(other, actor).set_state("HELD", self.now())
        party.set_state("ACTIVE", self.now())
        for other in others:
            self._put(other, rid)
        self._put(dialog, rid)
        self._sync_original(dialog, rid, actor)
        self._busy_state(actor, rid)

    def _do_drop(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        self._drop_party(actor, dialog, party)
        self._settle(dialog, rid, (actor,))

    def _do_send_dtmf(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        digits = str(fields.get("actionParams", {}).get("dtmfString", ""))
        if not digits:
            raise FinesseError(400, "Parameter Missing", "dtmfString is required", "dtmfString")
        if not DTMF[self.uccx].match(digits):
            raise FinesseError(400, "Invalid Input", f"Invalid DTMF digits {digits}", "dtmfString")
        dialog.dtmf.append(digits)

    def _do_start_recording(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        dialog.recording = True
        self._put(dialog, rid)

    def _do_update_call_data(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        media = fields.get("mediaProperties") or {}
        variables = {str(k): str(v) for k, v in (media.get("callvariables") or {}).items()}
        self.check_variables(variables)
        wrap_up = media.get("wrapUpReason")
        if wrap_up is not None and len(str(wrap_up).encode()) > 40:
            raise FinesseError(400, "Invalid Input", "wrapUpReason is longer than 40 bytes", "wrapUpReason")
        changed = any(dialog.variables.get(k) != v for k, v in variables.items())
        dialog.variables.update(variables)
        if wrap_up is not None and wrap_up != dialog.wrap_up_reason:
            dialog.wrap_up_reason, changed = str(wrap_up), True
        if changed:
            self._put(dialog, rid)

    def _do_consult_call(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        to = str(fields.get("toAddress") or "")
        if not to:
            raise FinesseError(400, "Parameter Missing", "toAddress is required", "toAddress")
        if to == party.media_address:
            raise FinesseError(400, "Invalid Destination", "Cannot consult yourself", to)
        party.set_state("HELD", self.now())
        self._put(dialog, rid)
        target = self.signed_in_extension(to)
        consult = self._new_dialog(
            from_address=party.media_address, to_address=to, call_type="CONSULT", state="INITIATING",
            dialed_number=to, associated_dialog_id=dialog.id, variables=dict(dialog.variables),
            queue_name=dialog.queue_name, queue_number=dialog.queue_number, outbound=target is None)
        self._dial(consult, actor, to, rid)

    def _finish_consult(self, actor: Agent, original: Dialog, rid: str, conference: bool) -> None:
        consult = self._consult_of(original, actor)
        assert consult is not None  # the action list offers TRANSFER/CONFERENCE only with one
        now = self.now()
        joining = [p for p in consult.participants if p.agent_id != actor.id and p.state == "ACTIVE"]
        for p in consult.participants:
            p.set_state("DROPPED", now)
        consult.state = "DROPPED"
        self._put(consult, rid)
        for agent in self._agents_of(consult):
            self._post_or_delete(consult, agent, "DELETE", rid)
        self.dialogs.pop(consult.id, None)
        original.secondary_id = consult.id
        original.call_type = "CONFERENCE" if conference else "TRANSFER"
        for p in joining:
            original.participants.append(type(p)(p.media_address, p.media_address_type, "ACTIVE", now, now,
                                                 agent_id=p.agent_id))
        me = self._party(original, actor)
        if conference:
            me.set_state("ACTIVE", now)
        else:
            self._drop_party(actor, original, me)
        self._put(original, rid)
        for p in joining:
            if p.agent_id in self.agents:
                self._post_or_delete(original, self.agents[p.agent_id], "POST")
        if conference:
            self._busy_state(actor, rid)
        else:
            self._leave(actor, original, rid)

    def _do_transfer(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        self._finish_consult(actor, dialog, rid, conference=False)

    def _do_conference(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        self._finish_consult(actor, dialog, rid, conference=True)

    def _do_transfer_sst(self, actor: Agent, dialog: Dialog, party: Any, fields: dict[str, Any], rid: str) -> None:
        to = str(fields.get("toAddress") or "")
        if not to:
            raise FinesseError(400, "Parameter Missing", "toAddress is required", "toAddress")
        if to == party.media_address:
            raise FinesseError(400, "Invalid Destination", "Cannot transfer to yourself", to)
        target = self.signed_in_extension(to)
        if target is None and self.find_agent(to) is not None:
            self.publish_dialog_error(actor, dialog, "CF_RESOURCE_OUT_OF_SERVICE", "34", rid)
            return
        self._drop_party(actor, dialog, party)
        dialog.call_type = "TRANSFER"
        if target is not None:  # the call now rings at the target, as a new call would
            dialog.acd = dialog.acd or target.state == "READY"
            self._deliver(dialog, target)
        else:
            dialog.participants.append(self._outside_party(to, "ACTIVE"))
        self._put(dialog, rid, only=actor)
        self._leave(actor, dialog, rid)

    def publish_dialog_error(self, agent: Agent, dialog: Dialog, message: str, code: str, rid: str) -> None:
        from . import render
        node = f"/finesse/api/User/{agent.id}/Dialogs"
        payload = render.update(render.async_api_errors("Call Operation Failure", message, code), "PUT",
                                f"/finesse/api/Dialog/{dialog.id}", rid)
        self.notifier.publish(node, payload, (agent.id,))

    # -- the end of a call and wrap-up ----------------------------------------------------------

    def _settle(self, dialog: Dialog, rid: str, leaving: tuple[Agent, ...] = ()) -> None:
        """After a party left: end the call if fewer than two remain, else tell who is left.

        ``leaving`` are the agents whose participant just went DROPPED or WRAP_UP.
        """
        now = self.now()
        connected = dialog.connected()
        gone = list(leaving)
        if len(connected) < 2:
            for p in connected:
                if p.agent_id in self.agents:
                    agent = self.agents[p.agent_id]
                    self._drop_party(agent, dialog, p)
                    if dialog.id in agent.dialogs:
                        gone.append(agent)
                else:
                    p.set_state("DROPPED", now)
            dialog.state = "DROPPED"
            self.cancel_timer(dialog.id, "answer")
            self.cancel_timer(dialog.id, "ring")
        self._put(dialog, rid)
        for agent in gone:
            self._leave(agent, dialog, rid)
        if dialog.state == "DROPPED" and not self._agents_of(dialog):
            self.dialogs.pop(dialog.id, None)
        if dialog.associated_dialog_id:
            self._sync_original(dialog, rid, None)

    def _leave(self, agent: Agent, dialog: Dialog, rid: str) -> None:
        """An agent's part in a dialog is over: wrap up, or remove it and restore the state."""
        party = self._party(dialog, agent)
        remaining = [d for d in self.live_dialogs(agent) if d is not dialog]
        if party.state == "WRAP_UP" or self._wraps(agent, dialog, party):
            if party.state != "WRAP_UP":
                party.set_state("WRAP_UP", self.now())
                self._put(dialog, rid, only=agent)
            if agent.pending_state in ("READY", "NOT_READY"):
                # A state asked for during the call applies when wrap-up ends; UCCE wraps up
                # in WORK_READY before READY and in WORK before NOT_READY.
                agent.return_state = agent.pending_state
            state = agent.wrap_up_pending or (
                "WORK_READY" if agent.return_state == "READY" and not self.uccx else "WORK")
            agent.wrap_up_pending = agent.pending_state = ""
            self.set_state(agent, state, -1, rid)
            self.start_timer(agent.id, "wrap", self.config.wrap_up_seconds, self._wrap_up_timeout, agent)
            return
        self._post_or_delete(dialog, agent, "DELETE", rid)
        if dialog.state == "DROPPED" and not self._agents_of(dialog):
            self.dialogs.pop(dialog.id, None)
        if remaining:
            self._busy_state(agent, rid)
        else:
            self._after_calls(agent, rid)

    def _wraps(self, agent: Agent, dialog: Dialog, party: Any) -> bool:
        """Whether an agent leaving ``dialog`` goes into wrap-up (its participant WRAP_UP).

        Only after a call the agent answered, with no other call left, when the agent asked
        for WORK/WORK_READY during the call or wrap-up is REQUIRED for this kind of call.
        """
        if not party.answered or any(d is not dialog for d in self.live_dialogs(agent)):
            return False
        incoming = dialog.call_type not in ("AGENT_OUT", "AGENT_INSIDE") or dialog.from_address != party.media_address
        setting = agent.wrap_up_on_incoming if incoming else agent.wrap_up_on_outgoing
        return setting != "NOT_ALLOWED" and bool(
            agent.wrap_up_pending or (setting == "REQUIRED" and (dialog.acd or not incoming)))

    def _drop_party(self, agent: Agent, dialog: Dialog, party: Any) -> None:
        """An agent's participant leaves: WRAP_UP if it will wrap up, else DROPPED."""
        party.set_state("WRAP_UP" if self._wraps(agent, dialog, party) else "DROPPED", self.now())

    def _after_calls(self, agent: Agent, rid: str) -> None:
        if not agent.signed_in:
            return
        state, reason = agent.return_state or "NOT_READY", agent.return_reason
        if agent.pending_state in ("READY", "NOT_READY"):
            state, reason = agent.pending_state, agent.return_reason if agent.pending_state == "NOT_READY" else -1
        agent.pending_state = agent.return_state = agent.wrap_up_pending = ""
        if self.uccx and agent.state == state:
            return  # a non-ICD call on UCCX never changed the state
        self.set_state(agent, state, reason if state == "NOT_READY" else -1, rid)

    def _wrap_up_timeout(self, agent: Agent) -> None:
        if agent.state in ("WORK", "WORK_READY"):
            state = "READY" if agent.state == "WORK_READY" else "NOT_READY"
            reason = agent.return_reason if state == "NOT_READY" and agent.return_state == "NOT_READY" else -1
            self.end_wrap_up(agent, state, reason)

    def end_wrap_up(self, agent: Agent, state: str, reason: int, request_id: str = "") -> None:
        self.cancel_timer(agent.id, "wrap")
        for dialog_id in list(agent.dialogs):
            dialog = self.dialogs.get(dialog_id)
            if dialog is None:
                agent.dialogs.remove(dialog_id)
                continue
            party = self._party(dialog, agent)
            if party.state == "WRAP_UP":
                party.set_state("DROPPED", self.now())
                self._post_or_delete(dialog, agent, "DELETE", request_id)
                if dialog.state == "DROPPED" and not self._agents_of(dialog):
                    self.dialogs.pop(dialog.id, None)
        agent.pending_state = agent.return_state = ""
        self.set_state(agent, state, reason if state == "NOT_READY" else -1, request_id)

    # -- the console's view ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "deployment": self.config.deployment,
            "agents": [{"id": a.id, "loginName": a.login_name, "name": f"{a.first_name} {a.last_name}",
                        "extension": a.login_extension or a.extension, "state": a.state,
                        "reasonCodeId": a.reason_code_id, "pendingState": a.pending_state,
                        "teamId": a.team_id, "roles": list(a.roles), "presence": sorted(a.presence_nodes),
                        "dialogs": list(a.dialogs), "locked": a.locked_until > self.now()}
                       for a in self.agents.values()],
            "dialogs": [d.as_json() for d in self.dialogs.values()],
            "queues": [{"name": q.name, "number": q.number,
                        "waiting": [d for d in self.waiting if self.dialogs.get(d, None) is not None
                                    and self.dialogs[d].queue_name == q.name]} for q in self.queues.values()],
        }
