"""The toolbar in headless Chromium, embedded in the demo CRM, against the real bridge and simulator.

Each test drives the page as an agent would (the sign-in form, the state select, the call buttons)
and the far side through the simulator's control API, then checks three places: the toolbar's DOM
(its documented ``data-cti`` contract), the CRM's callbacks (``window.demoEvents``, the activity
list) and Finesse itself (the simulator's state).
"""
from __future__ import annotations

import re
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from .conftest import GZIP_LIMIT, PASSWORD, Crm, toolbar_sizes

CALLER = "+15550102030"  # Dana Whitfield in the demo CRM's contacts
STRANGER = "+15559990000"  # nobody's number
SCREENPOP = {"rules": [{
    "name": "CRM contact", "on": "ringing", "match": "all", "when": [],
    "url": "http://127.0.0.1:8080/demo/contact?number={ani}", "method": "GET", "target": "callback"}]}
# Never buttons for a call in these states, whatever else Finesse allows.
NOT_WHEN = {"ringing": {"hold", "retrieve", "transfer", "conference"},
            "active": {"answer", "retrieve", "transfer", "conference"},
            "held": {"answer", "hold", "sendDigits", "transfer", "conference"}}


def digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


def allowed(crm: Crm, call_id: str) -> set[str]:
    """The call's actions as the SDK holds them (from the bridge, from Finesse)."""
    return set(crm.js("const c = window.cti.getCalls().find((c) => c.id === arguments[0]);"
                      "return c ? c.actions : [];", call_id))


def check_buttons(crm: Crm, call_id: str, state: str, must: set[str]) -> set[str]:
    """Buttons shown = only what is allowed, including ``must``, none of the never-in-this-state ones."""
    shown = crm.wait(lambda: (a := crm.actions(call_id)) >= must and a, f"{sorted(must)} buttons on a {state} call")
    assert shown <= allowed(crm, call_id), f"buttons {sorted(shown)} not all allowed {sorted(allowed(crm, call_id))}"
    assert not shown & NOT_WHEN[state], f"{state} call shows {sorted(shown & NOT_WHEN[state])}"
    return set(shown)


def sim_party(crm: Crm, dialog_id: str, extension: str = "71001") -> str | None:
    dialog = crm.sim_dialog(dialog_id)
    party = dialog and next((p for p in dialog["participants"] if p["mediaAddress"] == extension), None)
    return party["state"] if party else None


def severe_console(crm: Crm) -> list[str]:
    return [e["message"] for e in crm.driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0)  # the right password at once after the wrong one
def test_sign_in_through_the_form_then_go_ready(crm: Crm) -> None:
    crm.open()
    assert crm.driver.find_element(By.ID, "sim-console").get_attribute("href") == crm.stack.sim_base + "/sim"
    assert crm.host.get_attribute("data-cti-toolbar") is not None

    crm.submit_login(password="not-the-password")
    error = crm.need('[data-cti="login-error"]', "the sign-in error")
    crm.wait(lambda: error.text.strip(), "a message in the sign-in error")
    assert error.text.strip() == "Finesse refused the agent ID or password."
    assert crm.sim_agent()["state"] == "LOGOUT"

    crm.sign_in()
    assert crm.agent_state() == "NOT_READY"
    assert crm.sim_agent()["state"] == "NOT_READY"
    crm.wait(lambda: crm.connection_state() == "connected", "data-cti-state=connected")

    crm.go_ready()
    crm.until(lambda: crm.sim_agent()["state"] == "READY", "Finesse to show the agent READY")
    crm.wait_event("agentStateChanged", lambda a: a["state"] == "READY", "onAgentStateChanged(READY)")
    assert crm.shadow('[data-cti="state-timer"]') is not None
    assert crm.shadow('[data-cti="connection"]').get_attribute("data-state") == "connected"
    assert severe_console(crm) == []


def test_repeated_wrong_passwords_say_how_long_to_wait(crm: Crm) -> None:
    crm.open()
    crm.submit_login(password="not-the-password")
    error = crm.need('[data-cti="login-error"]', "the sign-in error")
    crm.wait(lambda: error.text.strip() == "Finesse refused the agent ID or password.", "the first refusal")
    crm.submit_login(password="still-not-it")  # within the back-off: the bridge answers, not Finesse
    crm.wait(lambda: error.text.strip().startswith("Too many failed sign-ins; try again in "), "the wait, in words")
    assert crm.sim_agent()["state"] == "LOGOUT" and not crm.stack.sim_state()["agents"][0]["locked"]


@pytest.mark.bridge(SCREENPOP=SCREENPOP)
def test_a_call_rings_pops_the_contact_and_is_answered_held_retrieved_and_ended(crm: Crm) -> None:
    crm.open()
    crm.sign_in()
    crm.go_ready()

    dialog = crm.stack.ring(to="1001", ani=CALLER, variables={"callVariable1": "CS-4821"})
    call = crm.wait_call(dialog, "ringing")
    assert digits(CALLER) in digits(call.find_element(By.CSS_SELECTOR, '[data-cti="call-number"]').text)
    assert check_buttons(crm, dialog, "ringing", {"answer"}) == {"answer"}
    ringing = crm.wait_event("callRinging", lambda c: c["id"] == dialog, "onCallRinging for the call")
    assert ringing["ani"] == CALLER

    pop = crm.wait_event("screenPop", lambda p: p["callId"] == dialog, "onScreenPop for the call")
    assert pop["url"] == "http://127.0.0.1:8080/demo/contact?number=%2B15550102030"
    assert pop["target"] == "callback"
    shown = crm.wait(lambda: crm.driver.find_elements(By.CSS_SELECTOR, f'#screenpop li[data-call-id="{dialog}"]'),
                     "the pop in the CRM's screen-pop panel")[0]
    assert pop["url"] in shown.text and "callback" in shown.text
    crm.wait(lambda: crm.driver.find_element(By.CSS_SELECTOR, "#contact [data-contact-name]").text == "Dana Whitfield",
             "the CRM to open the caller's contact")
    crm.screenshot_toolbar("toolbar-ringing.png")

    crm.act(dialog, "answer")
    crm.wait_call(dialog, "active")
    crm.wait_event("callAnswered", lambda c: c["id"] == dialog, "onCallAnswered")
    assert {"hold", "end"} <= check_buttons(crm, dialog, "active", {"hold", "end"})
    assert crm.until(lambda: sim_party(crm, dialog) == "ACTIVE", "Finesse to show the agent ACTIVE")
    crm.screenshot_toolbar("toolbar-active.png")

    crm.act(dialog, "hold")
    crm.wait_call(dialog, "held")
    check_buttons(crm, dialog, "held", {"retrieve", "end"})
    crm.until(lambda: sim_party(crm, dialog) == "HELD", "Finesse to show the call HELD")

    crm.act(dialog, "retrieve")
    crm.wait_call(dialog, "active")
    check_buttons(crm, dialog, "active", {"hold", "end"})

    crm.act(dialog, "end")
    crm.wait(lambda: crm.call(dialog) is None, "the call to leave the toolbar")
    ended = crm.wait_event("callEnded", lambda e: e["call"]["id"] == dialog, "onCallEnded")
    assert ended["record"]["outcome"] == "answered"
    log = crm.wait_event("callLog", lambda r: r["callId"] == dialog, "onCallLog")
    assert log["direction"] == "inbound" and log["from"] == CALLER
    item = crm.wait(lambda: crm.driver.find_elements(By.CSS_SELECTOR, f'#activity li[data-call-id="{dialog}"]'),
                    "the call in the CRM's activity list")[0]
    assert "answered" in item.text and "Inbound" in item.text and "Dana Whitfield" in item.text
    crm.until(lambda: crm.sim_dialog(dialog) is None, "Finesse to drop the dialog")

    # A caller the CRM does not know, who hangs up before anyone answers.
    crm.wait(lambda: crm.agent_state() == "READY", "the agent back READY")
    other = crm.stack.ring(to="1001", ani=STRANGER)
    crm.wait_call(other, "ringing")
    crm.wait_event("screenPop", lambda p: p["callId"] == other, "onScreenPop for the second call")
    crm.wait(lambda: crm.driver.find_element(By.CSS_SELECTOR, "#contact [data-contact-name]").text == "Unknown caller",
             "the CRM to show an unknown caller")
    assert crm.driver.find_element(By.CSS_SELECTOR, "#contact [data-contact-number]").text == STRANGER
    assert crm.stack.sim_post(f"/calls/{other}/hangup").status_code == 200
    crm.wait(lambda: crm.call(other) is None, "the abandoned call to leave the toolbar")
    missed = crm.wait(lambda: crm.driver.find_elements(By.CSS_SELECTOR, f'#activity li[data-call-id="{other}"]'),
                      "the abandoned call in the activity list")[0]
    assert "missed" in missed.text
    assert len(crm.events("screenPop")) == 2  # one pop per call, never a second one at the end


def test_click_to_call_from_the_contact_list_and_the_dial_pad(crm: Crm) -> None:
    crm.open()
    crm.sign_in()

    crm.driver.find_element(By.CSS_SELECTOR, '.contacts [data-cti-dial="+15550104477"]').click()
    dialog = crm.until(lambda: next((d for d in crm.stack.sim_state()["dialogs"]
                                     if d["from"] == "71001" and d["to"] == "+15550104477"), None),
                       "Finesse to show the click-to-call dialog")
    call = crm.wait_call(dialog["id"])
    assert "15550104477" in digits(call.find_element(By.CSS_SELECTOR, '[data-cti="call-number"]').text)
    crm.act(dialog["id"], "end")
    crm.wait(lambda: crm.call(dialog["id"]) is None, "the outbound call to end")
    crm.wait_event("callLog", lambda r: r["callId"] == dialog["id"], "onCallLog for the outbound call")

    crm.need('[data-cti="dialpad"]', "the dial pad")
    crm.need('[data-cti="dial-number"]').send_keys("+15550109264")
    crm.need('[data-cti="dial-call"]').click()
    second = crm.until(lambda: next((d for d in crm.stack.sim_state()["dialogs"] if d["to"] == "+15550109264"), None),
                       "Finesse to show the dial-pad call")
    crm.wait_call(second["id"])
    assert crm.stack.sim_post(f"/calls/{second['id']}/answer").status_code == 200  # the far end picks up
    crm.wait_call(second["id"], "active")
    check_buttons(crm, second["id"], "active", {"hold", "end"})


def test_not_ready_with_a_reason_code(crm: Crm) -> None:
    crm.open()
    crm.sign_in()
    crm.go_ready()
    crm.choose_state(label="Lunch")
    crm.wait(lambda: crm.agent_state() == "NOT_READY", "agent-state NOT_READY")
    crm.wait(lambda: "Lunch" in crm.shadow('[data-cti="agent-state"]').text, "the reason (Lunch) in agent-state")
    agent = crm.until(lambda: (a := crm.sim_agent()) and a["state"] == "NOT_READY" and a, "Finesse NOT_READY")
    assert agent["reasonCodeId"] == 2  # the simulator's "Lunch"
    event = crm.wait_event("agentStateChanged", lambda a: a["state"] == "NOT_READY" and a["reasonCode"])
    assert event["reasonCode"]["label"] == "Lunch"


def test_a_reload_mid_call_keeps_the_call_after_signing_in_again(crm: Crm, finesse_logins: list[str]) -> None:
    crm.open()
    crm.sign_in()
    crm.go_ready()
    dialog = crm.stack.ring(to="1001", ani=CALLER)
    crm.wait_call(dialog, "ringing")
    crm.act(dialog, "answer")
    crm.wait_call(dialog, "active")

    crm.reload()
    crm.need('[data-cti="login-form"]', "the sign-in form after the reload (no stored credentials)")
    stored = crm.js("const all = {}; for (const s of [localStorage, sessionStorage])"
                    " for (let i = 0; i < s.length; i++) all[s.key(i)] = s.getItem(s.key(i));"
                    " return {storage: all, cookie: document.cookie};")
    assert PASSWORD not in str(stored) and not re.search(r"token|password|credential", str(stored), re.I), stored

    crm.sign_in()
    crm.wait_call(dialog, "active")
    assert finesse_logins == ["1001"]  # one Finesse sign-in: the second one joined the session
    assert crm.metric("cti_logins_total", result="new") == 1
    assert crm.metric("cti_logins_total", result="joined") == 1
    assert crm.sim_agent()["state"] == "TALKING" and sim_party(crm, dialog) == "ACTIVE"

    crm.act(dialog, "end")  # and the rejoined page controls the call
    crm.wait(lambda: crm.call(dialog) is None, "the call to end")


def test_the_toolbar_reconnects_by_itself_when_the_socket_drops(crm: Crm) -> None:
    crm.open()
    crm.sign_in()
    crm.wait(lambda: crm.connection_state() == "connected", "data-cti-state=connected")
    crm.js("window.ctiStates = []; const host = document.querySelector('[data-cti-toolbar]');"
           "new MutationObserver(() => window.ctiStates.push(host.dataset.ctiState))"
           ".observe(host, {attributes: true, attributeFilter: ['data-cti-state']});")

    bridge: Any = crm.stack.app.extensions["cti_bridge"]
    sockets = [s for session in bridge.registry.all() for s in list(session.sockets.values())]
    assert len(sockets) == 1
    sockets[0].close(1012, "bridge restarting")  # what a graceful shutdown sends

    def reconnected() -> bool:
        states = crm.js("return window.ctiStates;")
        return "reconnecting" in states and "connected" in states[states.index("reconnecting") + 1:]
    crm.wait(reconnected, "data-cti-state reconnecting, then connected")
    crm.until(lambda: any(s is not sockets[0] for session in bridge.registry.all() for s in session.sockets.values()),
              "the page's new socket on the bridge")
    crm.go_ready()  # the resumed session acts ...
    dialog = crm.stack.ring(to="1001", ani=CALLER)  # ... and still gets events
    crm.wait_call(dialog, "ringing")
    crm.wait_event("callRinging", lambda c: c["id"] == dialog, "onCallRinging after the reconnect")
    assert crm.connection_state() == "connected"


def test_panel_layout(crm: Crm) -> None:
    crm.open("/demo?layout=panel")
    assert crm.driver.find_elements(By.CSS_SELECTOR, "aside #cti[data-cti-toolbar]")
    crm.sign_in()
    dialog = crm.stack.ring(to="1001", ani=CALLER, variables={"callVariable1": "CS-4821"})
    crm.wait_call(dialog, "ringing")
    crm.act(dialog, "answer")
    crm.wait_call(dialog, "active")
    crm.screenshot_toolbar("toolbar-panel.png")


def test_toolbar_script_is_small() -> None:
    sizes = toolbar_sizes()
    assert sizes is not None, "static/cti-toolbar.js is missing"
    raw, packed = sizes
    assert packed < GZIP_LIMIT, f"cti-toolbar.js is {packed:,} bytes gzipped ({raw:,} raw); the limit is {GZIP_LIMIT:,}"
