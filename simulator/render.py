"""Finesse XML documents, with Finesse's element names and casing (docs/finesse.md 4 to 9).

Strings are built directly (with escaping) rather than through an element tree: every
notification goes through here, so this is the simulator's hot path.
"""
from __future__ import annotations

import time
from typing import Iterable
from xml.sax.saxutils import escape

from .model import Agent, Dialog, Participant

API = "/finesse/api"


def iso(ts: float) -> str:
    """Finesse's timestamp format: 2024-05-02T10:11:12.345Z."""
    if not ts:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def el(tag: str, text: object = "") -> str:
    value = escape(str(text)) if text != "" and text is not None else ""
    return f"<{tag}>{value}</{tag}>" if value else f"<{tag}/>"


def reason_code(rc_id: int, category: str, code: int, label: str, for_all: bool = True) -> str:
    return (f"<ReasonCode>{el('category', category)}{el('uri', f'{API}/ReasonCode/{rc_id}')}"
            f"{el('code', code)}{el('label', label)}{el('forAll', 'true' if for_all else 'false')}</ReasonCode>")


def user(agent: Agent, reason: tuple[int, str, int, str] | None, tag: str = "User") -> str:
    """A User object; ``tag`` is ``user`` inside notifications (docs/finesse.md 9.5)."""
    roles = "".join(el("role", r) for r in agent.roles)
    parts = [
        el("uri", f"{API}/User/{agent.id}"), el("loginId", agent.id), el("loginName", agent.login_name),
        el("firstName", agent.first_name), el("lastName", agent.last_name),
        el("extension", agent.login_extension or agent.extension),
        el("dialogs", f"{API}/User/{agent.id}/Dialogs"),
        f"<roles>{roles}</roles>", el("state", agent.state),
        el("stateChangeTime", iso(agent.state_change_time)), el("pendingState", agent.pending_state),
        el("reasonCodeId", agent.reason_code_id),
    ]
    if reason is not None:
        parts.append(reason_code(reason[0], reason[1], reason[2], reason[3]))
    parts.append(f"<settings>{el('wrapUpOnIncoming', agent.wrap_up_on_incoming)}"
                 f"{el('wrapUpOnOutgoing', agent.wrap_up_on_outgoing)}</settings>")
    parts.append(el("teamId", agent.team_id))
    parts.append(el("teamName", agent.team_name))
    return f"<{tag}>{''.join(parts)}</{tag}>"


def participant(party: Participant, actions: Iterable[str]) -> str:
    acts = "".join(el("action", a) for a in actions)
    return ("<Participant>" f"<actions>{acts}</actions>" + el("mediaAddress", party.media_address)
            + el("mediaAddressType", party.media_address_type) + el("startTime", iso(party.start_time))
            + el("state", party.state) + el("stateCause", party.state_cause)
            + el("stateChangeTime", iso(party.state_change_time)) + "</Participant>")


def dialog(d: Dialog, actions_for: dict[str, list[str]], uccx: bool, tag: str = "Dialog") -> str:
    """A Dialog; ``actions_for`` maps a participant's mediaAddress to its allowed actions."""
    variables = "".join(f"<CallVariable>{el('name', k)}{el('value', v)}</CallVariable>"
                        for k, v in d.variables.items())
    media = [el("mediaId", d.media_id), el("dialedNumber", d.dialed_number), el("callType", d.call_type),
             el("DNIS", d.dnis), el("queueNumber", d.queue_number), el("queueName", d.queue_name)]
    if not uccx:
        media += [el("callKeyCallId", d.call_key[0]), el("callKeySequenceNum", d.call_key[1]),
                  el("callKeyPrefix", d.call_key[2])]
    media.append(el("wrapUpReason", d.wrap_up_reason))
    if uccx:
        items = el("wrapUpItem", d.wrap_up_reason) if d.wrap_up_reason else ""
        media.append(f"<wrapUpItems>{items}</wrapUpItems>")
    media.append(f"<callvariables>{variables}</callvariables>")
    assoc = f"{API}/Dialog/{d.associated_dialog_id}" if d.associated_dialog_id else ""
    parts = "".join(participant(p, actions_for.get(p.media_address, [])) for p in d.participants)
    return (f"<{tag}>" + el("uri", f"{API}/Dialog/{d.id}") + el("id", d.id)
            + el("associatedDialogUri", assoc) + el("secondaryId", d.secondary_id)
            + el("mediaType", "Voice") + el("state", d.state) + el("fromAddress", d.from_address)
            + el("toAddress", d.to_address) + el("callbackNumber", "")
            + f"<mediaProperties>{''.join(media)}</mediaProperties>"
            + f"<participants>{parts}</participants></{tag}>")


def update(data: str, event: str, source: str, request_id: str = "") -> str:
    """The ``<Update>`` envelope of every notification (docs/finesse.md 9.5)."""
    return (f"<Update><data>{data}</data>{el('event', event)}{el('requestId', request_id)}"
            f"{el('source', source)}</Update>")


def api_errors(error_type: str, message: str, data: str = "") -> str:
    """Synchronous errors: capitalised element names (docs/finesse.md 8.1)."""
    return (f"<ApiErrors><ApiError>{el('ErrorData', data)}{el('ErrorMessage', message)}"
            f"{el('ErrorType', error_type)}</ApiError></ApiErrors>")


def async_api_errors(error_type: str, message: str, data: str) -> str:
    """Asynchronous (CTI) errors inside an Update: lower-case names (docs/finesse.md 8.2)."""
    return (f"<apiErrors><apiError>{el('errorData', data)}{el('errorMessage', message)}"
            f"{el('errorType', error_type)}</apiError></apiErrors>")


def system_info(*, status: str, deployment: str, xmpp_domain: str, pubsub_domain: str,
                primary: tuple[str, int, int], secondary: tuple[str, int, int] | None,
                now: float, timezone_offset: int) -> str:
    def node(tag: str, host: str, rest: int, xmpp: int) -> str:
        return (f"<{tag}>{el('host', host)}{el('httpsPort', rest)}{el('xmppPort', xmpp)}"
                f"{el('xmppSecurePort', xmpp)}</{tag}>")
    second = node("secondaryNode", *secondary) if secondary else ""
    return ("<SystemInfo>" + el("currentTimestamp", iso(now)) + el("deploymentType", deployment)
            + el("lastCTIHeartbeatStatus", "success" if status == "IN_SERVICE" else "failure")
            + el("ctiHeartbeatInterval", 5) + el("peripheralId", 5000)
            + node("primaryNode", *primary) + second + el("status", status)
            + el("statusReason", "" if status == "IN_SERVICE" else "CTI connection lost")
            + el("systemAuthMode", "NON_SSO") + el("timezoneOffset", timezone_offset)
            + el("uri", f"{API}/SystemInfo") + el("xmppDomain", xmpp_domain)
            + el("xmppPubSubDomain", pubsub_domain) + "</SystemInfo>")
