"""static/cti-toolbar.js against its promises, without a browser.

The type declarations (cti-toolbar.d.ts), the script's API object, the protocol's notifications
(bridge/protocol/openrpc.json) and the guide (docs/toolbar.md) must agree; the script must never
touch browser storage and must stay small. With Node installed, a smoke test runs the script in a
fake window against a scripted bridge: sign-in, events in seq order, one call log per record,
screen-pop defaults, timeouts, reconnect with resume (snapshot, replay) and signing in again.
The real thing runs in tests/e2e (headless Chromium against the bridge and the simulator).
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS_PATH = ROOT / "static" / "cti-toolbar.js"
DTS_PATH = ROOT / "static" / "cti-toolbar.d.ts"
CSS_PATH = ROOT / "static" / "cti-toolbar.css"
DOC_PATH = ROOT / "docs" / "toolbar.md"
OPENRPC = ROOT / "bridge" / "protocol" / "openrpc.json"
GZIP_LIMIT = 40 * 1024

# The DOM contract the browser tests rely on (data-cti values inside the shadow root).
DOM_CONTRACT = ["login-form", "login-agent", "login-password", "login-extension", "login-submit", "login-error",
                "agent-state", "state-timer", "state-select", "calls", "call", "call-number", "call-queue",
                "call-variables", "dialpad", "dial-number", "dial-call", "dial-consult", "dial-transfer",
                "wrapup-select", "wrapup-apply", "connection", "popup-blocked"]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?m)^\s*//.*$|\s//\s.*$", "", text)


def _body(text: str, opening: str) -> str:
    """The text between the brace that ends ``opening`` (a regex) and its matching brace."""
    match = re.search(opening, text)
    assert match, f"{opening!r} not found"
    start = text.index("{", match.start())
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    raise AssertionError(f"no closing brace after {opening!r}")


def _top_level_lines(body: str) -> list[str]:
    """Lines of ``body`` that start at brace depth 0 (members, not nested object types)."""
    lines, depth = [], 0
    for line in body.splitlines():
        if depth == 0 and line.strip():
            lines.append(line.strip())
        depth += line.count("{") - line.count("}")
    return lines


def _members(body: str) -> set[str]:
    names = set()
    for line in _top_level_lines(body):
        match = re.match(r"""(?:readonly\s+)?["']?([\w.]+)["']?\s*[?]?\s*[(<:]""", line)
        if match:
            names.add(match.group(1))
    return names


def _string_array(js: str, name: str) -> list[str]:
    match = re.search(rf"const {name} = \[(.*?)\];", js, flags=re.S)
    assert match, f"const {name} = [...] not found in cti-toolbar.js"
    return re.findall(r'"([^"]+)"', match.group(1))


@pytest.fixture(scope="module")
def js() -> str:
    return JS_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dts() -> str:
    return _strip_comments(DTS_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def notifications() -> set[str]:
    return {n["name"] for n in json.loads(OPENRPC.read_text(encoding="utf-8"))["x-notifications"]}


def js_api(js: str) -> set[str]:
    body = _body(js, r"const api = \{")
    keys = re.findall(r"(?m)^\s*(\w+)\s*(?:,|:|\(|$)", body)
    assert keys, "the api object is empty"
    return set(keys)


def test_every_api_method_in_the_types_exists_in_the_script_and_back(js: str, dts: str) -> None:
    declared = _members(_body(dts, r"interface Toolbar \{"))
    assert js_api(js) == declared, (f"only in the script: {sorted(js_api(js) - declared)}; "
                                    f"only in the d.ts: {sorted(declared - js_api(js))}")
    assert {"on", "getAgent", "getCalls", "getConnectionState", "login", "logout", "setState", "makeCall", "answer",
            "hold", "retrieve", "end", "consult", "transfer", "conference", "blindTransfer", "sendDigits",
            "updateVariables", "setWrapUp"} <= declared


def test_config_callbacks_match(js: str, dts: str) -> None:
    callbacks = json.loads("{" + re.sub(r"(\w+):", r'"\1":', _body(js, r"const CALLBACKS = \{").strip().rstrip(",")) + "}")
    config = _members(_body(dts, r"interface Config \{"))
    declared = {name for name in config if re.match(r"on[A-Z]", name)}
    assert set(callbacks) == declared
    assert {"onScreenPop", "onCallLog", "onCallRinging", "onCallAnswered", "onCallEnded", "onAgentStateChanged",
            "onConnectionChanged", "onError"} <= declared
    events = set(_string_array(js, "NOTIFICATIONS")) | set(_string_array(js, "OWN_EVENTS"))
    assert set(callbacks.values()) <= events, "a callback listens to an event the toolbar does not have"
    for name in ("servers", "element", "layout", "timeout", "messages", "clickToDial", "telLinks"):
        assert name in config, f"Config lacks {name}"


def test_events_are_the_protocol_notifications_plus_the_toolbars_own(js: str, dts: str,
                                                                       notifications: set[str]) -> None:
    script_notifications = _string_array(js, "NOTIFICATIONS")
    own = _string_array(js, "OWN_EVENTS")
    assert len(set(script_notifications)) == len(script_notifications)
    assert set(script_notifications) == notifications, "NOTIFICATIONS differs from openrpc.json x-notifications"
    assert not set(own) & notifications
    declared = _members(_body(dts, r"interface EventMap \{"))
    assert declared == notifications | set(own), (f"only in the d.ts: {sorted(declared - notifications - set(own))}; "
                                                  f"missing: {sorted((notifications | set(own)) - declared)}")
    for name in ("screenPop", "screenPopBlocked", "callLog", "error", "connectionStateChanged"):
        assert name in own


def test_no_browser_storage_at_all(js: str) -> None:
    for word in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert word not in js, f"cti-toolbar.js mentions {word}: credentials live in memory only"


def test_the_script_is_small_gzipped() -> None:
    raw = JS_PATH.read_bytes()
    packed = len(gzip.compress(raw, compresslevel=9))
    print(f"\ncti-toolbar.js: {len(raw):,} bytes, {packed:,} bytes gzipped (limit {GZIP_LIMIT:,})")
    assert packed < GZIP_LIMIT


def test_every_message_key_used_has_english_text(js: str) -> None:
    messages = set(re.findall(r'(?m)^\s*"?([\w-]+)"?: "', _body(js, r"const MESSAGES = \{")))
    used = set(re.findall(r'\bt\("(\w+)"\s*[,)]', js))
    assert used and used <= messages, f"no English text for {sorted(used - messages)}"
    for state in ("READY", "NOT_READY", "RESERVED", "TALKING", "HOLD", "WORK", "WORK_READY", "LOGOUT", "UNKNOWN"):
        assert f"state_{state}" in messages
    for verb in ("answer", "hold", "retrieve", "end", "consult", "transfer", "conference", "blindTransfer",
                 "sendDigits", "setWrapUp"):
        assert f"action_{verb}" in messages


def test_the_dom_contract_is_in_the_script(js: str) -> None:
    for name in DOM_CONTRACT:
        assert re.search(rf'"data-cti": "{name}"|"{name}"', js), f'data-cti="{name}" is not in cti-toolbar.js'
    for attribute in ("data-cti-action", "data-cti-digit", "data-call-id", "data-call-state", "data-cti-toolbar",
                      "data-cti-state", "data-cti-dial"):
        assert attribute in js


def test_theming_variables_are_documented() -> None:
    css = CSS_PATH.read_text(encoding="utf-8")
    used = set(re.findall(r"var\((--cti-[\w-]+)", css))
    doc = DOC_PATH.read_text(encoding="utf-8")
    assert used, "the stylesheet uses no --cti-* variables"
    assert not {v for v in used if v not in doc}, "undocumented: " + ", ".join(sorted(v for v in used if v not in doc))


def test_the_guide_covers_the_api(js: str) -> None:
    doc = DOC_PATH.read_text(encoding="utf-8")
    for name in sorted(js_api(js)):
        assert f"{name}(" in doc, f"docs/toolbar.md does not show {name}()"
    for event in _string_array(js, "NOTIFICATIONS") + _string_array(js, "OWN_EVENTS"):
        assert f"`{event}`" in doc, f"docs/toolbar.md does not list the {event} event"
    for option in _members(_body(_strip_comments(DTS_PATH.read_text(encoding="utf-8")), r"interface Config \{")):
        assert f"`{option}`" in doc, f"docs/toolbar.md does not describe config.{option}"


# -- the script running in Node, against a scripted bridge ------------------------------------------

SMOKE = r"""
"use strict";
const fs = require("fs");
const vm = require("vm");
const assert = require("assert");

const sockets = [];
const opened = [];
const docListeners = {};
const AGENT = {id: "1001", loginName: "agent1001", firstName: "Mia", lastName: "Brown", extension: "71001",
  state: "NOT_READY", reasonCode: null, pendingState: "", stateSince: "", roles: ["Agent"], teamId: "1", teamName: "Sales"};
const call = (id, state, actions) => ({id, direction: "inbound", state, dialogState: "", from: "4155550100", to: "71001",
  ani: "4155550100", dnis: "71001", callType: "ACD_IN", queue: {name: "Sales"}, variables: {}, participants: [],
  actions, startedAt: "", answeredAt: "", endedAt: "", associatedCallId: "", secondaryId: "", wrapUpReason: ""});

// The scripted bridge: method -> (params, socket) => {result} | {error} | null (never answers).
const behaviour = {
  "session.ping": () => ({result: {at: new Date().toISOString()}}),
  "session.login": () => ({result: {sessionId: "s1", resumeToken: "t1", agent: AGENT, calls: [], seq: 5}}),
  "agent.reasonCodes": (p) => ({result: p.category === "NOT_READY" ? [{id: "2", code: "11", label: "Lunch"}] : []}),
  "agent.wrapUpReasons": () => ({result: [{id: "1", label: "Sale"}]}),
  "call.hold": () => null,
};

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    sockets.push(this);
    setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}); }, 1);
  }
  send(text) {
    const message = JSON.parse(text);
    this.sent.push(message);
    const handler = behaviour[message.method];
    const out = handler ? handler(message.params || {}, this) : {result: {}};
    if (out) setTimeout(() => this.push(Object.assign({jsonrpc: "2.0", id: message.id}, out)), 1);
  }
  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => { if (this.onclose) this.onclose({code: 1000}); }, 1);
  }
  push(message) { if (this.readyState === 1 && this.onmessage) this.onmessage({data: JSON.stringify(message)}); }
  drop(code) { this.readyState = 3; if (this.onclose) this.onclose({code: code || 1006}); }
  methods() { return this.sent.map((m) => m.method); }
}

const window = {
  WebSocket: FakeSocket, console, setTimeout, clearTimeout, setInterval, clearInterval, URL,
  location: {href: "https://crm.example.com/page", origin: "https://crm.example.com"},
  navigator: {onLine: true},
  open: (...args) => { opened.push(args); return null; },
  addEventListener() {}, removeEventListener() {},
  document: {
    currentScript: {src: "https://bridge.example.com/static/cti-toolbar.js"},
    addEventListener: (name, fn) => { docListeners[name] = fn; }, removeEventListener() {},
    getElementsByTagName: () => [], visibilityState: "visible",
  },
};
window.window = window;
vm.createContext(window);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), window, {filename: "cti-toolbar.js"});

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(what, fn, ms = 2000) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (fn()) return; await wait(5); }
  throw new Error("timed out waiting for " + what);
}
async function rejects(promise, code) {
  try { await promise; } catch (e) { assert.strictEqual(e.code, code); return e; }
  throw new Error("expected a rejection with " + code);
}
const note = (method, params) => ({jsonrpc: "2.0", method, params: Object.assign({at: new Date().toISOString()}, params)});
const last = () => sockets[sockets.length - 1];
const plain = (value) => JSON.parse(JSON.stringify(value)); // values from the script's realm

(async () => {
  const seen = {framed: [], ringing: 0, ended: [], logs: [], pops: [], blocked: [], states: [], snapshots: 0, loggedOut: [], errors: []};
  const cti = window.CtiToolbar.init({
    timeout: 300, reconnect: {minDelay: 5, maxDelay: 20},
    onCallRinging: () => { seen.ringing++; },
    onCallEnded: (c, record) => { seen.ended.push(record.id); },
    onCallLog: (record) => { seen.logs.push(record.id); },
    onConnectionChanged: (state) => { seen.states.push(state); },
    onScreenPop: (pop) => { seen.pops.push(pop.target); return pop.target === "tab" || pop.target === "iframe" ? false : undefined; },
    onError: (e) => { seen.errors.push(e.code); },
  });
  cti.on("screenPopBlocked", (pop) => { seen.blocked.push(pop.url); });
  cti.on("screenPop", (pop) => { seen.framed.push(pop.url); });
  cti.on("snapshot", () => { seen.snapshots++; });
  cti.on("loggedOut", (info) => { seen.loggedOut.push(info.reason); });
  assert.throws(() => cti.on("call.rang", () => {}), /unknown event/);

  // The default server: /rpc on the script's origin, wss because the script came over https.
  assert.strictEqual(sockets[0].url, "wss://bridge.example.com/rpc");
  await until("connected", () => cti.getConnectionState() === "connected");
  await rejects(cti.answer("c1"), "NOT_SIGNED_IN");
  await rejects(cti.login({agentId: "1001"}), "INVALID_ARGUMENT");

  const signedIn = await cti.login({agentId: "1001", password: "pw", extension: "71001"});
  assert.strictEqual(signedIn.agent.id, "1001");
  assert.strictEqual(cti.getAgent().state, "NOT_READY");
  assert.deepStrictEqual(plain(cti.getReasonCodes().map((r) => r.label)), ["Lunch"]);
  assert.deepStrictEqual(plain(cti.getWrapUpReasons().map((r) => r.label)), ["Sale"]);
  const sock = last();

  // Events apply in seq order, each once.
  sock.push(note("call.ringing", {seq: 6, call: call("c1", "ringing", ["answer"])}));
  sock.push(note("call.ringing", {seq: 6, call: call("c1", "ringing", ["answer"])}));
  assert.strictEqual(seen.ringing, 1);
  assert.deepStrictEqual(plain(cti.getCalls().map((c) => c.id)), ["c1"]);
  const copy = cti.getCalls()[0];
  copy.state = "tampered";
  assert.strictEqual(cti.getCalls()[0].state, "ringing", "getters hand out copies");

  const record = {id: "r1", agentId: "1001", callId: "c1", direction: "inbound", from: "4155550100", to: "71001",
    startedAt: "", answeredAt: "", endedAt: "", durationSeconds: 3, talkSeconds: 0, outcome: "missed",
    wrapUpReason: "", variables: {}};
  sock.push(note("call.ended", {seq: 7, call: call("c1", "ended", []), record}));
  sock.push(note("call.ended", {seq: 7, call: call("c1", "ended", []), record}));
  assert.deepStrictEqual(seen.ended, ["r1"]);
  assert.deepStrictEqual(seen.logs, ["r1"]);
  assert.strictEqual(cti.getCalls().length, 0);

  // Screen pops: false -> the default for the target; a blocked window.open -> screenPopBlocked.
  sock.push(note("call.screenPop", {seq: 8, callId: "c1", url: "https://crm.example.com/c?n=1", method: "GET", target: "tab"}));
  sock.push(note("call.screenPop", {seq: 9, callId: "c1", url: "https://crm.example.com/c?n=2", method: "GET", target: "callback"}));
  sock.push(note("call.screenPop", {seq: 10, callId: "c1", url: "https://crm.example.com/c?n=3", method: "GET", target: "window:crm"}));
  sock.push(note("call.screenPop", {seq: 11, callId: "c1", url: "javascript:alert(1)", method: "GET", target: "tab"}));
  sock.push(note("call.screenPop", {seq: 12, callId: "c1", url: "https://crm.example.com/c?n=4", method: "GET", target: "iframe"}));
  assert.deepStrictEqual(seen.pops, ["tab", "callback", "window:crm", "tab", "iframe"]);
  assert.deepStrictEqual(seen.framed, ["https://crm.example.com/c?n=4"]);
  assert.deepStrictEqual(opened, [["https://crm.example.com/c?n=1", "_blank"]]);
  assert.deepStrictEqual(seen.blocked, ["https://crm.example.com/c?n=1"]);

  // Click-to-call through the document's click delegation.
  const link = {nodeType: 1, tagName: "BUTTON", hasAttribute: (n) => n === "data-cti-dial",
    getAttribute: (n) => (n === "data-cti-dial" ? "+1 (555) 010-2030" : n === "data-cti-variables" ? '{"callVariable1":"case 42"}' : null)};
  let prevented = false;
  docListeners.click({button: 0, defaultPrevented: false, composedPath: () => [link], preventDefault: () => { prevented = true; }});
  await until("call.make", () => sock.methods().includes("call.make"));
  const make = sock.sent.find((m) => m.method === "call.make");
  assert.ok(prevented);
  assert.deepStrictEqual(make.params, {to: "+15550102030", variables: {callVariable1: "case 42"}});

  // An action the bridge never answers rejects with TIMEOUT, once.
  let settled = 0;
  const started = Date.now();
  await rejects(cti.hold("c9").finally(() => { settled++; }), "TIMEOUT");
  assert.ok(Date.now() - started >= 250);
  await wait(50);
  assert.strictEqual(settled, 1);

  // The socket drops: reconnect, resume from the last seq; a snapshot replaces agent and calls.
  behaviour["session.resume"] = () => ({result: {resumeToken: "t2", snapshot: {agent: Object.assign({}, AGENT, {state: "TALKING"}),
    calls: [call("c9", "active", ["hold", "end"])], seq: 20}}});
  sock.drop(1006);
  assert.strictEqual(cti.getConnectionState(), "reconnecting");
  await until("resumed", () => sockets.length === 2 && cti.getConnectionState() === "connected");
  const resume = last().sent.find((m) => m.method === "session.resume");
  assert.deepStrictEqual(resume.params, {resumeToken: "t1", lastSeq: 12});
  assert.deepStrictEqual(plain(cti.getCalls().map((c) => c.id + ":" + c.state)), ["c9:active"]);
  assert.strictEqual(cti.getAgent().state, "TALKING");
  assert.strictEqual(seen.snapshots, 1);

  // Replayed events follow the resume reply, in order; ones already seen are skipped.
  behaviour["session.resume"] = (p, socket) => {
    setTimeout(() => {
      socket.push(note("call.updated", {seq: 21, call: call("c9", "held", ["retrieve"])}));
      socket.push(note("call.updated", {seq: 20, call: call("c9", "ended", [])}));
    }, 3);
    return {result: {resumeToken: "t3", replayed: 1}};
  };
  last().drop(1012);
  await until("replayed", () => sockets.length === 3 && cti.getCalls().length === 1 && cti.getCalls()[0].state === "held");
  assert.deepStrictEqual(last().sent.find((m) => m.method === "session.resume").params, {resumeToken: "t2", lastSeq: 20});

  // The bridge lost the session (4001): sign in again with the credentials held in memory.
  behaviour["session.resume"] = () => ({error: {code: 4001, message: "Session expired; sign in again"}});
  behaviour["session.login"] = () => ({result: {sessionId: "s2", resumeToken: "t9", agent: AGENT, calls: [], seq: 0}});
  last().drop(1006);
  await until("signed in again", () => sockets.length === 4 && last().methods().includes("session.login")
    && cti.getConnectionState() === "connected");
  assert.deepStrictEqual(last().sent.find((m) => m.method === "session.login").params,
    {agentId: "1001", password: "pw", extension: "71001"});
  assert.strictEqual(cti.getCalls().length, 0);
  assert.ok(seen.states.includes("reconnecting"));

  // Signed out elsewhere: the session ends here too, and the credentials go.
  last().push(note("session.ended", {seq: 1, reason: "logout"}));
  assert.deepStrictEqual(seen.loggedOut, ["logout"]);
  assert.strictEqual(cti.getAgent(), null);
  await rejects(cti.answer(), "NOT_SIGNED_IN");
  const before = sockets.length;
  last().drop(1000);
  await until("reconnected, not signed in", () => sockets.length === before + 1 && cti.getConnectionState() === "connected");
  assert.ok(!last().methods().includes("session.login") && !last().methods().includes("session.resume"));

  cti.destroy();
  assert.strictEqual(cti.getConnectionState(), "disconnected");
  await rejects(cti.makeCall("1"), "DESTROYED");
  console.log("SMOKE OK");
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_smoke_in_node(tmp_path: Path) -> None:
    node = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "smoke.js"
    script.write_text(SMOKE, encoding="utf-8")
    result = subprocess.run([node, str(script), str(JS_PATH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SMOKE OK" in result.stdout
