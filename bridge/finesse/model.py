"""Pure translation: Finesse XML in, our JSON model out; our requests in, Finesse XML out. No I/O.

Finesse's words (TALKING, ALERTING, TRANSFER_SST...) are mapped to ours in one function each.
Element names are matched case-insensitively (docs/finesse.md 9.5: ``user`` vs ``User``), and every
document goes through defusedxml with a size limit before anything else looks at it.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from defusedxml import ElementTree as SafeET

from ..times import iso, iso_at, parse

MAX_DOCUMENT_BYTES = 256 * 1024

AGENT_STATES = ("LOGOUT", "NOT_READY", "READY", "RESERVED", "TALKING", "HOLD", "WORK", "WORK_READY", "UNKNOWN")
SETTABLE_STATES = ("READY", "NOT_READY", "WORK", "WORK_READY")
DIALOG_STATES = ("INITIATING", "INITIATED", "ALERTING", "ACTIVE", "DROPPED", "FAILED", "ACCEPTED")
DIALOG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Finesse participant action -> our verbs (a call's ``actions``).
ACTION_VERBS: dict[str, tuple[str, ...]] = {
    "ANSWER": ("answer",), "HOLD": ("hold",), "RETRIEVE": ("retrieve",), "DROP": ("end",),
    "CONSULT_CALL": ("consult",), "TRANSFER": ("transfer",), "CONFERENCE": ("conference",),
    "TRANSFER_SST": ("blindTransfer",), "SEND_DTMF": ("sendDigits",),
    "UPDATE_CALL_DATA": ("updateVariables", "setWrapUp"), "START_RECORDING": ("startRecording",),
}
# Our verb -> Finesse requestedAction.
VERB_ACTIONS = {"answer": "ANSWER", "hold": "HOLD", "retrieve": "RETRIEVE", "end": "DROP",
                "consult": "CONSULT_CALL", "transfer": "TRANSFER", "conference": "CONFERENCE",
                "blindTransfer": "TRANSFER_SST", "sendDigits": "SEND_DTMF",
                "updateVariables": "UPDATE_CALL_DATA", "setWrapUp": "UPDATE_CALL_DATA",
                "startRecording": "START_RECORDING"}


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only hosts reached without TLS."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class XmlError(ValueError):
    """A document we refuse: too large, malformed, hostile (DTD, entities) or the wrong shape."""


# -- our model (bridge/protocol/openrpc.json) ------------------------------------------------------

@dataclass
class Agent:
    id: str
    firstName: str = ""
    lastName: str = ""
    extension: str = ""
    state: str = "UNKNOWN"
    reasonCode: dict[str, Any] | None = None  # {id, code, label, category}
    pendingState: str = ""
    stateSince: str = ""
    roles: list[str] = field(default_factory=list)
    teamId: str = ""
    teamName: str = ""
    loginName: str = ""

    def to_json(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: this runs for every event on the XMPP loop, and asdict's
        # recursive deep copy cost more than the rest of the event's handling (docs/performance.md).
        return {"id": self.id, "firstName": self.firstName, "lastName": self.lastName, "extension": self.extension,
                "state": self.state, "reasonCode": None if self.reasonCode is None else dict(self.reasonCode),
                "pendingState": self.pendingState, "stateSince": self.stateSince, "roles": list(self.roles),
                "teamId": self.teamId, "teamName": self.teamName, "loginName": self.loginName}


@dataclass
class Participant:
    address: str
    type: str  # agent | external
    state: str  # Finesse participant state, lower case (alerting, active, held, dropped, ...)
    actions: list[str] = field(default_factory=list)  # Finesse's, kept for our own mapping
    startedAt: str = ""
    stateSince: str = ""
    cause: str = ""

    def to_json(self) -> dict[str, Any]:
        """Without ``actions`` (Finesse's words; the call's ``actions`` are ours)."""
        return {"address": self.address, "type": self.type, "state": self.state, "startedAt": self.startedAt,
                "stateSince": self.stateSince, "cause": self.cause}


@dataclass
class Call:
    id: str
    direction: str = "inbound"  # inbound | outbound | internal
    state: str = "ringing"  # ringing | dialing | active | held | wrapup | ended | failed
    dialogState: str = ""
    from_: str = ""
    to: str = ""
    ani: str = ""
    dnis: str = ""
    callType: str = ""
    queue: dict[str, str] = field(default_factory=dict)  # {name, number}
    variables: dict[str, str] = field(default_factory=dict)
    participants: list[Participant] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # our verbs, for the signed-in agent
    startedAt: str = ""
    answeredAt: str = ""
    endedAt: str = ""
    associatedCallId: str = ""
    secondaryId: str = ""
    wrapUpReason: str = ""

    def to_json(self) -> dict[str, Any]:
        # By hand (see Agent.to_json); "from" last, where the asdict version put it.
        return {"id": self.id, "direction": self.direction, "state": self.state, "dialogState": self.dialogState,
                "to": self.to, "ani": self.ani, "dnis": self.dnis, "callType": self.callType,
                "queue": dict(self.queue), "variables": dict(self.variables),
                "participants": [p.to_json() for p in self.participants], "actions": list(self.actions),
                "startedAt": self.startedAt, "answeredAt": self.answeredAt, "endedAt": self.endedAt,
                "associatedCallId": self.associatedCallId, "secondaryId": self.secondaryId,
                "wrapUpReason": self.wrapUpReason, "from": self.from_}


@dataclass
class SystemInfo:
    status: str
    deploymentType: str
    xmppDomain: str
    pubsubDomain: str
    primaryHost: str = ""
    secondaryHost: str = ""
    currentTimestamp: str = ""


@dataclass
class ReasonCode:
    id: str
    code: str
    label: str
    category: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "label": self.label}


@dataclass
class ApiError:
    errorType: str
    message: str
    data: str = ""


@dataclass
class Update:
    """A notification's ``<Update>``: what changed, how, and the parsed object (or errors)."""

    event: str  # POST | PUT | DELETE
    source: str
    requestId: str
    kind: str  # user | dialog | dialogs | systeminfo | apierrors | team | other | empty
    user: Agent | None = None
    dialogs: list[Element] = field(default_factory=list)  # Dialog elements, for parse_call
    system: SystemInfo | None = None
    errors: list[ApiError] = field(default_factory=list)


# -- parsing helpers ------------------------------------------------------------------------------

def parse_document(text: str | bytes) -> Element:
    """Parse untrusted XML: size limit first, then defusedxml (no DTD, no entities)."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_DOCUMENT_BYTES:
        raise XmlError(f"document of {size} bytes exceeds {MAX_DOCUMENT_BYTES}")
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except Exception as exc:  # ParseError and defusedxml's refusals alike
        raise XmlError(f"refused XML: {type(exc).__name__}: {exc}") from exc
    # Every tag becomes its local name in lower case, once, so that the lookups below are the
    # parser's own (C) find instead of a scan comparing names (docs/performance.md).
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = _local(element.tag)
    return root


_LOCAL_NAMES: dict[str, str] = {}  # tag -> local name in lower case; bounded (tags come from outside)


def _local(tag: str) -> str:
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = tag.rsplit("}", 1)[-1].lower()
        if len(_LOCAL_NAMES) < 4096:
            _LOCAL_NAMES[tag] = name
    return name


def _normalised(element: Element) -> bool:
    """True for the trees of ``parse_document``: tags already local names in lower case."""
    tag = element.tag
    return isinstance(tag, str) and tag == _local(tag)


def child(parent: Element | None, name: str) -> Element | None:
    """A direct child by name, case-insensitively."""
    if parent is None:
        return None
    name = name.lower()
    if _normalised(parent):
        return parent.find(name)
    for item in parent:
        if _local(item.tag) == name:
            return item
    return None


def text(parent: Element | None, *path: str) -> str:
    node = parent
    for name in path:
        node = child(node, name)
    return (node.text or "").strip() if node is not None else ""


def children(parent: Element | None, name: str) -> list[Element]:
    if parent is None:
        return []
    name = name.lower()
    if _normalised(parent):
        return parent.findall(name)
    return [item for item in parent if _local(item.tag) == name]


def normalise_time(value: str) -> str:
    """Finesse timestamps (ISO 8601, or epoch milliseconds in some releases) to ISO 8601 UTC.

    Anything else becomes "" rather than reaching a client.
    """
    if not value:
        return ""
    try:
        return iso_at(int(value) / 1000) if value.isdigit() else iso(parse(value))
    except (ValueError, OverflowError, OSError):
        return ""


# -- documents ------------------------------------------------------------------------------------

def agent_state(value: str) -> str:
    """Finesse user state -> ours (the reserved variants fold into RESERVED)."""
    value = value.upper()
    if value.startswith("RESERVED"):
        return "RESERVED"
    return value if value in AGENT_STATES else "UNKNOWN"


def parse_user(doc: Element) -> Agent:
    reason = child(doc, "ReasonCode")
    reason_id = text(doc, "reasonCodeId")
    reason_json = None
    if reason is not None or (reason_id and reason_id != "-1"):
        uri = text(reason, "uri")
        reason_json = {"id": uri.rsplit("/", 1)[-1] if uri else reason_id, "code": text(reason, "code"),
                       "label": text(reason, "label"), "category": text(reason, "category")}
    return Agent(
        id=text(doc, "loginId"), loginName=text(doc, "loginName"), firstName=text(doc, "firstName"),
        lastName=text(doc, "lastName"), extension=text(doc, "extension"),
        state=agent_state(text(doc, "state")), reasonCode=reason_json,
        pendingState=text(doc, "pendingState").upper(),
        stateSince=normalise_time(text(doc, "stateChangeTime")),
        roles=[(r.text or "").strip() for r in children(child(doc, "roles"), "role")],
        teamId=text(doc, "teamId"), teamName=text(doc, "teamName"))


def parse_system_info(doc: Element) -> SystemInfo:
    return SystemInfo(
        status=text(doc, "status").upper(), deploymentType=text(doc, "deploymentType").upper(),
        xmppDomain=text(doc, "xmppDomain"), pubsubDomain=text(doc, "xmppPubSubDomain"),
        primaryHost=text(doc, "primaryNode", "host"), secondaryHost=text(doc, "secondaryNode", "host"),
        currentTimestamp=text(doc, "currentTimestamp"))


def parse_reason_codes(doc: Element) -> list[ReasonCode]:
    out = []
    for item in children(doc, "ReasonCode"):
        uri = text(item, "uri")
        out.append(ReasonCode(id=uri.rsplit("/", 1)[-1], code=text(item, "code"), label=text(item, "label"),
                              category=text(item, "category") or doc.get("category", "")))
    return out


def parse_wrap_up_reasons(doc: Element) -> list[dict[str, str]]:
    return [{"id": text(item, "uri").rsplit("/", 1)[-1], "label": text(item, "label")}
            for item in children(doc, "WrapUpReason")]


def parse_api_errors(doc: Element) -> list[ApiError]:
    """``<ApiErrors><ApiError>`` (sync) or ``<apiErrors><apiError>`` (async), any casing."""
    return [ApiError(errorType=text(item, "errorType"), message=text(item, "errorMessage"),
                     data=text(item, "errorData")) for item in children(doc, "apiError")]


def call_state(party_state: str, dialog_state: str) -> str:
    """Our call state from the agent's own participant (and the dialog)."""
    party_state, dialog_state = party_state.upper(), dialog_state.upper()
    if party_state == "ALERTING":
        return "ringing"
    if party_state in ("INITIATING", "INITIATED"):
        return "dialing"
    if party_state == "ACTIVE":
        return "dialing" if dialog_state in ("INITIATING", "INITIATED", "ALERTING") else "active"
    if party_state == "HELD":
        return "held"
    if party_state == "WRAP_UP":
        return "wrapup"
    if party_state == "FAILED" or dialog_state == "FAILED":
        return "failed"
    return "ended"


def verbs(actions: Iterable[str]) -> list[str]:
    out: list[str] = []
    for action in actions:
        for verb in ACTION_VERBS.get(action.upper(), ()):
            if verb not in out:
                out.append(verb)
    return out


def parse_call(doc: Element, extension: str) -> Call:
    """A Dialog seen by the agent signed in on ``extension``."""
    media = child(doc, "mediaProperties")
    participants = []
    mine: Participant | None = None
    for item in children(child(doc, "participants"), "Participant"):
        party = Participant(
            address=text(item, "mediaAddress"),
            type="agent" if text(item, "mediaAddressType").upper() == "AGENT_DEVICE" else "external",
            state=text(item, "state").lower(),
            actions=[(a.text or "").strip().upper() for a in children(child(item, "actions"), "action")],
            startedAt=normalise_time(text(item, "startTime")),
            stateSince=normalise_time(text(item, "stateChangeTime")), cause=text(item, "stateCause"))
        participants.append(party)
        if party.address == extension and mine is None:
            mine = party
    dialog_state = text(doc, "state").upper()
    if dialog_state not in DIALOG_STATES:
        raise XmlError(f"Dialog with an unknown state {dialog_state[:20]!r}")
    dialog_id = text(doc, "id") or text(doc, "uri").rsplit("/", 1)[-1]
    if not DIALOG_ID.match(dialog_id):
        raise XmlError("Dialog without a usable id")
    from_address, to_address = text(doc, "fromAddress"), text(doc, "toAddress")
    call_type = text(media, "callType").upper()
    if from_address == extension:
        direction = "internal" if call_type in ("AGENT_INSIDE", "CONSULT") else "outbound"
    else:
        direction = "inbound"
    variables = {}
    for cv in children(child(media, "callvariables"), "CallVariable"):
        value = child(cv, "value")
        if text(cv, "name"):
            variables[text(cv, "name")] = (value.text or "") if value is not None else ""
    starts = sorted(p.startedAt for p in participants if p.startedAt)
    assoc = text(doc, "associatedDialogUri")
    return Call(
        id=dialog_id, direction=direction,
        state=call_state(mine.state if mine else "DROPPED", dialog_state), dialogState=dialog_state,
        from_=from_address, to=to_address, ani=from_address if direction == "inbound" else "",
        dnis=text(media, "DNIS"), callType=call_type,
        queue={"name": text(media, "queueName"), "number": text(media, "queueNumber")},
        variables=variables, participants=participants, actions=verbs(mine.actions if mine else []),
        startedAt=starts[0] if starts else "", associatedCallId=assoc.rsplit("/", 1)[-1] if assoc else "",
        secondaryId=text(doc, "secondaryId"), wrapUpReason=text(media, "wrapUpReason"))


def parse_update(payload: str) -> Update:
    """A notification's escaped ``<Update>`` text (already un-escaped by the XMPP parser)."""
    doc = parse_document(payload)
    if _local(doc.tag) != "update":
        raise XmlError(f"expected <Update>, got <{doc.tag}>")
    update = Update(event=text(doc, "event").upper(), source=text(doc, "source"),
                    requestId=text(doc, "requestId"), kind="empty")
    data = child(doc, "data")
    body = data[0] if data is not None and len(data) else None
    if body is None:
        return update
    kind = _local(body.tag)
    if kind == "user":
        update.kind, update.user = "user", parse_user(body)
    elif kind == "dialog":
        update.kind, update.dialogs = "dialog", [body]
    elif kind == "dialogs":
        update.kind, update.dialogs = "dialogs", children(body, "Dialog")
    elif kind == "systeminfo":
        update.kind, update.system = "systeminfo", parse_system_info(body)
    elif kind == "apierrors":
        update.kind, update.errors = "apierrors", parse_api_errors(body)
    else:
        update.kind = "other"
    return update


# -- request bodies -------------------------------------------------------------------------------

def _el(tag: str, value: str) -> str:
    return f"<{tag}>{escape(value)}</{tag}>"


def _variables_xml(variables: dict[str, str]) -> str:
    return "<callvariables>" + "".join(
        f"<CallVariable>{_el('name', k)}{_el('value', v)}</CallVariable>" for k, v in variables.items()
    ) + "</callvariables>"


def user_state_body(state: str, reason_code_id: str | None = None, extension: str | None = None) -> str:
    parts = [_el("state", state)]
    if extension is not None:
        parts.append(_el("extension", extension))
    if reason_code_id not in (None, ""):
        parts.append(_el("reasonCodeId", str(reason_code_id)))
    return "<User>" + "".join(parts) + "</User>"


def make_call_body(from_address: str, to_address: str, variables: dict[str, str] | None = None) -> str:
    media = f"<mediaProperties>{_variables_xml(variables)}</mediaProperties>" if variables else ""
    return ("<Dialog>" + _el("requestedAction", "MAKE_CALL") + _el("fromAddress", from_address)
            + _el("toAddress", to_address) + media + "</Dialog>")


def dialog_action_body(action: str, extension: str, to_address: str | None = None,
                       digits: str | None = None, variables: dict[str, str] | None = None,
                       wrap_up_reason: str | None = None) -> str:
    parts = [_el("requestedAction", action)]
    if action != "UPDATE_CALL_DATA":
        parts.append(_el("targetMediaAddress", extension))
    if to_address is not None:
        parts.append(_el("toAddress", to_address))
    if digits is not None:
        parts.append("<actionParams><ActionParam>" + _el("name", "dtmfString") + _el("value", digits)
                     + "</ActionParam></actionParams>")
    if variables is not None or wrap_up_reason is not None:
        inner = (_el("wrapUpReason", wrap_up_reason) if wrap_up_reason is not None else "") + (
            _variables_xml(variables) if variables else "")
        parts.append(f"<mediaProperties>{inner}</mediaProperties>")
    return "<Dialog>" + "".join(parts) + "</Dialog>"
