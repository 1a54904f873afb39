"""Gadget mode and the two protocol methods of cti-toolbar.js, in Node against a scripted bridge.

``CtiToolbar.init({mode: "gadget", credentials})`` signs in by itself (asking a credentials function
again before each sign-in), retries while the bridge or Finesse is away but not after Finesse refused
the credentials; a blocked pop is reported with ``screenpop.blocked``; ``lookupCustomer`` sends
``customer.lookup``. The browser tests (tests/e2e/test_gadgets.py) run it inside the gadgets.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS_PATH = ROOT / "static" / "cti-toolbar.js"

SMOKE = r"""
"use strict";
const fs = require("fs");
const vm = require("vm");
const assert = require("assert");

const sockets = [];
const AGENT = {id: "1001", loginName: "agent1001", firstName: "Mia", lastName: "Brown", extension: "71001",
  state: "NOT_READY", reasonCode: null, pendingState: "", stateSince: "", roles: ["Agent"], teamId: "1", teamName: "Sales"};
let logins = [];
const behaviour = {
  "session.ping": () => ({result: {at: new Date().toISOString()}}),
  "session.login": (p) => {
    logins.push(p);
    return logins.length === 1 ? {error: {code: 5030, message: "Finesse is unavailable"}}
      : {result: {sessionId: "s1", resumeToken: "t1", agent: AGENT, calls: [], seq: 0}};
  },
  "agent.reasonCodes": () => ({result: []}),
  "agent.wrapUpReasons": () => ({result: []}),
  "customer.lookup": (p) => ({result: {contact: {id: "c1", name: "Dana", phones: [p.number], attributes: {},
    updatedAt: "", version: 1}, records: []}}),
};

class FakeSocket {
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = []; sockets.push(this);
    setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}); }, 1);
  }
  send(text) {
    const message = JSON.parse(text);
    this.sent.push(message);
    const handler = behaviour[message.method];
    const out = handler ? handler(message.params || {}, this) : {result: {}};
    if (out) setTimeout(() => this.push(Object.assign({jsonrpc: "2.0", id: message.id}, out)), 1);
  }
  close() { this.readyState = 3; setTimeout(() => { if (this.onclose) this.onclose({code: 1000}); }, 1); }
  push(message) { if (this.readyState === 1 && this.onmessage) this.onmessage({data: JSON.stringify(message)}); }
  methods() { return this.sent.map((m) => m.method); }
}

const window = {
  WebSocket: FakeSocket, console, setTimeout, clearTimeout, setInterval, clearInterval, URL,
  location: {href: "https://finesse.example.com/desktop/", origin: "https://finesse.example.com"},
  navigator: {onLine: true}, open: () => null,
  addEventListener() {}, removeEventListener() {},
  document: {currentScript: {src: "https://bridge.example.com/static/cti-toolbar.js"},
    addEventListener() {}, removeEventListener() {}, getElementsByTagName: () => [], visibilityState: "visible"},
};
window.window = window;
vm.createContext(window);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), window, {filename: "cti-toolbar.js"});

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(what, fn, ms = 3000) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (fn()) return; await wait(5); }
  throw new Error("timed out waiting for " + what);
}
const note = (method, params) => ({jsonrpc: "2.0", method, params: Object.assign({at: new Date().toISOString()}, params)});
const plain = (value) => JSON.parse(JSON.stringify(value));

(async () => {
  // Signs in by itself; a bridge that says Finesse is away (5030) is tried again, with fresh credentials.
  let asked = 0;
  const errors = [];
  const blocked = [];
  const cti = window.CtiToolbar.init({
    mode: "gadget", reconnect: {minDelay: 5, maxDelay: 20}, timeout: 500,
    credentials: () => { asked++; return {agentId: "1001", token: "sso-" + asked, extension: "71001"}; },
    onError: (e) => errors.push(e.code),
    onScreenPop: () => false,
  });
  cti.on("screenPopBlocked", (pop) => blocked.push(pop.callId));
  await until("signed in", () => cti.getAgent() !== null && cti.getConnectionState() === "connected");
  assert.deepStrictEqual(plain(logins), [{agentId: "1001", token: "sso-1", extension: "71001"},
                                         {agentId: "1001", token: "sso-2", extension: "71001"}]);
  assert.deepStrictEqual(errors, [5030]);
  const sock = sockets[sockets.length - 1];

  // A blocked tab pop: the screenPopBlocked event and screenpop.blocked to the bridge.
  sock.push(note("call.screenPop", {seq: 1, callId: "c1", url: "https://crm.example.com/c?n=1", method: "GET", target: "tab"}));
  assert.deepStrictEqual(blocked, ["c1"]);
  await until("screenpop.blocked", () => sock.methods().includes("screenpop.blocked"));
  assert.deepStrictEqual(sock.sent.find((m) => m.method === "screenpop.blocked").params,
    {callId: "c1", url: "https://crm.example.com/c?n=1"});

  // lookupCustomer -> customer.lookup.
  const found = await cti.lookupCustomer("+15550102030");
  assert.strictEqual(found.contact.name, "Dana");
  assert.deepStrictEqual(sock.sent.find((m) => m.method === "customer.lookup").params, {number: "+15550102030"});

  // The bridge lost the session: signing in again asks for the credentials again (a renewed SSO token).
  behaviour["session.resume"] = () => ({error: {code: 4001, message: "Session expired"}});
  sock.readyState = 3; sock.onclose({code: 1006});
  await until("signed in again", () => sockets.length === 2 && sockets[1].methods().includes("session.login")
    && cti.getConnectionState() === "connected");
  assert.strictEqual(sockets[1].sent.find((m) => m.method === "session.login").params.token, "sso-3");
  cti.destroy();

  // Refused credentials (4010) are not tried again; missing ones are never sent.
  logins = [];
  behaviour["session.login"] = (p) => { logins.push(p); return {error: {code: 4010, message: "Unauthorized"}}; };
  const refused = [];
  const second = window.CtiToolbar.init({mode: "gadget", reconnect: {minDelay: 5, maxDelay: 20},
    credentials: {agentId: "1001", password: "wrong", extension: "71001"}, onError: (e) => refused.push(e.code)});
  await until("refused", () => refused.length === 1);
  await wait(80);
  assert.deepStrictEqual(refused, [4010]);
  assert.strictEqual(logins.length, 1);
  assert.strictEqual(second.getAgent(), null);
  second.destroy();

  const missing = [];
  const third = window.CtiToolbar.init({mode: "gadget", credentials: {agentId: "1001", extension: "71001"},
    onError: (e) => missing.push(e.code)});
  await until("invalid", () => missing.length === 1);
  assert.deepStrictEqual(missing, ["INVALID_ARGUMENT"]);
  assert.strictEqual(logins.length, 1);
  third.destroy();
  console.log("GADGET OK");
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_gadget_mode_in_node(tmp_path: Path) -> None:
    node = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "gadget.js"
    script.write_text(SMOKE, encoding="utf-8")
    result = subprocess.run([node, str(script), str(JS_PATH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GADGET OK" in result.stdout
