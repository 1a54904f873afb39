"""The demo CRM pages (``bridge/demo.py``) through Flask's test client, and ``app.py``'s demo settings.

The browser tests (tests/e2e) run the page with the toolbar; these check what the server renders.
"""
from __future__ import annotations

import re
from typing import Any

import pytest

import app as app_module
from app import create_app
from bridge import config as bridge_config
from bridge.demo import find_contact

NODES = [{"url": "http://127.0.0.1:9", "xmpp": "127.0.0.1:9"}]


def client(**settings: Any) -> Any:
    return create_app({"FINESSE_NODES": NODES, **settings}, config_file="/dev/null").test_client()


def test_the_page_embeds_the_toolbar_with_urls_from_the_server() -> None:
    page = client().get("/demo", base_url="https://crm.example.test").get_data(as_text=True)
    assert '<script src="/static/cti-toolbar.js"></script>' in page
    assert 'servers: ["wss://crm.example.test/rpc"]' in page
    assert 'element: "#cti"' in page and 'layout: "bar"' in page
    assert 'data-cti-dial="71002"' in page  # agent 1002: agent-to-agent calls from the demo
    assert len(re.findall(r'<button type="button" class="dial" data-cti-dial=', page)) == 6
    assert 'id="sim-console"' not in page  # only with a simulator


def test_the_simulator_console_link_and_the_panel_layout() -> None:
    test = client(DEMO_SIMULATOR_CONSOLE="http://127.0.0.1:8082/sim")
    page = test.get("/demo?layout=panel").get_data(as_text=True)
    assert 'id="sim-console" href="http://127.0.0.1:8082/sim"' in page
    assert 'layout: "panel"' in page and '<div id="cti" class="cti-panel">' in page
    assert test.get("/demo?layout=sidebar").status_code == 400


def test_the_contact_page_a_screen_pop_opens() -> None:
    test = client()
    page = test.get("/demo/contact?number=%2B15550102030").get_data(as_text=True)
    assert "<title>Dana Whitfield · Northwind CRM" in page
    assert 'const OPEN_NUMBER = "+15550102030";' in page
    unknown = test.get("/demo/contact?number=").get_data(as_text=True)  # caller ID withheld
    assert 'const OPEN_NUMBER = "";' in unknown and "<title>Northwind CRM" in unknown


@pytest.mark.parametrize("number, name", [
    ("+15550102030", "Dana Whitfield"), ("5550102030", "Dana Whitfield"), ("+1 (555) 010-2030", "Dana Whitfield"),
    ("71002", "Noah Brown"), ("1002", None), ("", None), ("anonymous", None), ("+15559990000", None)])
def test_contact_lookup(number: str, name: str | None) -> None:
    contact = find_contact(number)
    assert (contact["name"] if contact else None) == name


@pytest.mark.skipif("SCREENPOP" not in bridge_config.DEFAULTS, reason="the screen-pop engine is not there yet")
def test_the_demo_screenpop_rule_only_without_rules_of_ones_own(tmp_path: Any) -> None:
    rule = app_module._demo_screenpop({"FINESSE_NODES": NODES}, "/dev/null", "http://127.0.0.1:8080")
    assert rule["SCREENPOP"]["rules"][0]["url"] == "http://127.0.0.1:8080/demo/contact?number={ani}"
    assert rule["SCREENPOP"]["rules"][0]["target"] == "callback"
    create_app({"FINESSE_NODES": NODES, **rule}, config_file="/dev/null")  # a rule the engine accepts
    own = {"FINESSE_NODES": NODES, "SCREENPOP": {"rules": [dict(rule["SCREENPOP"]["rules"][0], name="mine")]}}
    assert app_module._demo_screenpop(own, "/dev/null", "http://127.0.0.1:8080") == {}
