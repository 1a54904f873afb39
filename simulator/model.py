"""The simulator's own objects: agents, dialogs and participants (plain data, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Finesse participant states (docs/finesse.md 6.5) and the actions each allows.
AGENT_DEVICE = "AGENT_DEVICE"


@dataclass
class Agent:
    id: str
    login_name: str
    first_name: str
    last_name: str
    extension: str
    team_id: str
    team_name: str
    roles: tuple[str, ...]
    password: str
    wrap_up_on_incoming: str
    wrap_up_on_outgoing: str
    state: str = "LOGOUT"
    state_change_time: float = 0.0
    pending_state: str = ""
    reason_code_id: int = -1
    login_extension: str = ""
    ready_since: float = 0.0  # for longest-ready routing
    # What the agent returns to when its last call ends (set when the first call starts).
    return_state: str = ""
    return_reason: int = -1
    wrap_up_pending: str = ""  # WORK or WORK_READY once a call ends
    failed_logins: int = 0
    locked_until: float = 0.0
    presence_nodes: set[str] = field(default_factory=set)
    presence_lost_at: float | None = None
    dialogs: list[str] = field(default_factory=list)  # dialog ids in the agent's collection

    @property
    def signed_in(self) -> bool:
        return self.state != "LOGOUT"

    @property
    def is_supervisor(self) -> bool:
        return "Supervisor" in self.roles


@dataclass
class Participant:
    media_address: str
    media_address_type: str  # AGENT_DEVICE for agents, "" for outside parties
    state: str
    start_time: float
    state_change_time: float
    state_cause: str = ""
    agent_id: str | None = None
    answered: bool = False  # was ever ACTIVE: only an answered call leads to wrap-up

    def __post_init__(self) -> None:
        self.answered = self.answered or self.state == "ACTIVE"

    def set_state(self, state: str, now: float, cause: str = "") -> None:
        self.state = state
        self.state_change_time = now
        self.state_cause = cause
        if state == "ACTIVE":
            self.answered = True


@dataclass
class Dialog:
    id: str
    from_address: str
    to_address: str
    call_type: str
    state: str
    created: float
    dnis: str = ""
    dialed_number: str = ""
    queue_number: str = ""
    queue_name: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    wrap_up_reason: str = ""
    participants: list[Participant] = field(default_factory=list)
    associated_dialog_id: str = ""
    secondary_id: str = ""
    media_id: str = "1"
    call_key: tuple[str, str, str] = ("", "", "")  # callKeyCallId, SequenceNum, Prefix (UCCE)
    acd: bool = False  # routed call: the agent goes RESERVED/TALKING (UCCX: ICD call)
    recording: bool = False
    dtmf: list[str] = field(default_factory=list)
    queued: bool = False  # waiting in a queue for a READY agent
    outbound: bool = False  # the far end is an outside number
    # The actions each agent (by id) was last told about, to re-notify when they change.
    notified: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def participant(self, media_address: str) -> Participant | None:
        for party in self.participants:
            if party.media_address == media_address:
                return party
        return None

    def agent_participants(self) -> list[Participant]:
        return [p for p in self.participants if p.agent_id is not None]

    def connected(self) -> list[Participant]:
        """Participants still on the call (not dropped, failed or wrapping up)."""
        return [p for p in self.participants if p.state in ("ACTIVE", "HELD", "ALERTING", "INITIATING", "INITIATED")]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state, "from": self.from_address, "to": self.to_address,
            "callType": self.call_type, "dnis": self.dnis, "queue": self.queue_name,
            "variables": dict(self.variables), "wrapUpReason": self.wrap_up_reason,
            "associatedDialogId": self.associated_dialog_id, "secondaryId": self.secondary_id,
            "recording": self.recording, "dtmf": list(self.dtmf), "queued": self.queued,
            "participants": [{"mediaAddress": p.media_address, "state": p.state,
                              "stateCause": p.state_cause, "agentId": p.agent_id}
                             for p in self.participants],
        }
