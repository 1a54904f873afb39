"""The XMPP client's stream limits against a real server that misbehaves: the simulator's flood control
writes an unterminated stanza (endless text, or elements nested without end) to the agent's stream.

Over a limit the connection is dropped and reconnects, the bridge's memory stays near the limit (the
Python heap's peak, tracemalloc), and notifications flow again. Waits are on callbacks, never sleeps.
"""
from __future__ import annotations

import logging
import tracemalloc
from contextlib import contextmanager
from typing import Any, Iterator
from xml.sax.saxutils import escape

import pytest
import requests

from bridge.finesse import model
from bridge.finesse.notify import NotifyHub
from simulator import render
from simulator.model import Dialog, Participant
from simulator.server import Simulator

from .test_notify import GOOD, WAIT, Agent, config

MIB = 1024 * 1024
MARGIN = 4 * MIB  # socket reads (256 KiB each on plain TCP), the piece being parsed, the reconnect's objects


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(config()).start_in_thread()
    yield simulator
    simulator.stop_thread()


@contextmanager
def hub(**limits: Any) -> Iterator[NotifyHub]:
    notify = NotifyHub(connect_timeout=WAIT, reconnect_min=0.05, reconnect_max=0.2, **limits).start()
    try:
        yield notify
    finally:
        notify.stop()


@contextmanager
def heap_peak() -> Iterator[list[int]]:
    """The Python heap's peak growth while the block runs (bytes, in the list once it ends)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak: list[int] = []
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


def flood(sim: Simulator, **body: Any) -> list[dict[str, Any]]:
    """The simulator writes an unterminated stanza to every session of 1001; returns once it stopped."""
    response = requests.post(f"http://127.0.0.1:{sim.primary.rest_port}/sim/api/xmpp/flood",
                             json={"to": "1001", "timeout": 20, **body}, timeout=30)
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


def reconnected(agent: Agent) -> None:
    """The drop is reported, then the reconnect, and a notification gets through the new stream."""
    seen = agent.wait_state("xmpp", "connected")
    assert ("xmpp", "disconnected") in seen and ("xmpp", "reconnecting") in seen, seen
    agent.login()
    assert agent.wait_user().state == "NOT_READY"


def test_an_endless_stanza_is_cut_at_the_byte_limit_and_the_agent_reconnects(sim: Simulator) -> None:
    limit, total = 256 * 1024, 20 * MIB
    with hub(max_stanza_bytes=limit) as notify:
        agent = Agent(sim)
        conn = agent.connect(notify)
        agent.wait_state("xmpp", "connected")
        with heap_peak() as peak:
            (session,) = flood(sim, bytes=total)
            reconnected(agent)
        assert session["closed"] and session["sent"] < total  # the bridge left; the flood did not end
        assert peak[0] < limit + MARGIN, f"heap grew {peak[0]} bytes for a {limit}-byte limit"
        assert conn.connected and notify.client_count() == 1


@pytest.mark.parametrize("shape, words", [
    ("depth", "nested deeper than 64 elements"),  # 200,000 nested (600 KB): within the byte limit
    ("elements", "of more than 10000 elements"),  # 200,000 side by side (800 KB): within bytes and depth
])
def test_a_stanza_too_deep_or_of_too_many_elements_is_cut(sim: Simulator, caplog: pytest.LogCaptureFixture,
                                                          shape: str, words: str) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.finesse.notify")
    with hub() as notify:  # the defaults
        agent = Agent(sim)
        agent.connect(notify)
        agent.wait_state("xmpp", "connected")
        with heap_peak() as peak:
            flood(sim, **{shape: 200_000})
            reconnected(agent)
        assert peak[0] < MARGIN, f"heap grew {peak[0]} bytes"
        assert words in caplog.text


def dialogs_update(calls: int) -> str:
    """A Dialogs notification of ``calls`` calls, each with ten call variables and 2,000 bytes of ECC data."""
    variables = {f"callVariable{n}": f"{n:02d}" + "v" * 38 for n in range(1, 11)}
    variables.update({f"user.ecc.{n}": "e" * 190 for n in range(10)})
    dialogs = []
    for n in range(calls):
        parties = [Participant(f"7{1001 + k}", "AGENT_DEVICE", "ACTIVE", 1.7e9, 1.7e9, agent_id=str(1001 + k))
                   for k in range(2)]
        call = Dialog(id=str(40_000_000 + n), from_address="4155550100", to_address="71001", call_type="ACD_IN",
                      state="ACTIVE", created=1.7e9, dnis="8005550100", queue_name="Sales", queue_number="1",
                      call_key=("1", str(n), "150"), participants=parties, variables=variables)
        dialogs.append(render.dialog(call, {"71001": ["HOLD", "DROP", "TRANSFER_SST", "CONSULT_CALL"]}, False))
    return render.update(f"<dialogs>{''.join(dialogs)}</dialogs>", "PUT", "/finesse/api/User/1001/Dialogs")


def test_a_large_dialogs_notification_passes_and_the_limit_is_the_setting(sim: Simulator) -> None:
    calls = 1
    while len(dialogs_update(calls + 1)) <= model.MAX_DOCUMENT_BYTES:  # the largest the bridge parses
        calls += 1
    payload = dialogs_update(calls)
    stanza_bytes = len(escape(payload).encode())  # the simulator's envelope adds a few hundred
    with hub(max_stanza_bytes=stanza_bytes // 2) as notify:  # a limit below this notification: cut
        agent = Agent(sim)
        agent.connect(notify)
        agent.wait_state("xmpp", "connected")
        agent.publish(payload, "/finesse/api/User/1001/Dialogs")
        reconnected(agent)
    with hub() as notify:  # the default limit: it passes whole, and the stream goes on
        assert stanza_bytes < notify.max_stanza_bytes
        agent = Agent(sim)
        conn = agent.connect(notify)
        agent.publish(payload, "/finesse/api/User/1001/Dialogs")
        agent.publish(GOOD)
        update = agent.wait_update(lambda u: u.kind == "dialogs")
        assert len(update.dialogs) == calls > 40
        assert agent.next_update()[1].source == "/finesse/api/User/1001" and conn.connected
