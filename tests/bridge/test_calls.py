"""bridge/calls.py's CallTracker when Finesse reuses a dialog id: a dialog id is a CTI call id, which
starts again when the CTI server or peripheral restarts and wraps over time (docs/records.md).

Pure: parsed calls in, notifications out, a fixed clock.
"""
from __future__ import annotations

from typing import Any

from bridge.calls import CallTracker
from bridge.finesse.model import Call, Participant

EXT = "71001"
NOW = "2025-03-01T12:00:00.000Z"


def call(call_id: str, state: str, start: str, mine: str = "", caller: str = "4155550100") -> Call:
    """A dialog as parse_call makes it: the customer's participant started at ``start``, the
    agent's at ``mine`` (or the same), the call's start the earliest of them."""
    party_state = {"ringing": "alerting", "active": "active", "ended": "dropped"}[state]
    return Call(id=call_id, state=state, dialogState="ACTIVE" if state != "ended" else "DROPPED",
                from_=caller, to=EXT, ani=caller, startedAt=start, participants=[
                    Participant(caller, "external", "active" if state != "ended" else "dropped", startedAt=start),
                    Participant(EXT, "agent", party_state, startedAt=mine or start, stateSince=mine or start)])


def methods(notes: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [method for method, _ in notes]


def records(notes: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [params["record"] for method, params in notes if method == "call.ended"]


def test_a_reused_id_first_seen_answered_is_a_new_call_and_late_updates_of_the_old_one_are_not() -> None:
    tracker = CallTracker("1001", EXT, now=lambda: NOW)
    first = "2025-03-01T09:00:00.000Z"
    tracker.update(call("16777217", "ringing", first), "POST")
    tracker.update(call("16777217", "active", first), "PUT")
    ended = tracker.update(call("16777217", "ended", first), "PUT")
    assert records(ended)[0]["startedAt"] == first
    assert tracker.update(call("16777217", "ended", first), "DELETE") == []
    # A late PUT of that call (same start) says nothing new: no second answer, no second record.
    assert tracker.update(call("16777217", "active", first), "PUT") == []
    assert tracker.get("16777217") is None
    # After a CTI restart the id comes back on another call, first seen already answered (say, a
    # transfer to this agent): it is a call the agent can control, and it gets its own record.
    later = "2025-03-01T11:00:00.000Z"
    notes = tracker.update(call("16777217", "active", later, caller="4155550199"), "POST")
    assert methods(notes) == ["call.answered"]
    live = tracker.get("16777217")
    assert live is not None and live.startedAt == later and live.from_ == "4155550199"
    second = records(tracker.update(call("16777217", "ended", later, caller="4155550199"), "PUT"))
    assert [(r["callId"], r["startedAt"], r["from"]) for r in second] == [("16777217", later, "4155550199")]


def test_a_resync_that_finds_the_id_on_another_call_ends_the_old_one_and_starts_the_new() -> None:
    tracker = CallTracker("1001", EXT, now=lambda: NOW)
    first = "2025-03-01T09:00:00.000Z"
    tracker.update(call("16777217", "ringing", first), "POST")
    tracker.update(call("16777217", "active", first), "PUT")
    # XMPP was down: the call ended unseen, the CTI server restarted and the id rang again.
    later, mine = "2025-03-01T11:00:00.000Z", "2025-03-01T11:00:02.000Z"  # the caller's start, the agent's
    notes = tracker.reconcile([call("16777217", "ringing", later, mine=mine, caller="4155550199")])
    assert methods(notes) == ["call.ended", "call.ringing"]
    assert [(r["startedAt"], r["from"]) for r in records(notes)] == [(first, "4155550100")]
    assert notes[1][1]["call"]["startedAt"] == later and notes[1][1]["call"]["from"] == "4155550199"
    # The same live call on the next re-sync is nothing new.
    assert tracker.reconcile([call("16777217", "ringing", later, mine=mine, caller="4155550199")]) == []
    # Nor is it when its earliest party has left (a conference whose caller hung up): the call's
    # start moves on, the agent's own participant does not, so it is still the same call.
    tracker.update(call("16777217", "active", later, mine=mine, caller="4155550199"), "PUT")
    without_caller = call("16777217", "active", mine, mine=mine, caller="4155550199")
    without_caller.participants = [p for p in without_caller.participants if p.address == EXT]
    assert [m for m in methods(tracker.reconcile([without_caller])) if m != "call.updated"] == []
    live = tracker.get("16777217")
    assert live is not None and live.startedAt == later  # the record keeps the call's first start
