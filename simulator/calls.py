"""Finesse's call side: dialogs, participant actions, queues and the simulated far end.

Sequences follow docs/finesse.md 6 and 9.6: a new call is a Dialogs POST, each change a Dialog PUT,
the end a PUT with DROPPED participants then a Dialogs DELETE, with the User updates
(RESERVED, TALKING, HOLD, READY, WORK...) after the dialog change that caused them.
"""
from __future__ import annotations

import itertools
import re
from collections import deque

from . import render
from .agents import BUSY_STATES, MAKE_CALL_WHILE_READY_REASON, Finesse, FinesseError
from .model import AGENT_DEVICE, Agent, Dialog, Participant

CONNECTED = ("ACTIVE", "HELD", "ALERTING", "INITIATING", "INITIATED")
DTMF = {False: re.compile(r"^[0-9*#A-D]+$"), True: re.compile(r"^[0-9*#]+$")}
VARIABLE = re.compile(r"^(callVariable([1-9]|10)|user\.[A-Za-z0-9_.\[\]]+)$")


class ControlError(Exception):
    """A control-API request the simulator cannot carry out (HTTP status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CallCenter(Finesse):
    """Dialogs and their participants, on top of the agents of ``Finesse``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._ids = itertools.count(16777217)
        self.waiting: deque[str] = deque()  # queued dialog ids, oldest first
        self.queues = {q.name: q for q in self.config.queues}

    # -- helpers ------------------------------------------------------------------------------

    def dialog_for(self, actor: Agent, dialog_id: str) -> tuple[Dialog, Participant]:
        dialog = self.dialogs.get(dialog_id)
        if dialog is None or dialog.queued:
            raise FinesseError(404, "Dialog Not Found", f"Dialog {dialog_id} not found", dialog_id)
        party = next((p for p in dialog.participants if p.agent_id == actor.id), None)
        if party is None:
            raise FinesseError(401, "Invalid Authorization User Specified",
                               "Not a participant of this dialog", actor.id)
        return dialog, party

    def live_dialogs(self, agent: Agent) -> list[Dialog]:
        out = []
        for dialog_id in agent.dialogs:
            dialog = self.dialogs.get(dialog_id)
            party = dialog and next((p for p in dialog.participants if p.agent_id == agent.id), None)
            if dialog and party and party.state in CONNECTED:
                out.append(dialog)
        return out

    def actions(self, dialog: Dialog, party: Participant) -> list[str]:
        """What a participant may do now (docs/finesse.md 6.5); the simulator enforces exactly this."""
        if party.agent_id is None:
            return []
        state = party.state
        if state == "ALERTING":
            return ["ANSWER"]
        if state in ("INITIATING", "INITIATED"):
            return ["DROP", "UPDATE_CALL_DATA"]
        if state == "FAILED":
            return ["DROP"]
        if state == "WRAP_UP":
            return ["UPDATE_CALL_DATA"]
        agent = self.agents[party.agent_id]
        others = [d for d in self.live_dialogs(agent) if d is not dialog]
        if state == "ACTIVE":
            acts = ["HOLD", "DROP", "UPDATE_CALL_DATA", "SEND_DTMF"]
            if not others and dialog.state == "ACTIVE":
                acts += ["CONSULT_CALL", "TRANSFER_SST"]
            if self.uccx:
                acts.append("START_RECORDING")
            return acts
        if state == "HELD":
            # RETRIEVE is offered even beside an active call: retrieving holds that call first,
            # as a phone line does (docs/finesse.md 6.5 lists RETRIEVE for every HELD participant).
            acts = ["RETRIEVE", "DROP", "UPDATE_CALL_DATA"]
            if self._consult_of(dialog, agent) is not None:
                acts += ["TRANSFER", "CONFERENCE"]
            return acts
        return []

    def _party(self, dialog: Dialog, agent: Agent) -> Participant:
        return next(p for p in dialog.participants if p.agent_id == agent.id)

    def _consult_of(self, original: Dialog, agent: Agent) -> Dialog | None:
        """The active consult call an agent placed from ``original``, if any."""
        for dialog in self.live_dialogs(agent):
            if dialog.associated_dialog_id == original.id and dialog.state == "ACTIVE" \
                    and self._party(dialog, agent).state == "ACTIVE":
                return dialog
        return None

    def dialog_xml(self, dialog: Dialog, tag: str = "Dialog") -> str:
        actions = {p.media_address: self.actions(dialog, p) for p in dialog.participants}
        return render.dialog(dialog, actions, self.uccx, tag)

    def dialogs_xml(self, agent: Agent) -> str:
        body = "".join(self.dialog_xml(self.dialogs[d]) for d in agent.dialogs if d in self.dialogs)
        return f"<Dialogs>{body}</Dialogs>"

    def _agents_of(self, dialog: Dialog) -> list[Agent]:
        """Agents that hold this dialog in their collection."""
        return [a for a in (self.agents[p.agent_id] for p in dialog.agent_participants()
                            if p.agent_id in self.agents) if dialog.id in a.dialogs]

    def _put(self, dialog: Dialog, request_id: str = "", only: Agent | None = None) -> None:
        payload = render.update(self.dialog_xml(dialog, "dialog"), "PUT",
                                f"/finesse/api/Dialog/{dialog.id}", request_id)
        for agent in ([only] if only else self._agents_of(dialog)):
            self._note_actions(dialog, agent)
            self.notifier.publish(f"/finesse/api/User/{agent.id}/Dialogs", payload, (agent.id,))

    def _note_actions(self, dialog: Dialog, agent: Agent) -> None:
        party = next((p for p in dialog.participants if p.agent_id == agent.id), None)
        if party is not None:
            dialog.notified[agent.id] = tuple(self.actions(dialog, party))

    def _sync_original(self, consult: Dialog, rid: str = "", actor: Agent | None = None) -> None:
        """Re-send the original dialog of a consult to agents whose actions on it changed.

        A consult becoming ACTIVE offers TRANSFER/CONFERENCE on the held original; it ending
        withdraws them. The participant's ``actions`` in the latest notification are what a
        client may do (docs/finesse.md 6.5), so the original is PUT again to those agents.
        """
        original = self.dialogs.get(consult.associated_dialog_id)
        if original is None:
            return
        for agent in self._agents_of(original):
            party = self._party(original, agent)
            if party.state in CONNECTED and \
                    tuple(self.actions(original, party)) != original.notified.get(agent.id):
                self._put(original, rid if agent is actor else "", only=agent)

    def _post_or_delete(self, dialog: Dialog, agent: Agent, event: str, request_id: str = "") -> None:
        if event == "POST":
            if not agent.dialogs and not agent.return_state:
                agent.return_state = agent.state if agent.state in ("READY", "NOT_READY") else "NOT_READY"
                agent.return_reason = agent.reason_code_id
            agent.dialogs.append(dialog.id)
            self._note_actions(dialog, agent)
        elif dialog.id in agent.dialogs:
            agent.dialogs.remove(dialog.id)
            dialog.notified.pop(agent.id, None)
        node = f"/finesse/api/User/{agent.id}/Dialogs"
        payload = render.update(f"<dialogs>{self.dialog_xml(dialog)}</dialogs>", event, node, request_id)
        self.notifier.publish(node, payload, (agent.id,))

    def _busy_state(self, agent: Agent, request_id: str = "") -> None:
        """Derive RESERVED / TALKING / HOLD from the agent's dialogs (docs/finesse.md 5.5)."""
        if agent.state in ("WORK", "WORK_READY", "LOGOUT"):
            return
        target = None
        for dialog in self.live_dialogs(agent):
            counts = dialog.acd or not self.uccx  # UCCX: non-ICD calls leave the state alone
            state = self._party(dialog, agent).state
            if state in ("ACTIVE", "INITIATING", "INITIATED") and counts:
                target = "TALKING"
            elif state == "HELD" and counts and target != "TALKING":
                target = "TALKING" if self.uccx else "HOLD"
            elif state == "ALERTING" and dialog.acd and target is None:
                target = "RESERVED"
        if target and target != agent.state:
            self.set_state(agent, target, -1, request_id)

    def set_next_dialog_id(self, value: int) -> None:
        """The id the next dialog gets, counting on from there: Finesse's dialog ids are CTI call ids,
        which start again when the CTI server or peripheral restarts and wrap over time."""
        if not 1 <= value <= 2**31 - 1:
            raise ControlError(400, "next: must be a whole number from 1 to 2147483647")
        self._ids = itertools.count(value)

    def _new_dialog(self, **fields: object) -> Dialog:
        dialog_id = str(next(self._ids))
        while dialog_id in self.dialogs:  # a live call keeps its id: a reused id is a free one
            dialog_id = str(next(self._ids))
        dialog = Dialog(id=dialog_id, created=self.now(), **fields)  # type: ignore[arg-type]
        if not self.uccx:
            dialog.call_key = (str(int(dialog_id) % 100000), "1", "153021")
        self.dialogs[dialog_id] = dialog
        return dialog

    def _agent_party(self, agent: Agent, state: str) -> Participant:
        now = self.now()
        return Participant(agent.login_extension, AGENT_DEVICE, state, now, now, agent_id=agent.id)

    def _outside_party(self, number: str, state: str) -> Participant:
        now = self.now()
        return Participant(number, "", state, now, now)

    @staticmethod
    def check_variables(variables: dict[str, str]) -> None:
        total = 0
        for name, value in variables.items():
            if not VARIABLE.match(name):
                raise FinesseError(400, "Invalid Input", f"Invalid call variable name {name}", name)
            if name.startswith("callVariable") and len(value.encode()) > 40:
                raise FinesseError(400, "Invalid Input", f"{name} is longer than 40 bytes", name)
            if name.startswith("user."):
                total += len(name) + len(value.encode())
        if total > 2000:
            raise FinesseError(400, "Maximum Exceeded", "ECC variables exceed 2000 bytes", "callvariables")

    def _variables(self, given: dict[str, str]) -> dict[str, str]:
        variables = {f"callVariable{n}": "" for n in range(1, 11)}
        variables.update(given)
        return variables
