"""Pure call tracking for one agent: Finesse dialog updates in, our notifications and records out.

No I/O and no clock of its own (``now`` is passed in), so tests feed it parsed dialogs and read
the notifications it decides on. ``sessions.AgentSession`` stamps them with ``seq`` and ``at``.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Callable, Iterable

from .finesse.model import Call, normalise_time
from .times import iso_now, parse

Notification = tuple[str, dict[str, Any]]

# The first notification for a call we had not seen, by its state.
FIRST = {"ringing": "call.ringing", "dialing": "call.dialing", "active": "call.answered"}
LIVE = ("ringing", "dialing", "active", "held", "failed")


def start_key(started_at: Any) -> str:
    """A call's start as the second half of its identity: ISO 8601 UTC to the millisecond, or ""
    when there is none. A Finesse dialog id is a CTI call id, which restarts with the CTI server or
    peripheral and wraps over time (docs/records.md, "Exactly one per call"), so two calls may share
    an id; with their start time they do not. Records, the webhook outbox and screen pops key on
    (id, start)."""
    return normalise_time(started_at) if isinstance(started_at, str) else ""


def _seconds(start: str, end: str) -> float:
    if not start or not end:
        return 0.0
    try:
        a, b = parse(start), parse(end)
    except ValueError:
        return 0.0
    return max(0.0, round((b - a).total_seconds(), 3))


def make_record(agent_id: str, call: Call, outcome: str) -> dict[str, Any]:
    """The call record (docs/records.md, openrpc.json Record), written once when the agent's part ends."""
    return {
        "id": str(uuid.uuid4()), "agentId": agent_id, "callId": call.id, "direction": call.direction,
        "from": call.from_, "to": call.to, "startedAt": call.startedAt, "answeredAt": call.answeredAt,
        "endedAt": call.endedAt, "durationSeconds": _seconds(call.startedAt, call.endedAt),
        "talkSeconds": _seconds(call.answeredAt, call.endedAt), "outcome": outcome,
        "wrapUpReason": call.wrapUpReason, "variables": dict(call.variables),
    }


def outcome_of(call: Call, transferred: bool) -> str:
    if call.callType == "CONFERENCE" and call.answeredAt and transferred:
        return "conferenced"
    if transferred and call.answeredAt:
        return "transferred"
    if call.answeredAt:
        return "answered"
    if call.state == "failed" or call.dialogState == "FAILED":
        return "failed"
    return "missed" if call.direction == "inbound" else "unanswered"


class CallTracker:
    """The calls of one agent as the browser should see them."""

    def __init__(self, agent_id: str, extension: str, now: Callable[[], str] = iso_now) -> None:
        self.agent_id, self.extension, self.now = agent_id, extension, now
        self.calls: dict[str, Call] = {}
        # Calls already reported ended (bounded): id -> startedAt, to ignore late updates of that
        # call while a reused id (start_key) with another start is a new call.
        self._ended: dict[str, str] = {}

    def as_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.calls.values()]

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def update(self, new: Call, event: str) -> list[Notification]:
        """One Dialog from a POST, PUT or DELETE, already parsed for this agent's extension."""
        if event == "DELETE":
            old = self.calls.get(new.id)
            if old is None:
                return []
            return self._end(self._merge(old, new), removed=True)
        if new.state not in ("ringing", "dialing") and self._ended_already(new):
            return []
        old = self.calls.get(new.id)
        if old is None:
            if new.state not in LIVE and new.state != "wrapup":
                return []
            call = self._merge(None, new)
            self.calls[call.id] = call
            self._ended.pop(call.id, None)
            if call.state == "wrapup":
                return [("call.updated", {"call": call.to_json()})]
            return [(FIRST.get(call.state, "call.updated"), {"call": call.to_json()})]
        call = self._merge(old, new)
        if call.state in ("ended",):
            return self._end(call, removed=False)
        self.calls[call.id] = call
        if old.state in ("ringing", "dialing") and call.state == "active":
            return [("call.answered", {"call": call.to_json()})]
        data = call.to_json()
        if data != old.to_json():
            return [("call.updated", {"call": data})]
        return []

    def _ended_already(self, new: Call) -> bool:
        """Is ``new`` a late update of a call we reported ended? Same id and, when Finesse gives a
        start, the same start; another start is another call under a reused id (``start_key``)."""
        ended = self._ended.get(new.id)
        return ended is not None and (not new.startedAt or start_key(new.startedAt) == start_key(ended))

    def _replaced(self, old: Call, new: Call) -> bool:
        """Is ``new`` another call than the tracked ``old`` under the same, reused id? Their starts
        as this agent's participant differ. (Not the call's start, the earliest participant's: a
        conference whose first party left moves it, and that is still the same call.)"""
        before = next((p.startedAt for p in old.participants if p.address == self.extension), "")
        now = next((p.startedAt for p in new.participants if p.address == self.extension), "")
        return bool(before and now and start_key(before) != start_key(now))

    def _merge(self, old: Call | None, new: Call) -> Call:
        """Carry our own timestamps across updates; Finesse's document is otherwise the truth."""
        call = replace(new)
        if old is not None:
            call.answeredAt = old.answeredAt
            call.startedAt = old.startedAt or new.startedAt
            if new.state in ("ended", "failed", "wrapup") and not new.participants:
                call.participants = old.participants
        if not call.startedAt:
            call.startedAt = self.now()
        if call.state in ("active", "held", "wrapup") and not call.answeredAt:
            mine = next((p for p in call.participants if p.address == self.extension), None)
            call.answeredAt = (mine.stateSince if mine and call.state == "active" and mine.stateSince
                               else self.now())
        return call

    def _end(self, call: Call, removed: bool, stale: bool = False) -> list[Notification]:
        """The agent's part is over: one ``call.ended`` with the record, never two.

        ``stale``: the call vanished while we were not listening (a re-sync), so its participants
        are the last ones we saw, not the ones at its end; they say nothing about a transfer.
        """
        self.calls.pop(call.id, None)
        if call.id in self._ended and start_key(self._ended[call.id]) == start_key(call.startedAt):
            return []
        self._ended.pop(call.id, None)  # to the end: the oldest go first
        self._ended[call.id] = call.startedAt
        while len(self._ended) > 1000:
            self._ended.pop(next(iter(self._ended)))
        others = [p for p in call.participants if p.address != self.extension and p.state in ("active", "held")]
        transferred = bool(others) and call.dialogState not in ("DROPPED", "FAILED") and not stale
        if call.state not in ("ended", "failed"):
            call.state = "ended"
        if not call.endedAt:
            call.endedAt = self.now()
        call.actions = []
        record = make_record(self.agent_id, call, outcome_of(call, transferred))
        return [("call.ended", {"call": call.to_json(), "record": record})]

    def reconcile(self, current: Iterable[Call]) -> list[Notification]:
        """After a reconnect: Finesse's list is the truth; report what changed meanwhile."""
        notes: list[Notification] = []
        seen = set()
        for call in current:
            seen.add(call.id)
            old = self.calls.get(call.id)
            if old is not None and self._replaced(old, call):  # it ended unseen and its id came back
                notes += self._end(old, removed=True, stale=True)
            notes += self.update(call, "PUT")
        for gone in [c for cid, c in self.calls.items() if cid not in seen]:
            notes += self._end(gone, removed=True, stale=True)
        return notes
