"""The Finesse gadgets (``bridge/gadgets.py``, ``gadgets/*.xml``): what the server renders, and the two
JSON-RPC methods the gadgets and the toolbar use (``customer.lookup``, ``screenpop.blocked``).

Each gadget's XML must be well-formed OpenSocial as Finesse wants it (docs/finesse.md 11.1), every
absolute URL in it must point at this bridge (or ``PUBLIC_URL``), and nothing in it may be a
credential. The browser runs them in tests/e2e/test_gadgets.py.
"""
from __future__ import annotations

import base64
import re
import uuid
from typing import Any, Iterator

import pytest
import requests
from defusedxml import ElementTree

from app import create_app
from bridge import config as bridge_config
from bridge.client import CtiClient, RpcError
from bridge.gadgets import FINESSE_SCRIPT, GADGETS, gadget_content
from tests.integration.conftest import PASSWORD, Stack, stack  # noqa: F401  (the fixture, reused)

NODES = [{"url": "http://127.0.0.1:9", "xmpp": "127.0.0.1:9"}]
HOST = "https://bridge.example.test"
API_KEY = "gadget-test-api-key"
NUMBER = "+1 555-010-2030"
ABSOLUTE = re.compile(r"""(?:https?|wss?)://[^\s"'<>`]+""")
ATTRIBUTE_URL = re.compile(r"""\b(?:src|href|action)\s*=\s*["']([^"']*)["']""")


def client(**settings: Any) -> Any:
    return create_app({"FINESSE_NODES": NODES, "API_KEYS": [API_KEY], **settings}, config_file="/dev/null").test_client()


def fetch(path: str, base_url: str = HOST, **settings: Any) -> Any:
    response = client(**settings).get(path, base_url=base_url)
    assert response.status_code == 200, (path, response.status_code)
    return response


def urls_in(text: str) -> list[str]:
    return ABSOLUTE.findall(text)


# -- the XML -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GADGETS))
def test_each_gadget_is_well_formed_opensocial(name: str) -> None:
    response = fetch(f"/gadgets/{name}.xml")
    assert response.mimetype == "application/xml"
    root = ElementTree.fromstring(response.data)
    assert root.tag == "Module"
    prefs = root.find("ModulePrefs")
    assert prefs is not None
    assert prefs.get("title") == GADGETS[name]["title"] and prefs.get("description")
    assert prefs.get("thumbnail") == f"{HOST}/gadgets/icon.svg"
    features = {require.get("feature") for require in prefs.findall("Require")}
    assert {"pubsub-2", "dynamic-height", "settitle", "setprefs", "loadingindicator"} <= features
    loading = {p.get("name"): p.text for p in prefs.find("Require[@feature='loadingindicator']").findall("Param")}
    assert loading == {"manual-dismiss": "false", "loading-timeout": "10"}
    contents = root.findall("Content")
    assert len(contents) == 1 and contents[0].get("type") == "html"
    html = contents[0].text or ""
    # Finesse's library from the Finesse host (relative: the container serves the gadget), in that order,
    # then the toolbar from this bridge.
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/desktop/assets/js/jquery.min.js", "/desktop/assets/js/finesse.js",
                       f"{HOST}/static/cti-toolbar.js"]
    assert 'mode: "gadget"' in html and "finesse.gadget.Config" in html and "credentials" in html
    assert f'servers: ["wss://bridge.example.test/rpc"]' in html
    assert f'stylesheet: "{HOST}/static/cti-toolbar.css"' in html
    assert "gadgets.window.adjustHeight" in html and "registerOnLoadHandler" in html
    assert 'data-gadget="' in html and 'id="cti"' in html


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_every_url_in_a_gadget_points_at_this_bridge(name: str) -> None:
    text = fetch(f"/gadgets/{name}.xml").get_data(as_text=True)
    found = urls_in(text)
    assert f"{HOST}/static/cti-toolbar.js" in found and "wss://bridge.example.test/rpc" in found
    assert f"{HOST}/gadgets/{name}.xml" in found  # the layout line in the comment
    assert [u for u in found if not re.match(r"(https|wss)://bridge\.example\.test/", u)] == []
    for url in ATTRIBUTE_URL.findall(gadget_content(text)):  # relative ones: only Finesse's library
        assert url.startswith(HOST + "/") or url.startswith("/desktop/assets/js/"), url

    # Over plain http the WebSocket is ws://, on whatever host the request named.
    text = fetch(f"/gadgets/{name}.xml", base_url="http://127.0.0.1:8080").get_data(as_text=True)
    assert "ws://127.0.0.1:8080/rpc" in text
    assert all(u.startswith(("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/")) for u in urls_in(text))


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_public_url_wins_over_the_request_host(name: str) -> None:
    public = "https://cti.example.com/bridge"
    text = fetch(f"/gadgets/{name}.xml", base_url="http://10.0.0.5:8080", PUBLIC_URL=public + "/").get_data(as_text=True)
    found = urls_in(text)
    assert f"{public}/static/cti-toolbar.js" in found and "wss://cti.example.com/bridge/rpc" in found
    assert f"{public}/gadgets/icon.svg" in found and f"{public}/gadgets/{name}.xml" in found
    assert [u for u in found if not u.startswith((public + "/", "wss://cti.example.com/bridge/"))] == []
    assert "10.0.0.5" not in text


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_a_punycode_host_keeps_the_xml_well_formed(name: str) -> None:
    public = "https://xn--brcke-lva.example.com"  # "--" may not appear inside an XML comment
    data = fetch(f"/gadgets/{name}.xml", PUBLIC_URL=public).data
    assert ElementTree.fromstring(data).tag == "Module"
    assert f"{public}/static/cti-toolbar.js".encode() in data


def test_public_url_must_be_a_base_url() -> None:
    for bad in ("bridge.example.com", "ftp://bridge.example.com", "https://", "https://h/?a=1",
                "https://user:pw@h", "https://h:99999"):
        with pytest.raises(bridge_config.ConfigError, match="PUBLIC_URL"):
            bridge_config.load({"FINESSE_NODES": NODES, "PUBLIC_URL": bad}, environ={}, file="/dev/null")
    assert bridge_config.load({"FINESSE_NODES": NODES, "PUBLIC_URL": "http://127.0.0.1:8080/x"}, environ={},
                              file="/dev/null")["PUBLIC_URL"] == "http://127.0.0.1:8080/x"


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_no_credentials_inside(name: str) -> None:
    basic = base64.b64encode(b"1001:hunter2-secret").decode()
    test = client()
    test.set_cookie("session", "cookie-secret-value", domain="bridge.example.test")
    for path in (f"/gadgets/{name}.xml", f"/gadgets/preview/{name}", f"/gadgets/preview/{name}/frame"):
        response = test.get(path, base_url=HOST, headers={"Authorization": f"Basic {basic}"})
        text = response.get_data(as_text=True)
        assert response.status_code == 200
        for secret in (basic, "hunter2-secret", "cookie-secret-value", API_KEY, PASSWORD):
            assert secret not in text, (path, secret)
        assert not re.search(r"""\b(password|authToken|authorization)\s*[:=]\s*["'][^"']+["']""", text), path


def test_unknown_gadgets_and_options() -> None:
    test = client()
    assert test.get("/gadgets/nope.xml").status_code == 404
    assert test.get("/gadgets/preview/nope").status_code == 404
    assert test.get("/gadgets/preview/nope/frame").status_code == 404
    assert test.get("/gadgets/screenpop.xml?pops=everything").status_code == 400
    text = test.get("/gadgets/screenpop.xml?pops=all", base_url=HOST).get_data(as_text=True)
    assert 'const POPS = "all";' in text and f"{HOST}/gadgets/screenpop.xml?pops=all" in text
    assert 'const POPS = "iframe";' in test.get("/gadgets/screenpop.xml").get_data(as_text=True)
    icon = test.get("/gadgets/icon.svg")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml" and b"<svg" in icon.data
    icon.close()


# -- the preview container ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GADGETS))
def test_the_preview_container_and_its_frame(name: str) -> None:
    page = fetch(f"/gadgets/preview/{name}")
    assert page.mimetype == "text/html" and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    for field in ("agent", "password", "extension", "token"):
        assert f'data-preview="{field}"' in html
    assert 'type="password" data-preview="password"' in html
    assert f'const FRAME_URL = "/gadgets/preview/{name}/frame";' in html
    assert 'value="1001"' not in html  # the simulator's defaults only next to a simulator
    assert "localStorage" not in html and "sessionStorage" not in html and "document.cookie" not in html
    assert all(f"/gadgets/preview/{other}" in html for other in GADGETS)

    frame = fetch(f"/gadgets/preview/{name}/frame")
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    html = frame.get_data(as_text=True)
    # The stand-in container comes first, then the gadget's own content from its XML, without the
    # Finesse library (the stand-in replaces it).
    stand_in = html.index("window.gadgets = {")
    content = FINESSE_SCRIPT.sub("", gadget_content(fetch(f"/gadgets/{name}.xml").get_data(as_text=True)))
    assert content.strip() and content.strip() in html and html.index(content.strip()) > stand_in
    assert "/desktop/assets/js/" not in html
    for stub in ("registerOnLoadHandler", "adjustHeight", "makeRequest", "gadget: {Config: config}",
                 "ContainerServices", "HubSettings"):
        assert stub in html, stub


def test_simulator_defaults_and_the_demo_links_the_previews() -> None:
    html = fetch("/gadgets/preview/customer", DEMO_SIMULATOR_CONSOLE="http://127.0.0.1:8082/sim").get_data(as_text=True)
    assert 'value="1001"' in html and 'value="71001"' in html
    demo = fetch("/demo").get_data(as_text=True)
    assert 'href="/gadgets/preview/screenpop"' in demo and 'href="/gadgets/preview/customer"' in demo
    pops_all = fetch("/gadgets/preview/screenpop?pops=all").get_data(as_text=True)
    assert 'const FRAME_URL = "/gadgets/preview/screenpop/frame?pops=all";' in pops_all


# -- customer.lookup and screenpop.blocked over a real socket ---------------------------------------

def record(agent_id: str, number: str, ended: str, outcome: str = "answered") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "agentId": agent_id, "callId": str(uuid.uuid4().int % 10**8),
            "direction": "inbound", "from": number, "to": "7" + agent_id, "startedAt": ended,
            "answeredAt": ended if outcome == "answered" else "", "endedAt": ended, "durationSeconds": 30.0,
            "talkSeconds": 25.0 if outcome == "answered" else 0.0, "outcome": outcome, "wrapUpReason": "",
            "variables": {}}


@pytest.fixture
def lookup_stack(stack: Stack) -> Iterator[Stack]:  # noqa: F811
    yield stack
    for each in stack.clients:
        assert each.validation_errors == []


def test_customer_lookup_returns_the_contact_and_only_the_agents_own_records(lookup_stack: Stack) -> None:
    bridge = lookup_stack.app.extensions["cti_bridge"]
    mine_old = record("1001", "5550102030", "2026-05-04T09:00:00.000Z", "missed")
    mine_new = record("1001", "+15550102030", "2026-05-04T10:00:00.000Z")
    theirs = record("1002", "+15550102030", "2026-05-04T11:00:00.000Z")
    other_number = record("1001", "+15559990000", "2026-05-04T12:00:00.000Z")
    for each in (mine_old, mine_new, theirs, other_number):
        assert bridge.record_writer.write(each)
    contact = bridge.profiles.create({"name": "Dana Whitfield", "phones": [NUMBER], "attributes": {"tier": "Gold"}})

    agent = lookup_stack.agent("1001")
    found = agent.call("customer.lookup", number="+15550102030")
    assert found["contact"]["id"] == contact["id"] and found["contact"]["attributes"] == {"tier": "Gold"}
    assert [r["id"] for r in found["records"]] == [mine_new["id"], mine_old["id"]]  # newest first, never 1002's
    assert [r["id"] for r in agent.call("customer.lookup", number="5550102030", limit=1)["records"]] == [mine_new["id"]]

    other = lookup_stack.agent("1002")
    assert [r["id"] for r in other.call("customer.lookup", number=NUMBER)["records"]] == [theirs["id"]]
    assert agent.call("customer.lookup", number="") == {"contact": None, "records": []}  # caller ID withheld
    assert agent.call("customer.lookup", number="+1 555 000 1111") == {"contact": None, "records": []}
    with pytest.raises(RpcError) as bad:
        agent.call("customer.lookup", number="1", agentId="1002")  # the agent comes from the session
    assert bad.value.code == -32602

    stranger = lookup_stack.client()
    with pytest.raises(RpcError) as refused:
        stranger.call("customer.lookup", number=NUMBER)
    assert refused.value.code == 4001


def metric(stack: Stack, name: str) -> float:
    for line in requests.get(stack.base + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_screenpop_blocked_is_counted(lookup_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    assert metric(lookup_stack, "cti_screenpop_blocked_total") == 0.0
    stranger: CtiClient = lookup_stack.client()
    with pytest.raises(RpcError) as refused:
        stranger.call("screenpop.blocked", callId="1")
    assert refused.value.code == 4001

    agent = lookup_stack.agent("1001")
    with caplog.at_level("INFO", logger="bridge.rpc"):
        assert agent.call("screenpop.blocked", callId="16777217",
                          url="https://crm.example.com/contact?number=%2B15550102030") == {}
    assert agent.call("screenpop.blocked", callId="16777218") == {}
    assert metric(lookup_stack, "cti_screenpop_blocked_total") == 2.0
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "16777217" in logged and "crm.example.com" in logged and "15550102030" not in logged
    for bad in ({"callId": ""}, {"callId": "1", "url": "x" * 5000}, {"url": "https://crm.example.com"}):
        with pytest.raises(RpcError) as invalid:
            agent.call("screenpop.blocked", **bad)
        assert invalid.value.code == -32602
    assert metric(lookup_stack, "cti_screenpop_blocked_total") == 2.0
