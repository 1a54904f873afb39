"""Nodes: SystemInfo, OUT_OF_SERVICE and failover, XMPP outages, UCCX mastership, control API errors."""
from __future__ import annotations

import calendar
import re
import time
from typing import Callable

import pytest
import requests
from defusedxml import ElementTree as SafeET

from .harness import WAIT, Notification, port_refuses

SYSTEM_INFO = "/finesse/api/SystemInfo"


def system_info(base: str) -> SafeET.Element:
    response = requests.get(base + SYSTEM_INFO, timeout=WAIT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/xml")
    doc = SafeET.fromstring(response.content)
    assert doc.tag == "SystemInfo"
    return doc


def is_system_info(status: str) -> Callable[[Notification], bool]:
    def match(note: Notification) -> bool:
        return note.kind == "SystemInfo" and note.data.findtext("status") == status  # type: ignore[union-attr]
    return match


def test_system_info_shape_on_both_nodes(h):
    sim = h.simulator
    for base, node in ((h.primary, sim.primary), (h.secondary, sim.secondary)):
        before = time.time()
        doc = system_info(base)
        assert doc.findtext("status") == "IN_SERVICE"
        assert doc.findtext("deploymentType") == "UCCE"
        assert doc.findtext("uri") == SYSTEM_INFO
        assert doc.findtext("xmppDomain") == node.host
        assert doc.findtext("xmppPubSubDomain") == f"pubsub.{node.host}"
        for tag, other in (("primaryNode", sim.primary), ("secondaryNode", sim.secondary)):
            assert doc.findtext(f"{tag}/host") == other.host
            assert doc.findtext(f"{tag}/httpsPort") == str(other.rest_port)
            assert doc.findtext(f"{tag}/xmppPort") == str(other.xmpp_port)
            assert doc.find(f"{tag}/xmppSecurePort") is not None
        stamp = doc.findtext("currentTimestamp", "")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
        seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        assert before - 2 <= seconds <= time.time() + 1
        assert doc.findtext("timezoneOffset") == "0"
        assert doc.findtext("systemAuthMode")
    assert sim.primary.host != sim.secondary.host


@pytest.mark.sim(timezone_offset_minutes=-300, primary_host="fin-a.example.net",
                 secondary_host="fin-b.example.net")
def test_system_info_follows_the_configuration(h):
    primary, secondary = system_info(h.primary), system_info(h.secondary)
    assert primary.findtext("timezoneOffset") == "-300"
    assert primary.findtext("xmppDomain") == "fin-a.example.net"
    assert secondary.findtext("xmppDomain") == "fin-b.example.net"
    assert secondary.findtext("primaryNode/host") == "fin-a.example.net"
    assert primary.findtext("secondaryNode/host") == "fin-b.example.net"


def test_out_of_service_node_fails_over_to_the_secondary(h):
    on_primary = h.xmpp("1001")
    assert on_primary.connect()
    watcher = h.xmpp("1002", node="secondary")
    assert watcher.connect()
    rest = h.rest("1001")
    rest.login("71001")
    on_primary.wait_user("NOT_READY")

    answer = h.control.node("primary", status="OUT_OF_SERVICE")
    assert answer["status"] == "OUT_OF_SERVICE"
    note = on_primary.next()
    assert (note.node, note.event, note.source, note.kind) == (SYSTEM_INFO, "PUT", SYSTEM_INFO, "SystemInfo")
    assert note.data.findtext("status") == "OUT_OF_SERVICE"
    assert note.data.findtext("xmppDomain") == h.simulator.primary.host

    # REST on the primary: 503 everywhere but SystemInfo, which reports the status.
    for method, path, body in (("GET", "/finesse/api/User/1001", None),
                               ("PUT", "/finesse/api/User/1001", "<User><state>READY</state></User>"),
                               ("GET", "/finesse/api/User/1001/Dialogs", None)):
        response = rest.request(method, path, body)
        assert response.status_code == 503, (path, response.text)
        assert SafeET.fromstring(response.content).findtext("ApiError/ErrorType") == "Service Unavailable"
    assert system_info(h.primary).findtext("status") == "OUT_OF_SERVICE"
    assert system_info(h.secondary).findtext("status") == "IN_SERVICE"

    # The secondary did not change, so its clients heard nothing.
    watcher.sync()
    assert watcher.drain() == []

    # The agent fails over: XMPP and REST on the secondary.
    moved = h.xmpp("1001", node="secondary")
    assert moved.connect()
    failover = h.rest("1001", node="secondary")
    assert failover.me().findtext("state") == "NOT_READY"
    assert failover.state("READY").status_code == 202
    assert moved.next().data.findtext("state") == "READY"
    # Nothing is published through a node that is out of service.
    on_primary.sync()
    assert [n for n in on_primary.drain() if n.kind == "user"] == []

    # Back in service: the primary says so, republishes the state it missed, and serves again.
    assert h.control.node("primary", status="IN_SERVICE")["status"] == "IN_SERVICE"
    back = on_primary.next()
    assert (back.kind, back.data.findtext("status")) == ("SystemInfo", "IN_SERVICE")
    state = on_primary.next()
    assert (state.node, state.kind, state.event) == ("/finesse/api/User/1001", "user", "PUT")
    assert state.data.findtext("state") == "READY" and state.request_id == ""
    moved.sync()
    assert moved.drain() == []  # the secondary never stopped: nothing to republish there
    assert rest.me().findtext("state") == "READY"
    assert rest.state("NOT_READY").status_code == 202
    assert on_primary.wait_user("NOT_READY").findtext("loginId") == "1001"
    assert moved.wait_user("NOT_READY").findtext("loginId") == "1001"


def test_back_in_service_republishes_calls_in_progress(h):
    rest, xmpp = h.agent("1001", ready=True)
    dialog_id = h.control.ring(to="1001", ani="4155550100", variables={"callVariable1": "A-1"})
    xmpp.wait_dialog("POST", "ALERTING")
    h.control.node("primary", status="OUT_OF_SERVICE")
    assert xmpp.next().data.findtext("status") == "OUT_OF_SERVICE"
    answer = h.rest("1001", node="secondary").action(dialog_id, "ANSWER", "71001")
    assert answer.status_code == 202

    h.control.node("primary", status="IN_SERVICE")
    assert xmpp.next().data.findtext("status") == "IN_SERVICE"
    user = xmpp.next()
    assert (user.kind, user.data.findtext("state")) == ("user", "TALKING")
    dialog = xmpp.next()
    assert (dialog.node, dialog.event, dialog.source) == (
        "/finesse/api/User/1001/Dialogs", "PUT", f"/finesse/api/Dialog/{dialog_id}")
    assert dialog.dialog.findtext("state") == "ACTIVE"
    assert dialog.dialog.findtext("mediaProperties/callvariables/CallVariable/value") == "A-1"


def test_control_api_stays_reachable_while_the_primary_is_out_of_service(h):
    h.control.node("primary", status="OUT_OF_SERVICE")
    state = h.control.state()
    nodes = {n["name"]: n for n in state["nodes"]}
    assert nodes["primary"]["status"] == "OUT_OF_SERVICE"
    assert nodes["secondary"]["status"] == "IN_SERVICE"
    console = requests.get(h.primary + "/sim/", timeout=WAIT)
    assert console.status_code == 200 and console.headers["Content-Type"].startswith("text/html")
    h.agent("1001", node="secondary")
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    h.control.hangup(dialog_id)


def test_xmpp_down_drops_clients_and_refuses_connections_until_up(h):
    rest, xmpp = h.agent("1001", node="secondary")
    other = h.xmpp("1002")
    assert other.connect()
    port = h.simulator.secondary.xmpp_port

    answer = h.control.node("secondary", xmpp="down")
    assert answer["xmpp"] == "down" and answer["sessions"] == 0
    xmpp.wait_disconnected()
    assert port_refuses(port)
    # The knobs are independent: REST on that node still serves; the primary's XMPP still delivers.
    assert rest.state("READY").status_code == 202
    assert h.control.agent("1001")["state"] == "READY"
    other.sync()
    assert not other.disconnected.is_set()

    answer = h.control.node("secondary", xmpp="up")
    assert answer["xmpp"] == "up" and answer["xmppPort"] == port
    back = h.xmpp("1001", node="secondary")
    assert back.connect()
    assert rest.state("NOT_READY").status_code == 202
    assert back.wait_user("NOT_READY").findtext("loginId") == "1001"
    assert h.control.state()["nodes"][1]["sessions"] == 1


@pytest.mark.sim(deployment="UCCX")
def test_uccx_secondary_starts_out_of_service_and_takes_over_from_the_primary(h):
    assert system_info(h.primary).findtext("status") == "IN_SERVICE"
    secondary = system_info(h.secondary)
    assert secondary.findtext("status") == "OUT_OF_SERVICE"
    assert secondary.findtext("deploymentType") == "UCCX"
    assert h.rest("1001", node="secondary").request("GET", "/finesse/api/User/1001").status_code == 503

    on_primary = h.xmpp("1001")
    assert on_primary.connect()
    on_secondary = h.xmpp("1002", node="secondary")
    assert on_secondary.connect()

    h.control.node("primary", status="OUT_OF_SERVICE")
    assert on_primary.next().data.findtext("status") == "OUT_OF_SERVICE"
    up = on_secondary.next()
    assert (up.node, up.kind, up.event) == (SYSTEM_INFO, "SystemInfo", "PUT")
    assert up.data.findtext("status") == "IN_SERVICE"
    assert up.data.findtext("xmppDomain") == h.simulator.secondary.host
    assert system_info(h.secondary).findtext("status") == "IN_SERVICE"
    assert system_info(h.primary).findtext("status") == "OUT_OF_SERVICE"

    rest = h.rest("1002", node="secondary")
    rest.login("71002")
    assert on_secondary.next().data.findtext("state") == "NOT_READY"

    # The primary becomes master again; the secondary goes back out of service.
    h.control.node("primary", status="IN_SERVICE")
    assert on_primary.wait(is_system_info("IN_SERVICE"))
    assert on_secondary.wait(is_system_info("OUT_OF_SERVICE"))
    assert rest.request("GET", "/finesse/api/User/1002").status_code == 503


@pytest.mark.parametrize("path, body, status, message", [
    ("/nodes/tertiary", {"status": "OUT_OF_SERVICE"}, 404, "primary or secondary"),
    ("/nodes/primary", {"status": "BROKEN"}, 400, "status"),
    ("/nodes/primary", {"xmpp": "sideways"}, 400, "xmpp"),
    ("/nodes/primary", {"webapp": 1}, 400, "webapp"),
    ("/nodes/primary", [1, 2], 400, "JSON object"),
    ("/xmpp/flood", {"to": "1001"}, 400, "one of bytes, depth or elements"),
    ("/xmpp/flood", {"to": "1001", "bytes": 10, "depth": 10}, 400, "one of bytes, depth or elements"),
    ("/xmpp/flood", {"bytes": 10}, 400, "give to"),
    ("/xmpp/flood", {"to": "1001", "depth": -1}, 400, "depth"),
    ("/xmpp/flood", {"to": "1001", "bytes": True}, 400, "bytes"),
    ("/xmpp/flood", {"to": "1001", "bytes": 2**31}, 400, "bytes"),
])
def test_control_api_errors_are_json(h, path, body, status, message):
    response = h.control.post(path, body)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in response.json()["error"]
    assert h.control.state()["nodes"][0]["status"] == "IN_SERVICE"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[" * 60000])
def test_control_api_rejects_bad_json(h, raw):
    response = requests.post(h.control.base + "/nodes/primary", data=raw,
                             headers={"Content-Type": "application/json"}, timeout=WAIT)
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"]
    assert h.control.state()["nodes"][0]["status"] == "IN_SERVICE"
