"""The Finesse gadgets in headless Chromium, in the preview container (``/gadgets/preview/<name>``),
against the real bridge and simulator.

The preview page stands in for the Finesse desktop: its sign-in form becomes
``finesse.gadget.Config`` and the gadget runs in an iframe, as in Finesse. The tests switch into that
frame; ``Crm.shadow`` then reaches the gadget's toolbar (gadget mode) there. The far side (callers,
the agent's answer) goes through the simulator and a protocol client signed in as the same agent,
which joins the gadget's session on the bridge.
"""
from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from bridge.client import CtiClient

from .conftest import PASSWORD, Crm

CALLER = "+15550102030"
STRANGER = "+15559990000"
# Port 9 on loopback refuses at once: the tests look at the URL the gadget shows, not at a CRM.
POP_URL = "http://127.0.0.1:9/crm/contact?number={ani}&case={variables.callVariable1}"
POPPED = "http://127.0.0.1:9/crm/contact?number=%2B15550102030&case=CS-4821"


def rule(target: str) -> dict[str, Any]:
    return {"rules": [{"name": f"CRM contact ({target})", "on": "ringing", "match": "all", "when": [],
                       "url": POP_URL, "method": "GET", "target": target}]}


class Preview:
    """The preview container in the browser; after ``sign_in`` the driver is inside the gadget's frame."""

    def __init__(self, crm: Crm) -> None:
        self.crm, self.driver = crm, crm.driver

    def open(self, name: str, query: str = "") -> "Preview":
        self.driver.switch_to.default_content()
        self.driver.get(f"{self.crm.stack.base}/gadgets/preview/{name}{query}")
        self.crm.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, '[data-preview="signin"]'),
                      "the preview's sign-in form")
        return self

    def sign_in(self, agent_id: str = "1001", password: str = PASSWORD, extension: str = "71001",
                signed_in: bool = True) -> None:
        self.driver.switch_to.default_content()
        for name, value in (("agent", agent_id), ("password", password), ("extension", extension)):
            field = self.driver.find_element(By.CSS_SELECTOR, f'[data-preview="{name}"]')
            field.clear()
            field.send_keys(value)
        self.driver.find_element(By.CSS_SELECTOR, '[data-preview="start"]').click()
        assert self.driver.find_element(By.CSS_SELECTOR, '[data-preview="password"]').get_attribute("value") == ""
        frame = self.crm.wait(lambda: next((f for f in self.driver.find_elements(By.CSS_SELECTOR, '[data-preview="gadget"]')
                                            if f.is_displayed() and f.get_attribute("src")), None), "the gadget's frame")
        assert password not in str(frame.get_attribute("src"))  # never in a URL
        self.driver.switch_to.frame(frame)
        self.crm.wait(lambda: self.crm.js("return document.readyState") == "complete"
                      and self.crm.shadow('[data-cti="connection"]'), "the gadget's toolbar to render")
        if signed_in:
            self.crm.wait(lambda: self.crm.host.get_attribute("data-cti-session") == "signed-in",
                          "the gadget to sign in by itself")

    def one(self, selector: str) -> WebElement | None:
        found = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return found[0] if found else None

    def all(self, selector: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def text(self, name: str) -> str:
        element = self.one(f'[data-gadget="{name}"]')
        return element.text.strip() if element is not None else ""


def ready(agent: CtiClient) -> None:
    """The agent READY again (after a call the simulator may leave it NOT_READY)."""
    if agent.call("agent.get")["state"] != "READY":
        agent.call("agent.setState", state="READY")
        agent.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")


def for_call(call_id: str) -> Any:
    return lambda params: params["call"]["id"] == call_id


def answered_call(crm: Crm, agent: CtiClient, ani: str) -> str:
    """A call from ``ani`` that the agent answers and ends: its id."""
    ready(agent)
    call_id = crm.stack.ring(to="1001", ani=ani)
    agent.wait_for("call.ringing", for_call(call_id))
    agent.call("call.answer", callId=call_id)
    agent.wait_for("call.answered", for_call(call_id))
    agent.call("call.end", callId=call_id)
    agent.wait_for("call.ended", for_call(call_id))
    return call_id


def missed_call(crm: Crm, agent: CtiClient, ani: str) -> str:
    """A call from ``ani`` whose caller hangs up while it rings: its id."""
    ready(agent)
    call_id = crm.stack.ring(to="1001", ani=ani)
    agent.wait_for("call.ringing", for_call(call_id))
    assert crm.stack.sim_post(f"/calls/{call_id}/hangup").status_code == 200
    agent.wait_for("call.ended", for_call(call_id))
    return call_id


@pytest.mark.bridge(SCREENPOP=rule("iframe"))
def test_the_screenpop_gadget_shows_the_crm_page_for_a_ringing_call(crm: Crm) -> None:
    # The customer gadget too, in another tab of the same origin (as both gadgets share the Finesse
    # desktop's origin): its pops must not swallow the screen-pop gadget's (one-tab locks are per gadget).
    main = crm.driver.current_window_handle
    crm.driver.switch_to.new_window("tab")
    other = crm.driver.current_window_handle
    try:
        Preview(crm).open("customer").sign_in()
        crm.driver.switch_to.window(main)
        screenpop_gadget(crm)
    finally:
        crm.driver.switch_to.window(other)
        crm.driver.close()
        crm.driver.switch_to.window(main)


def screenpop_gadget(crm: Crm) -> None:
    gadget = Preview(crm).open("screenpop")
    gadget.sign_in()
    # Gadget mode: no sign-in form, status only (the Finesse desktop has the controls).
    form = crm.shadow('[data-cti="login-form"]')
    assert form is None or not form.is_displayed()
    assert crm.host.get_attribute("data-cti-mode") == "gadget"
    assert not crm.need('[data-cti="state-select"]').is_displayed()
    assert gadget.one('[data-gadget="pop"]').is_displayed() is False

    agent = crm.stack.agent("1001", ready=True)  # joins the gadget's session on the bridge
    dialog = crm.stack.ring(to="1001", ani=CALLER, variables={"callVariable1": "CS-4821"})
    crm.wait_call(dialog, "ringing")
    frame = crm.wait(lambda: (f := gadget.one('[data-gadget="pop-frame"]')) and f.get_attribute("src") == POPPED and f,
                     "the CRM URL in the gadget's iframe")
    assert frame.is_displayed() and frame.get_attribute("data-call-id") == dialog
    assert gadget.text("pop-title") == f"Screen pop · {CALLER}"
    assert gadget.one('[data-gadget="pop-open"]').get_attribute("href") == POPPED
    recent = gadget.all(f'[data-gadget="pops"] li[data-call-id="{dialog}"]')
    assert len(recent) == 1 and recent[0].get_attribute("data-target") == "iframe"
    assert recent[0].find_element(By.CSS_SELECTOR, "a").get_attribute("href") == POPPED
    assert not gadget.one('[data-gadget="pop-empty"]').is_displayed()

    agent.call("call.answer", callId=dialog)
    crm.wait_call(dialog, "active")
    assert len(gadget.all('[data-gadget="pops"] li')) == 1  # one pop per call and trigger


@pytest.mark.bridge(SCREENPOP=rule("tab"))
def test_a_blocked_pop_shows_the_notice_and_the_metric_counts_it(crm: Crm) -> None:
    gadget = Preview(crm).open("screenpop", "?pops=all")  # this gadget opens tab pops too
    gadget.sign_in()
    crm.js("window.opened = []; window.open = function (url) { window.opened.push(url); return null; };")
    assert crm.metric("cti_screenpop_blocked_total") == 0.0

    crm.stack.agent("1001", ready=True)
    dialog = crm.stack.ring(to="1001", ani=CALLER, variables={"callVariable1": "CS-4821"})
    notice = crm.need('[data-cti="popup-blocked"]', "the click-to-open notice")
    assert notice.get_attribute("data-call-id") == dialog
    assert notice.find_element(By.CSS_SELECTOR, "a").get_attribute("href") == POPPED
    assert crm.js("return window.opened;") == [POPPED]
    crm.until(lambda: crm.metric("cti_screenpop_blocked_total") == 1.0, "cti_screenpop_blocked_total to count the pop")
    listed = gadget.all(f'[data-gadget="pops"] li[data-call-id="{dialog}"]')
    assert len(listed) == 1 and listed[0].get_attribute("data-target") == "tab"
    assert not gadget.one('[data-gadget="pop"]').is_displayed()  # a tab pop is not framed


def test_the_customer_gadget_lists_the_callers_earlier_calls(crm: Crm) -> None:
    bridge = crm.stack.app.extensions["cti_bridge"]
    contact = bridge.profiles.create({"name": "Dana Whitfield", "phones": ["+1 555-010-2030"],
                                      "attributes": {"tier": "Gold", "crmId": "C-1001"}})
    agent = crm.stack.agent("1001")
    first = answered_call(crm, agent, CALLER)
    second = missed_call(crm, agent, CALLER)
    answered_call(crm, agent, STRANGER)  # someone else: not in Dana's history
    assert bridge.records.flush(5), "the records were not written"

    gadget = Preview(crm).open("customer")
    gadget.sign_in()
    assert gadget.one('[data-gadget="idle"]').is_displayed()
    ready(agent)
    dialog = crm.stack.ring(to="1001", ani=CALLER, variables={"callVariable1": "CS-4821"})
    crm.wait(lambda: gadget.one('[data-gadget="customer"]').get_attribute("data-call-id") == dialog,
             "the gadget to show the ringing call")
    crm.wait(lambda: gadget.text("contact-name") == "Dana Whitfield", "the caller's profile")
    assert gadget.one('[data-gadget="customer"]').get_attribute("data-contact-id") == contact["id"]
    assert gadget.text("number") == CALLER and gadget.text("call-state") == "Ringing"
    fields = gadget.text("contact-fields")
    assert "+1 555-010-2030" in fields and "Gold" in fields and "C-1001" in fields
    assert "callVariable1" in gadget.text("variables") and "CS-4821" in gadget.text("variables")

    def history() -> list[tuple[str | None, str | None]]:
        return [(li.get_attribute("data-call-id"), li.get_attribute("data-outcome"))
                for li in gadget.all('[data-gadget="history"] li')]
    crm.wait(lambda: len(history()) == 2, "the caller's two earlier calls")
    assert history() == [(second, "missed"), (first, "answered")]  # newest first, the stranger's call not there
    assert not gadget.one('[data-gadget="no-history"]').is_displayed()

    # Answered and ended, this call becomes an earlier call too.
    agent.call("call.answer", callId=dialog)
    crm.wait(lambda: gadget.text("call-state") == "Connected", "the call connected in the gadget")
    agent.call("call.end", callId=dialog)
    crm.wait(lambda: len(history()) == 3, "the ended call in the history")
    assert history()[0] == (dialog, "answered") and gadget.text("call-state") == "Ended"


def test_a_refused_sign_in_shows_a_notice_not_a_form(crm: Crm) -> None:
    gadget = Preview(crm).open("customer")
    gadget.sign_in(password="not-the-password", signed_in=False)
    notice = crm.wait(lambda: next((n for n in crm.shadow_all('[data-cti="notice"]') if n.text.strip()), None),
                      "a notice saying why the sign-in failed")
    assert "Finesse refused" in notice.text
    form = crm.shadow('[data-cti="login-form"]')
    assert form is None or not form.is_displayed()
    assert crm.host.get_attribute("data-cti-session") == "signed-out"
    assert crm.sim_agent()["state"] == "LOGOUT"
