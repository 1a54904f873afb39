"""A Finesse node that sends an endless XMPP stanza, end to end: the browser's session survives it.

The simulator's flood control writes an unterminated stanza into the agent's XMPP stream during a
call; the bridge cuts it at XMPP_MAX_STANZA_BYTES, reconnects and re-syncs, and the toolbar sees
``connection.changed`` reconnecting then connected, the call still there, and events flowing again.
"""
from __future__ import annotations

import pytest

from bridge.config import DEFAULTS, ConfigError, load
from tests.waiting import take_until

LIMIT = 64 * 1024


@pytest.mark.bridge(XMPP_MAX_STANZA_BYTES=LIMIT)
def test_an_endless_stanza_during_a_call_is_a_reconnect_and_the_call_goes_on(stack):
    client = stack.agent("1001", ready=True)
    call_id = stack.ring(to="1001", ani="4155550180")
    client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)
    client.call("call.answer", callId=call_id)
    client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id)

    # Under the default limit (1 MiB), over the setting: cut only if the setting reached the client.
    response = stack.sim_post("/xmpp/flood", {"to": "1001", "bytes": 8 * LIMIT, "timeout": 20})
    assert response.status_code == 200, response.text
    assert len(response.json()["sessions"]) == 1

    notes = take_until(client, "connection.changed", lambda p: p["state"] == "reconnecting")
    notes += take_until(client, "connection.changed", lambda p: p["state"] == "connected")
    assert not [n for n in notes if n["method"] == "session.ended"]
    assert [(c["id"], c["state"]) for c in client.call("call.list")] == [(call_id, "active")]
    client.call("call.hold", callId=call_id)  # its XMPP event comes through the new stream
    client.wait_for("call.updated", lambda p: p["call"]["id"] == call_id and p["call"]["state"] == "held")
    client.call("call.end", callId=call_id)
    client.wait_for("call.ended", lambda p: p["call"]["id"] == call_id)
    assert client.validation_errors == []


@pytest.mark.parametrize("key, value", [("XMPP_MAX_STANZA_BYTES", 4096), ("XMPP_MAX_DEPTH", 4)])
def test_limits_that_would_cut_finesses_own_notifications_are_refused_at_start(key, value):
    settings = {"FINESSE_NODES": [{"url": "http://127.0.0.1:9"}], key: value}
    with pytest.raises(ConfigError, match="^XMPP_MAX_STANZA_BYTES and XMPP_MAX_DEPTH"):
        load(settings, file="/dev/null", environ={})
    assert load({**settings, key: DEFAULTS[key]}, file="/dev/null", environ={})[key] == DEFAULTS[key]
