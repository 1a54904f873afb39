"""The hand-written ``to_json`` of the Finesse model equals what ``dataclasses.asdict`` gave.

``to_json`` runs for every Finesse event, so it is written out by hand (docs/performance.md);
these tests keep it equal to the dataclasses, so a field added to one is not lost in the other.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from bridge.finesse.model import Agent, Call, Participant


def _call_as_dict(call: Call) -> dict[str, Any]:
    data = asdict(call)
    data["from"] = data.pop("from_")
    for party in data["participants"]:
        party.pop("actions", None)
    return data


def _filled(cls: type, **extra: Any) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        values[f.name] = f"{f.name}-value"
    values.update(extra)
    return cls(**values)


def test_agent_json_has_every_field_in_order_and_copies_its_containers() -> None:
    agent = _filled(Agent, reasonCode={"id": "7", "code": "12", "label": "Lunch"}, roles=["Agent", "Supervisor"])
    data = agent.to_json()
    assert data == asdict(agent) and list(data) == list(asdict(agent))
    data["roles"].append("x")
    data["reasonCode"]["label"] = "changed"
    assert agent.roles == ["Agent", "Supervisor"] and agent.reasonCode == {"id": "7", "code": "12", "label": "Lunch"}
    assert Agent(id="1").to_json() == asdict(Agent(id="1"))


def test_call_json_has_every_field_in_the_order_asdict_gave_and_no_participant_actions() -> None:
    parties = [_filled(Participant, actions=["ANSWER"]), _filled(Participant, actions=[])]
    call = _filled(Call, queue={"name": "Sales", "number": "8001"}, variables={"callVariable1": "x"},
                   participants=parties, actions=["answer", "hold"])
    data = call.to_json()
    assert data == _call_as_dict(call) and list(data) == list(_call_as_dict(call))
    assert all("actions" not in party for party in data["participants"])
    data["variables"]["callVariable1"] = "changed"
    data["participants"][0]["state"] = "changed"
    assert call.variables == {"callVariable1": "x"} and call.participants[0].state == "state-value"
    assert Call(id="5").to_json() == _call_as_dict(Call(id="5"))
