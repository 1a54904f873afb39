"""Browser tests: headless Chromium (Debian ``chromium`` + ``chromium-driver``) through Selenium.

The page under test is the demo CRM (``/demo``) served by the real bridge app, which talks to a
real simulator: the integration ``stack`` fixture, reused as is. One browser for the session;
each test gets a fresh stack (new ports, so a new origin and a clean page).

Reaching into the toolbar: its UI lives in a Shadow DOM on the host element
(``[data-cti-toolbar]``), so ``Crm.shadow(selector)`` runs ``querySelector`` inside the shadow
root through ``execute_script``. Waits are ``WebDriverWait`` with timeouts, never sleeps. When a
test fails, the browser console, ``window.demoEvents`` and the toolbar's markup are added to its
report.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.integration.conftest import PASSWORD, Stack, finesse_logins, stack  # noqa: F401  (fixtures, reused)

ROOT = Path(__file__).resolve().parents[2]
TOOLBAR_JS = ROOT / "static" / "cti-toolbar.js"
SCREENSHOTS = ROOT / "docs" / "img"
GZIP_LIMIT = 40 * 1024
WAIT = 10.0  # seconds; a step that takes longer is a failure, not a slow machine


def toolbar_sizes() -> tuple[int, int] | None:
    """(bytes, gzipped bytes) of static/cti-toolbar.js, or None while it does not exist."""
    if not TOOLBAR_JS.exists():
        return None
    data = TOOLBAR_JS.read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9))


# -- the browser -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def driver() -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        missing = " and ".join(name for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
                               if not path)
        reason = f"{missing} not found (Debian: apt-get install chromium chromium-driver, or make debian-deps)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never reach for the network
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    browser.set_page_load_timeout(WAIT)
    browser.set_script_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved


# -- the demo CRM page, with readable verbs ----------------------------------------------------------

_SHADOW_ONE = """
const host = document.querySelector('[data-cti-toolbar]');
const root = host && host.shadowRoot;
return root ? root.querySelector(arguments[0]) : null;
"""
_SHADOW_ALL = """
const host = document.querySelector('[data-cti-toolbar]');
const root = host && host.shadowRoot;
return root ? Array.from(root.querySelectorAll(arguments[0])) : [];
"""


class Crm:
    """The demo CRM in the browser, and the stack behind it."""

    def __init__(self, driver: webdriver.Chrome, stack: Stack) -> None:
        self.driver, self.stack = driver, stack

    # page
    def open(self, path: str = "/demo") -> "Crm":
        self.driver.get(self.stack.base + path)
        self.wait(lambda: self.shadow('[data-cti="login-form"]') or self.shadow('[data-cti="agent-state"]'),
                  "the toolbar to render (its sign-in form or agent state)")
        return self

    def reload(self) -> None:
        self.driver.refresh()
        self.wait(lambda: self.shadow('[data-cti="login-form"]') or self.shadow('[data-cti="agent-state"]'),
                  "the toolbar to render after the reload")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Poll ``condition`` until truthy; its value. Fails naming ``what``."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                                 ignored_exceptions=(StaleElementReferenceException, JavascriptException)
                                 ).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    def until(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Like ``wait``, for conditions outside the browser (the simulator, the bridge)."""
        try:
            return WebDriverWait(self.stack, timeout, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    # the toolbar's shadow root
    @property
    def host(self) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, "[data-cti-toolbar]")

    def shadow(self, selector: str) -> WebElement | None:
        return self.js(_SHADOW_ONE, selector)  # type: ignore[no-any-return]

    def shadow_all(self, selector: str) -> list[WebElement]:
        return self.js(_SHADOW_ALL, selector)  # type: ignore[no-any-return]

    def need(self, selector: str, what: str | None = None) -> WebElement:
        return self.wait(lambda: self.shadow(selector), what or f"{selector} in the toolbar")  # type: ignore[no-any-return]

    def connection_state(self) -> str | None:
        return self.host.get_attribute("data-cti-state")

    def shadow_html(self) -> str:
        return str(self.js("const h = document.querySelector('[data-cti-toolbar]');"
                           "return h && h.shadowRoot ? h.shadowRoot.innerHTML : '(no toolbar shadow root)';"))

    # what the CRM's callbacks saw
    def events(self, kind: str | None = None) -> list[Any]:
        events = self.js("return window.demoEvents || [];") or []
        return [e["data"] for e in events if kind is None or e["type"] == kind]

    def wait_event(self, kind: str, match: Callable[[Any], bool] = lambda _: True, what: str = "") -> Any:
        return self.wait(lambda: next((d for d in self.events(kind) if match(d)), None),
                         what or f"a {kind} callback")

    # the agent
    def submit_login(self, agent_id: str = "1001", password: str = PASSWORD, extension: str | None = None) -> None:
        """Fill the toolbar's sign-in form and submit it."""
        self.need('[data-cti="login-form"]', "the sign-in form")
        for name, value in (("login-agent", agent_id), ("login-password", password),
                            ("login-extension", extension or "7" + agent_id)):
            field = self.need(f'[data-cti="{name}"]')
            field.clear()
            field.send_keys(value)
        self.need('[data-cti="login-submit"]').click()

    def signed_in(self) -> bool:
        form = self.shadow('[data-cti="login-form"]')
        return (form is None or not form.is_displayed()) and self.agent_state() not in (None, "", "LOGOUT")

    def sign_in(self, agent_id: str = "1001", password: str = PASSWORD, extension: str | None = None) -> None:
        self.submit_login(agent_id, password, extension)
        self.wait(self.signed_in, "the sign-in form to go and an agent state to show")

    def agent_state(self) -> str | None:
        element = self.shadow('[data-cti="agent-state"]')
        return element.get_attribute("data-state") if element else None

    def choose_state(self, value: str | None = None, label: str | None = None) -> None:
        select = Select(self.need('[data-cti="state-select"]', "the state select"))
        if label is not None:
            option = self.wait(lambda: next((o for o in select.options if label in o.text), None),
                               f"a state option labelled {label!r}")
            select.select_by_value(option.get_attribute("value"))
        else:
            self.wait(lambda: any(o.get_attribute("value") == value for o in select.options),
                      f"a state option {value!r}")
            select.select_by_value(value)

    def go_ready(self) -> None:
        self.choose_state("READY")
        self.wait(lambda: self.agent_state() == "READY", "agent-state READY")

    # calls
    def call(self, call_id: str) -> WebElement | None:
        return self.shadow(f'[data-cti="call"][data-call-id="{call_id}"]')

    def call_state(self, call_id: str) -> str | None:
        element = self.call(call_id)
        return element.get_attribute("data-call-state") if element else None

    def wait_call(self, call_id: str, state: str | None = None) -> WebElement:
        def shown() -> WebElement | None:
            element = self.call(call_id)
            if element is not None and (state is None or element.get_attribute("data-call-state") == state):
                return element
            return None
        return self.wait(shown, f"call {call_id}" + (f" in state {state}" if state else ""))  # type: ignore[no-any-return]

    def actions(self, call_id: str) -> set[str]:
        buttons = self.shadow_all(f'[data-cti="call"][data-call-id="{call_id}"] [data-cti-action]')
        return {str(b.get_attribute("data-cti-action")) for b in buttons}

    def act(self, call_id: str, action: str) -> None:
        self.need(f'[data-cti="call"][data-call-id="{call_id}"] [data-cti-action="{action}"]',
                  f"the {action} button on call {call_id}").click()

    # screenshots for the docs
    def screenshot_toolbar(self, name: str) -> Path:
        """docs/img/<name>: the toolbar alone, still (no animation, focus ring, caret or hover), written
        only when the picture changed, so a test run leaves the work tree clean."""
        self.js("const root = document.querySelector('[data-cti-toolbar]').shadowRoot;"
                "if (!root.getElementById('e2e-still')) { const style = document.createElement('style');"
                " style.id = 'e2e-still'; style.textContent = '*, *::before, *::after { animation: none !important;"
                " transition: none !important; caret-color: transparent !important; }'; root.append(style); }"
                "if (root.activeElement) root.activeElement.blur();")
        # The pointer goes to the CRM's header (no hover state; moving to an element below would scroll
        # the page, and chromedriver clips element screenshots of a scrolled page wrongly).
        ActionChains(self.driver).move_to_element(self.driver.find_element(By.CSS_SELECTOR, ".brand")).perform()
        self.js("window.scrollTo(0, 0);")
        self.driver.execute_async_script(  # two frames: the still style and the blur are painted
            "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done()));")
        png = self.host.screenshot_as_png
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        if not path.exists() or not _same_picture(path.read_bytes(), png):
            path.write_bytes(png)
        return path

    # the bridge and the simulator
    def sim_agent(self, agent_id: str = "1001") -> dict[str, Any]:
        return next(a for a in self.stack.sim_state()["agents"] if a["id"] == agent_id)

    def sim_dialog(self, dialog_id: str) -> dict[str, Any] | None:
        return next((d for d in self.stack.sim_state()["dialogs"] if d["id"] == dialog_id), None)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the bridge's /metrics (0 when absent)."""
        text = requests.get(self.stack.base + "/metrics", timeout=5).text
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


def _png_pixels(png: bytes) -> tuple[bytes, bytes]:
    """(IHDR, the decompressed image data): enough to compare two screenshots of one kind."""
    header, data, at = b"", b"", 8  # after the signature: chunks of length, type, body, CRC
    while at < len(png):
        (size,) = struct.unpack(">I", png[at:at + 4])
        kind, body = png[at + 4:at + 8], png[at + 8:at + 8 + size]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            data += body
        at += 12 + size
    return header, zlib.decompress(data)


def _same_picture(old: bytes, new: bytes, tolerance: int = 256) -> bool:
    """Equal but for a few bytes: Chromium's anti-aliasing differs by a pixel or two between runs."""
    if old == new:
        return True
    try:
        (old_header, old_data), (new_header, new_data) = _png_pixels(old), _png_pixels(new)
    except (struct.error, zlib.error):
        return False
    return (old_header == new_header and len(old_data) == len(new_data)
            and sum(a != b for a, b in zip(old_data, new_data)) <= tolerance)


@pytest.fixture
def crm(driver: webdriver.Chrome, stack: Stack) -> Iterator[Crm]:
    driver.get_log("browser")  # drop what earlier tests left
    stack.app.config["DEMO_SIMULATOR_CONSOLE"] = stack.sim_base + "/sim"
    page = Crm(driver, stack)
    try:
        yield page
    finally:
        driver.get("about:blank")  # close the page's WebSocket before the stack goes




# -- reports -----------------------------------------------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach what the browser knew: console, the CRM's callbacks, the toolbar's DOM."""
    report = yield
    page = getattr(item, "funcargs", {}).get("crm")
    if report.failed and isinstance(page, Crm):
        try:
            console = "\n".join(f"{e.get('level')} {e.get('message')}" for e in page.driver.get_log("browser"))
            report.sections.append(("browser console", console or "(empty)"))
            report.sections.append(("window.demoEvents", json.dumps(page.js("return window.demoEvents || null;"),
                                                                    indent=1)[:20000]))
            state = page.js("const h = document.querySelector('[data-cti-toolbar]'); return h && h.dataset.ctiState;")
            report.sections.append(("toolbar", f"data-cti-state={state}\n{page.shadow_html()[:20000]}"))
        except Exception as exc:  # the browser itself may be what failed
            report.sections.append(("browser", f"could not read the browser: {exc!r}"))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The toolbar's size, printed by every run that collected the browser tests (with or without -s)."""
    if not any(str(getattr(r, "nodeid", "")).startswith("tests/e2e/")
               for reports in terminalreporter.stats.values() for r in reports):
        return
    sizes = toolbar_sizes()
    terminalreporter.section("toolbar size")
    if sizes is None:
        terminalreporter.write_line(f"{TOOLBAR_JS.relative_to(ROOT)}: missing")
    else:
        raw, packed = sizes
        verdict = "ok" if packed < GZIP_LIMIT else "TOO BIG"
        terminalreporter.write_line(f"{TOOLBAR_JS.relative_to(ROOT)}: {raw:,} bytes, {packed:,} bytes gzipped "
                                    f"(limit {GZIP_LIMIT:,}: {verdict})")
