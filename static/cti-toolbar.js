/*!
 * cti-toolbar.js: the embeddable CTI toolbar and headless SDK of the CTI bridge for Cisco Finesse.
 * Plain ES2020, no dependencies, no build step; one global, CtiToolbar.
 * Guide: docs/toolbar.md. Types: cti-toolbar.d.ts. Protocol: bridge/protocol/openrpc.json.
 */
(function (root) {
  "use strict";

  const doc = root.document;
  const VERSION = "1.0.0";
  // Read while the script runs: document.currentScript is null afterwards. The stylesheet and the
  // default server are found next to the script, so the page may live on another origin.
  const SCRIPT_URL = scriptUrl();

  /** Every notification the bridge sends (openrpc.json x-notifications); a test keeps them equal. */
  const NOTIFICATIONS = ["agent.stateChanged", "agent.error", "call.ringing", "call.dialing", "call.answered",
    "call.updated", "call.ended", "call.screenPop", "call.error", "connection.changed", "session.ended"];

  /** The toolbar's own events. */
  const OWN_EVENTS = ["loggedIn", "loggedOut", "snapshot", "connectionStateChanged", "screenPop",
    "screenPopBlocked", "callLog", "error"];

  /** Config callbacks and the event each one follows (onScreenPop: call.screenPop, once across tabs, and its
   * return value decides whether the toolbar does the default). */
  const CALLBACKS = {
    onScreenPop: "call.screenPop",
    onCallLog: "callLog",
    onCallRinging: "call.ringing",
    onCallAnswered: "call.answered",
    onCallEnded: "call.ended",
    onAgentStateChanged: "agent.stateChanged",
    onConnectionChanged: "connectionStateChanged",
    onError: "error",
  };

  const EVENTS = new Set(NOTIFICATIONS.concat(OWN_EVENTS));
  const SETTABLE = ["READY", "NOT_READY", "WORK", "WORK_READY"];
  // The call buttons, in the order an agent reads them (a call's `actions` decide which show).
  const BUTTONS = ["answer", "retrieve", "hold", "consult", "transfer", "conference", "blindTransfer",
    "sendDigits", "end"];
  const LIVE = ["ringing", "dialing", "active", "held", "failed"];
  // session.ended reasons after which the toolbar signs in again by itself; any other reason
  // (logout, a supervisor or Finesse signing the agent out) ends the sign-in for good.
  const RECOVERABLE = ["shutdown", "expired", "restart"];
  const LOCK_HOLD_MS = 600000;

  /** Every piece of text the toolbar shows. Translate by overriding keys (config.messages). */
  const MESSAGES = {
    toolbar: "Phone toolbar",
    connection_connecting: "Connecting…",
    connection_connected: "Connected",
    connection_reconnecting: "Reconnecting…",
    connection_disconnected: "Offline",
    connection_degraded: "Finesse degraded",
    connection_failover: "Finesse failing over…",
    connection_finesse_reconnecting: "Finesse reconnecting…",
    connection_finesse_disconnected: "Finesse unreachable",
    retry_in: "retry in {seconds} s",
    retry_now: "Retry now",
    login_title: "Sign in to the phone",
    login_agent: "Agent ID or login name",
    login_password: "Password",
    login_extension: "Extension",
    login_submit: "Sign in",
    login_busy: "Signing in…",
    login_missing: "Enter your agent ID, password and extension.",
    agent_extension: "Extension {extension}",
    state_select: "Change state",
    state_timer: "Time in state",
    state_pending: "Next: {state}",
    state_READY: "Ready",
    state_NOT_READY: "Not Ready",
    state_RESERVED: "Reserved",
    state_TALKING: "Talking",
    state_HOLD: "On hold",
    state_WORK: "Work",
    state_WORK_READY: "Work Ready",
    state_LOGOUT: "Signed out",
    state_UNKNOWN: "Unknown",
    option_ready: "Ready",
    option_not_ready: "Not Ready",
    option_not_ready_reason: "Not Ready – {label}",
    option_logout: "Sign out",
    option_logout_reason: "Sign out – {label}",
    state_enter_hint: "Press Enter to apply, Escape to cancel.",
    calls: "Calls",
    no_calls: "No calls",
    call_unknown: "Unknown",
    call_consult: "Consult",
    call_inbound: "Incoming",
    call_outbound: "Outgoing",
    call_internal: "Internal",
    call_state_ringing: "Ringing",
    call_state_dialing: "Dialing",
    call_state_active: "Connected",
    call_state_held: "On hold",
    call_state_wrapup: "Wrap-up",
    call_state_ended: "Ended",
    call_state_failed: "Failed",
    call_timer: "Call time",
    call_variables: "Call data",
    call_queue: "Queue {queue}",
    action_answer: "Answer",
    action_hold: "Hold",
    action_retrieve: "Resume",
    action_end: "End",
    action_consult: "Consult",
    action_transfer: "Transfer",
    action_transfer_hint: "Transfer the caller to the consulted party",
    action_conference: "Conference",
    action_conference_hint: "Join the caller and the consulted party",
    action_blindTransfer: "Blind transfer",
    action_sendDigits: "Send tones",
    action_setWrapUp: "Apply",
    wrapup_label: "Wrap-up reason",
    wrapup_placeholder: "Wrap-up reason…",
    wrapup_choose: "Choose a wrap-up reason first.",
    dialpad: "Dial pad",
    dialpad_toggle: "Keypad",
    dial_number: "Number",
    dial_digits: "Digits",
    dial_call: "Call",
    dial_consult: "Consult",
    dial_transfer: "Blind transfer",
    dial_dtmf: "Send tones",
    dial_backspace: "Delete last digit",
    pad_for: "{action} · {number}",
    pad_close: "Close",
    number_needed: "Enter a number first.",
    digits_needed: "Enter the digits to send first.",
    popup_blocked: "The browser blocked a screen pop.",
    popup_open: "Open it",
    dismiss: "Dismiss",
    announce_ringing: "Incoming call from {number}",
    sign_in_to_dial: "Sign in to place calls.",
    session_ended: "You were signed out ({reason}).",
    relogin_failed: "Signing in again failed: {message}",
    error_TIMEOUT: "The CTI bridge did not answer in time.",
    error_NOT_CONNECTED: "Not connected to the CTI bridge.",
    error_NOT_SIGNED_IN: "Not signed in.",
    error_ALREADY_SIGNED_IN: "Already signed in.",
    error_INVALID_ARGUMENT: "{message}",
    error_NO_CALL: "No call allows {action} now.",
    error_DESTROYED: "The toolbar was closed.",
    error_4001: "Your session has ended; sign in again.",
    error_4003: "Not allowed.",
    error_4004: "That call is gone.",
    error_4010: "Finesse refused the agent ID or password.",
    error_4029: "{message}",  // the bridge says how long to wait (data.retryAfter)
    error_4090: "Finesse refused: {message}",
    error_5030: "Finesse is unavailable.",
    error_5040: "Finesse did not answer in time.",
    "error_-32602": "{message}",
  };

  // Small inline icons (24x24 paths); decoration only, every button also has text.
  const ICONS = {
    phone: "M6.6 10.8a15 15 0 0 0 6.6 6.6l2.2-2.2a1 1 0 0 1 1-.25c1.1.37 2.3.57 3.6.57a1 1 0 0 1 1 1V20a1 1 0 0 1-1 1A17 17 0 0 1 3 4a1 1 0 0 1 1-1h3.5a1 1 0 0 1 1 1c0 1.25.2 2.45.57 3.57a1 1 0 0 1-.25 1z",
    hangup: "M12 9c-1.6 0-3.15.25-4.6.72v3.1a1 1 0 0 1-.56.9 11.5 11.5 0 0 0-2.66 1.85 1 1 0 0 1-1.4 0L.3 13.08a1 1 0 0 1 0-1.41A16.9 16.9 0 0 1 12 7c4.5 0 8.6 1.75 11.7 4.67a1 1 0 0 1 0 1.41l-2.48 2.49a1 1 0 0 1-1.4 0 11.3 11.3 0 0 0-2.67-1.85 1 1 0 0 1-.56-.9v-3.1A15 15 0 0 0 12 9z",
    pause: "M7 5h4v14H7zm6 0h4v14h-4z",
    play: "M8 5v14l11-7z",
    arrow: "M4 11h12.2l-4.6-4.6L13 5l7 7-7 7-1.4-1.4 4.6-4.6H4z",
    people: "M16 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zm-8 0a3 3 0 1 0 0-6 3 3 0 0 0 0 6zm0 2c-2.3 0-7 1.2-7 3.5V19h14v-2.5C15 14.2 10.3 13 8 13zm8 0-1 .05c1.2.85 2 2 2 3.45V19h6v-2.5c0-2.3-4.7-3.5-7-3.5z",
    personAdd: "M15 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM6 10V7H4v3H1v2h3v3h2v-3h3v-2H6zm9 4c-2.7 0-8 1.3-8 4v2h16v-2c0-2.7-5.3-4-8-4z",
    merge: "M17 20.4 18.4 19 15 15.6 13.6 17l3.4 3.4zM7.5 8H11v5.6L5.6 19 7 20.4l6-6V8h3.5L12 3.5 7.5 8z",
    keypad: "M5 3h3v3H5zm5.5 0h3v3h-3zM16 3h3v3h-3zM5 8.5h3v3H5zm5.5 0h3v3h-3zm5.5 0h3v3h-3zM5 14h3v3H5zm5.5 0h3v3h-3zm5.5 0h3v3h-3zm-5.5 5.5h3v3h-3z",
  };
  const VERB_ICONS = {answer: "phone", end: "hangup", hold: "pause", retrieve: "play", consult: "personAdd",
    transfer: "merge", blindTransfer: "arrow", conference: "people", sendDigits: "keypad"};

  /** An error from the bridge (numeric JSON-RPC code) or from the toolbar itself (a string code). */
  class CtiError extends Error {
    constructor(code, message, extra) {
      super(message);
      this.name = "CtiError";
      this.code = code;
      this.data = extra && extra.data !== undefined ? extra.data : null;
      this.method = (extra && extra.method) || null;
    }

    toJSON() {
      return {name: this.name, code: this.code, message: this.message, data: this.data, method: this.method};
    }
  }

  // -- helpers without state ------------------------------------------------------------------------

  function scriptUrl() {
    try {
      const current = doc && doc.currentScript;
      if (current && current.src) return current.src;
      const scripts = doc ? doc.getElementsByTagName("script") : [];
      for (let i = scripts.length - 1; i >= 0; i--) {
        if (/cti-toolbar(\.min)?\.js([?#]|$)/.test(scripts[i].src)) return scripts[i].src;
      }
    } catch (e) { /* no document: headless outside a browser */ }
    return root.location ? root.location.href : "";
  }

  /** ws:// or wss:// URLs; relative ones ("/rpc") resolve against the script's own address. */
  function serverList(servers) {
    const list = (Array.isArray(servers) ? servers : servers ? [servers] : ["/rpc"]).map((server) => {
      const url = new URL(String(server), SCRIPT_URL || undefined);
      if (url.protocol === "http:") url.protocol = "ws:";
      if (url.protocol === "https:") url.protocol = "wss:";
      url.hash = "";
      return url.href;
    });
    if (!list.length) throw new TypeError("CtiToolbar: config.servers is empty");
    return list;
  }

  function clone(value) {
    return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
  }

  function cleanNumber(value) {
    return String(value == null ? "" : value).trim().replace(/[\s().\-/]/g, "");
  }

  function telNumber(href) {
    let number = href.replace(/^tel:/i, "").split(/[;?]/)[0];
    try { number = decodeURIComponent(number); } catch (e) { /* keep it as written */ }
    return cleanNumber(number);
  }

  function stringValues(variables) {
    const out = {};
    for (const name of Object.keys(variables)) out[name] = variables[name] == null ? "" : String(variables[name]);
    return out;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(String(url), root.location ? root.location.href : undefined);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function duration(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const two = (n) => String(n).padStart(2, "0");
    const minutes = Math.floor(total / 60);
    return minutes >= 60 ? `${Math.floor(minutes / 60)}:${two(minutes % 60)}:${two(total % 60)}`
      : `${two(minutes)}:${two(total % 60)}`;
  }

  function h(tag, props, ...children) {
    const el = doc.createElement(tag);
    for (const key in props || {}) {
      const value = props[key];
      if (value == null || value === false) continue;
      if (key === "text") el.textContent = value;
      else if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) if (child != null && child !== false) el.append(child);
    return el;
  }

  function icon(name) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = doc.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon");
    const path = doc.createElementNS(ns, "path");
    path.setAttribute("d", ICONS[name]);
    svg.append(path);
    return svg;
  }

  // -- one toolbar ----------------------------------------------------------------------------------

  function init(options) {
    const config = Object.assign({}, options);
    const ms = (value, fallback) => (typeof value === "number" && value > 0 ? value : fallback);
    const timeout = ms(config.timeout, 10000);
    const loginTimeout = ms(config.loginTimeout, Math.max(30000, timeout));
    const retry = config.reconnect || {};
    const minDelay = ms(retry.minDelay, 500);
    const maxDelay = ms(retry.maxDelay, 30000);
    const connectTimeout = ms(retry.connectTimeout, 10000);
    const heartbeat = config.heartbeat === 0 ? 0 : ms(config.heartbeat, 25000);
    const servers = serverList(config.servers);
    const layout = config.layout === "panel" ? "panel" : "bar";
    // Gadget mode (a Finesse gadget, docs/gadgets.md): sign in by itself with config.credentials (the
    // agent's Finesse identity, in memory), never show the sign-in form, leave agent state and dialling
    // to the Finesse desktop (the stylesheet hides them).
    const gadget = config.mode === "gadget";
    // A gadget's frame: its path, and in Finesse (Shindig's /gadgets/ifr) the gadget's own URL (url=).
    const lockScope = gadget && root.location
      ? `${root.location.pathname}${(/[?&]url=([^&#]*)/.exec(root.location.search || "") || ["", ""])[1]}:` : "";
    const labels = config.variableLabels || {};

    const t = (key, vars) => {
      const own = config.messages && Object.prototype.hasOwnProperty.call(config.messages, key);
      const text = String(own ? config.messages[key] : key in MESSAGES ? MESSAGES[key] : key);
      return text.replace(/\{(\w+)\}/g, (all, name) => (vars && vars[name] != null ? String(vars[name]) : all));
    };

    // -- state: the only copy (getters and listeners get clones) --
    let agent = null;
    const calls = new Map();
    let reasonCodes = {NOT_READY: [], LOGOUT: []};
    let wrapUpReasons = [];
    let resumeToken = null;
    let credentials = null; // this closure only: to sign in again when the bridge lost the session
    let lastSeq = -1;
    let sessionReady = false;
    let signedIn = false; // the UI's view: true once the lists are loaded after a sign-in
    let loginBusy = false;
    let finesse = {state: "connected", node: ""};
    let connState = "";
    let clockOffset = 0; // bridge clock minus ours (ms), from session.ping
    let stateSeenAt = Date.now();
    const seenRecords = new Set();

    // -- the socket --
    let ws = null;
    let generation = 0;
    let socket = "connecting"; // connecting | reconnecting | open | disconnected
    let currentServer = null;
    let openedAt = 0;
    let serverIndex = 0;
    let failedInRound = 0;
    let attempt = 0;
    let retryTimer = 0;
    let retryAt = 0;
    let expectClose = false;
    let warned = false;
    let heartbeatTimer = 0;
    let destroyed = false;
    let gadgetTries = 0;
    let gadgetTimer = 0;
    let loginNotice = null;
    const pending = new Map();
    const waiting = [];
    let nextId = 1;

    const listeners = new Map();
    const host = config.element == null ? null
      : typeof config.element === "string" ? doc.querySelector(config.element) : config.element;
    if (config.element != null && !host) throw new Error(`CtiToolbar: no element matches ${config.element}`);
    let ui = null;

    // -- events --

    function on(name, fn) {
      if (!EVENTS.has(name)) throw new TypeError(`CtiToolbar: unknown event "${name}"`);
      if (typeof fn !== "function") throw new TypeError("CtiToolbar: on() needs a function");
      const entry = {fn};
      if (!listeners.has(name)) listeners.set(name, []);
      listeners.get(name).push(entry);
      return {
        unsubscribe() {
          const list = listeners.get(name) || [];
          const i = list.indexOf(entry);
          if (i >= 0) list.splice(i, 1);
        },
      };
    }

    function emit(name, ...args) {
      for (const entry of (listeners.get(name) || []).slice()) {
        try {
          entry.fn(...args);
        } catch (e) {
          console.error(`CtiToolbar: a "${name}" listener failed`, e);
        }
      }
    }

    for (const name of Object.keys(CALLBACKS)) {
      if (name !== "onScreenPop" && typeof config[name] === "function") on(CALLBACKS[name], config[name]);
    }

    function fail(code, vars, extra) {
      return new CtiError(code, t("error_" + code, Object.assign({message: ""}, vars)), extra);
    }

    function errorText(error) {
      const code = error && error.code;
      const key = "error_" + code;
      const message = (error && error.message) || String(error);
      return code != null && (key in MESSAGES || (config.messages && key in config.messages))
        ? t(key, {message}) : message;
    }

    /** An error nobody's promise receives (UI actions, async refusals): the error event and a notice. */
    function fault(error) {
      const err = error instanceof CtiError ? error : new CtiError("ERROR", (error && error.message) || String(error));
      emit("error", err);
      notify(errorText(err));
    }

    // -- JSON-RPC requests --

    function hasSession() {
      return resumeToken !== null || credentials !== null;
    }

    function request(method, params, opts) {
      const options = opts || {};
      return new Promise((resolve, reject) => {
        const req = {method, params, resolve, reject, session: options.session !== false,
          onResult: options.onResult, id: 0, done: false, timer: 0};
        if (destroyed) return settle(req, fail("DESTROYED", null, {method}));
        if (req.session && !hasSession()) return settle(req, fail("NOT_SIGNED_IN", null, {method}));
        req.timer = setTimeout(() => settle(req, fail("TIMEOUT", null, {method})), options.timeout || timeout);
        waiting.push(req);
        flush();
      });
    }

    function flush() {
      if (!ws || socket !== "open") return;
      for (let i = 0; i < waiting.length;) {
        const req = waiting[i];
        if (req.session && !sessionReady) {
          i++;
          continue;
        }
        waiting.splice(i, 1);
        req.id = nextId++;
        pending.set(req.id, req);
        const message = {jsonrpc: "2.0", id: req.id, method: req.method};
        if (req.params) message.params = req.params;
        try {
          ws.send(JSON.stringify(message));
        } catch (e) {
          settle(req, fail("NOT_CONNECTED", null, {method: req.method}));
        }
      }
    }

    /** Every request settles here, once: a result, an error, the timeout or a lost connection. */
    function settle(req, error, result) {
      if (req.done) return;
      req.done = true;
      clearTimeout(req.timer);
      if (req.id) pending.delete(req.id);
      const i = waiting.indexOf(req);
      if (i >= 0) waiting.splice(i, 1);
      if (error) req.reject(error);
      else req.resolve(result);
    }

    function onMessage(text) {
      let data;
      try {
        data = JSON.parse(text);
      } catch (e) {
        return;
      }
      for (const message of Array.isArray(data) ? data : [data]) {
        if (!message || typeof message !== "object") continue;
        if (typeof message.method === "string" && message.id === undefined) notification(message.method, message.params || {});
        else if (message.id != null) response(message);
        else if (message.error) console.warn("CtiToolbar: the bridge refused a message:", message.error.message);
      }
    }

    function response(message) {
      const req = pending.get(message.id);
      if (!req) return; // timed out already
      if (message.error) {
        const e = message.error;
        const error = new CtiError(e.code, e.message || "", {data: e.data, method: req.method});
        settle(req, error);
        if (e.code === 4001 && req.session) sessionLost();
        return;
      }
      if (req.onResult) {
        // Login and resume results are applied here, before the next message (a replayed event) is read.
        try {
          req.onResult(message.result);
        } catch (e) {
          settle(req, e);
          return;
        }
      }
      settle(req, null, message.result);
    }

    // -- the connection: servers in order, backoff with jitter, resume, sign in again --

    function connect() {
      if (destroyed || ws) return;
      clearTimeout(retryTimer);
      retryTimer = 0;
      retryAt = 0;
      if (root.navigator && root.navigator.onLine === false) {
        setSocket("disconnected"); // the "online" event brings us back
        return;
      }
      const url = servers[serverIndex];
      const gen = ++generation;
      let open = false;
      let sock;
      try {
        sock = new root.WebSocket(url);
      } catch (e) {
        console.warn(`CtiToolbar: cannot open ${url}: ${e.message}`);
        setTimeout(() => { if (gen === generation) closed(false, 0); }, 0);
        return;
      }
      ws = sock;
      const guard = setTimeout(() => { if (!open && gen === generation) abandon(false); }, connectTimeout);
      sock.onopen = () => {
        clearTimeout(guard);
        if (gen !== generation) return;
        open = true;
        opened(url);
      };
      sock.onmessage = (event) => { if (gen === generation) onMessage(event.data); };
      sock.onclose = (event) => {
        clearTimeout(guard);
        if (gen === generation) closed(open, event.code);
      };
      sock.onerror = () => {}; // a close event follows
      setSocket(hasSession() ? "reconnecting" : "connecting");
    }

    /** Give up on the current socket now (a dead connection may take minutes to report its close). */
    function abandon(wasOpen) {
      const sock = ws;
      generation++;
      try { if (sock) sock.close(); } catch (e) { /* closing anyway */ }
      closed(wasOpen, 0);
    }

    function opened(url) {
      socket = "open";
      currentServer = url;
      openedAt = Date.now();
      failedInRound = 0;
      startHeartbeat();
      ping();
      if (resumeToken) resumeSession();
      else if (credentials) signInAgain();
      updateConnection();
      flush();
    }

    function closed(wasOpen, code) {
      ws = null;
      stopHeartbeat();
      sessionReady = false;
      for (const req of Array.from(pending.values())) settle(req, fail("NOT_CONNECTED", null, {method: req.method}));
      if (destroyed) return;
      let delay;
      if (!wasOpen) {
        failedInRound++;
        serverIndex = (serverIndex + 1) % servers.length;
        if (failedInRound % servers.length !== 0) {
          delay = 0; // the next server, at once
        } else {
          delay = backoff();
          if (!warned) {
            warned = true;
            const origin = root.location ? root.location.origin : "this page";
            console.warn(`CtiToolbar: cannot reach ${servers.join(", ")}; retrying. Is the bridge running, and is ` +
              `${origin} in its ALLOWED_ORIGINS?`);
          }
        }
      } else {
        if (Date.now() - openedAt > 15000) attempt = 0; // it worked for a while: start the backoff over
        if (code === 1012 || code === 1001) serverIndex = (serverIndex + 1) % servers.length; // restarting
        delay = expectClose ? 0 : backoff();
      }
      expectClose = false;
      clearTimeout(retryTimer);
      retryAt = Date.now() + delay;
      retryTimer = setTimeout(connect, delay);
      setSocket(hasSession() ? "reconnecting" : "connecting");
    }

    function backoff() {
      const base = Math.min(maxDelay, minDelay * Math.pow(2, attempt));
      attempt = Math.min(attempt + 1, 30);
      return base / 2 + Math.random() * (base / 2); // jitter: many agents must not come back at once
    }

    function setSocket(state) {
      socket = state;
      updateConnection();
    }

    function startHeartbeat() {
      stopHeartbeat();
      if (heartbeat) heartbeatTimer = setInterval(ping, heartbeat);
    }

    function stopHeartbeat() {
      clearInterval(heartbeatTimer);
      heartbeatTimer = 0;
    }

    /** session.ping: keeps the clock offset fresh and notices a dead socket (laptop sleep, network change). */
    function ping() {
      if (socket !== "open") return;
      const sent = Date.now();
      request("session.ping", null, {session: false, timeout: Math.min(timeout, heartbeat || timeout)})
        .then((result) => {
          const at = Date.parse(result && result.at);
          if (at) clockOffset = at - (sent + Date.now()) / 2;
        })
        .catch((e) => { if (e.code === "TIMEOUT" && socket === "open") abandon(true); });
    }

    function resumeSession() {
      sessionReady = false;
      request("session.resume", {resumeToken, lastSeq: Math.max(0, lastSeq)}, {session: false, onResult(result) {
        resumeToken = result.resumeToken;
        if (result.snapshot) {
          lastSeq = result.snapshot.seq;
          replaceState(result.snapshot.agent, result.snapshot.calls);
          emit("snapshot", {agent: clone(agent), calls: getCalls()});
        }
        sessionUp();
      }}).catch((e) => {
        if (e.code === 4001) { // the bridge no longer has the session (grace period over, bridge restarted)
          resumeToken = null;
          if (credentials) signInAgain();
          else endSession("expired", t("error_4001"));
        } else if (e.code !== "NOT_CONNECTED" && socket === "open") {
          abandon(true);
        }
      });
    }

    function signInAgain() {
      if (!credentials || socket !== "open") return;
      if (gadget && typeof config.credentials === "function") {
        // The container may have renewed them since (an SSO token): ask again.
        try {
          const fresh = loginParams(config.credentials());
          if (fresh) credentials = Object.freeze(fresh);
        } catch (e) { /* keep the ones that worked */ }
      }
      sessionReady = false;
      updateConnection();
      request("session.login", credentials, {session: false, timeout: loginTimeout, onResult(result) {
        applyLogin(result);
        emit("snapshot", {agent: clone(agent), calls: getCalls()});
      }}).then(() => loadLists()).then(render).catch((e) => {
        if (e.code === 4010 || e.code === 4003 || e.code === -32602) {
          endSession("rejected", t("relogin_failed", {message: errorText(e)}));
          fault(e);
        } else if (e.code !== "NOT_CONNECTED" && socket === "open") {
          abandon(true); // Finesse unavailable or slow: try again after the backoff
        }
      });
    }

    function sessionLost() {
      if (!hasSession()) return;
      resumeToken = null;
      sessionReady = false;
      if (credentials) signInAgain();
      else endSession("expired", t("error_4001"));
    }

    function sessionUp() {
      sessionReady = true;
      attempt = 0;
      failedInRound = 0;
      flush();
      render();
      updateConnection();
    }

    function applyLogin(result) {
      resumeToken = result.resumeToken;
      lastSeq = typeof result.seq === "number" ? result.seq : 0;
      replaceState(result.agent, result.calls);
      sessionUp();
    }

    function replaceState(newAgent, list) {
      setAgent(newAgent);
      calls.clear();
      for (const call of list || []) calls.set(call.id, call);
      render();
    }

    function setAgent(next) {
      if (!next) return;
      const reason = (a) => (a && a.reasonCode ? a.reasonCode.id : "");
      if (!agent || agent.state !== next.state || reason(agent) !== reason(next)) stateSeenAt = Date.now();
      agent = next;
    }

    function loadLists() {
      const get = (method, params) => request(method, params).then((list) => (Array.isArray(list) ? list : []),
        () => []);
      return Promise.all([get("agent.reasonCodes", {category: "NOT_READY"}), get("agent.reasonCodes", {category: "LOGOUT"}),
        get("agent.wrapUpReasons")]).then(([notReady, logout, wrapUps]) => {
        reasonCodes = {NOT_READY: notReady, LOGOUT: logout};
        wrapUpReasons = wrapUps;
      });
    }

    function endSession(reason, message) {
      const was = hasSession() || agent !== null;
      resumeToken = null;
      credentials = null;
      sessionReady = false;
      signedIn = false;
      agent = null;
      calls.clear();
      lastSeq = -1;
      finesse = {state: "connected", node: ""};
      reasonCodes = {NOT_READY: [], LOGOUT: []};
      wrapUpReasons = [];
      for (const req of waiting.slice()) if (req.session) settle(req, fail("NOT_SIGNED_IN", null, {method: req.method}));
      if (ui) ui.loginError.textContent = message || "";
      if (gadget && was) loginNotice = notify(message || t("session_ended", {reason}), "info", 0);
      render();
      updateConnection();
      if (was) emit("loggedOut", {reason});
    }

    function updateConnection() {
      let state;
      if (destroyed) state = "disconnected";
      else if (socket !== "open") state = socket;
      else if (hasSession() && !sessionReady) state = "reconnecting";
      else if (hasSession() && finesse.state !== "connected") state = finesse.state;
      else state = "connected";
      if (ui) renderConnection(state);
      if (state === connState) return;
      const previous = connState || null;
      connState = state;
      if (host) host.setAttribute("data-cti-state", state);
      emit("connectionStateChanged", state, {state, previous, socket, server: currentServer,
        finesse: finesse.state, node: finesse.node});
    }

    // -- notifications --

    function notification(method, params) {
      if (!hasSession() || !agent) return; // before sign-in: the login result's snapshot covers it
      const seq = params.seq;
      if (typeof seq === "number") {
        if (seq <= lastSeq) return; // seen already (a replay overlapping what arrived live)
        if (seq > lastSeq + 1) console.warn(`CtiToolbar: events ${lastSeq + 1}..${seq - 1} missing`);
        lastSeq = seq;
      }
      const p = clone(params);
      switch (method) {
        case "agent.stateChanged":
          setAgent(params.agent);
          render();
          emit(method, p.agent, p);
          break;
        case "call.ringing":
        case "call.dialing":
        case "call.answered":
        case "call.updated":
          if (!params.call || !params.call.id) break;
          calls.set(params.call.id, params.call);
          render();
          if (method === "call.ringing") announce(t("announce_ringing", {number: callNumber(params.call)}));
          emit(method, p.call, p);
          break;
        case "call.ended":
          if (params.call) calls.delete(params.call.id);
          render();
          emit(method, p.call, p.record || null, p);
          if (params.record) callLog(params.record, params.call);
          break;
        case "call.screenPop": {
          const pop = {callId: p.callId, url: p.url, method: p.method || "GET", target: p.target || "tab"};
          if (p.form) pop.form = p.form;
          emit(method, clone(pop), p);
          handlePop(pop, seq);
          break;
        }
        case "call.error":
        case "agent.error":
          emit(method, p);
          fault(new CtiError(p.code, p.message || "", {data: p.data, method}));
          break;
        case "connection.changed":
          finesse = {state: p.state || "connected", node: p.node || ""};
          emit(method, p);
          break;
        case "session.ended":
          emit(method, p);
          expectClose = true; // the bridge closes the socket next
          if (RECOVERABLE.indexOf(p.reason) >= 0 && credentials) {
            resumeToken = null; // this bridge let the session go: sign in again on the next connection
            sessionReady = false;
          } else {
            endSession(p.reason || "ended", p.reason === "logout" ? "" : t("session_ended", {reason: p.reason}));
          }
          break;
        default:
          break;
      }
      updateConnection();
    }

    /** Runs fn in one tab only when several tabs of this origin share the agent (Web Locks). Gadgets share the
     * Finesse desktop's origin: each gadget (its frame's URL) takes its own locks, or one would swallow the other's pops. */
    function once(key, fn) {
      const locks = config.dedupeAcrossTabs !== false && root.navigator && root.navigator.locks;
      if (!locks || typeof locks.request !== "function") return fn();
      let ran = false;
      const run = () => {
        if (!ran) {
          ran = true;
          fn();
        }
      };
      locks.request(`cti-toolbar:${lockScope}${key}`, {ifAvailable: true}, (lock) => {
        if (!lock) {
          ran = true; // another tab has it
          return undefined;
        }
        run();
        return new Promise((resolve) => setTimeout(resolve, LOCK_HOLD_MS));
      }).catch(run);
      return undefined;
    }

    function callLog(record, call) {
      if (!record.id || seenRecords.has(record.id)) return;
      seenRecords.add(record.id);
      if (seenRecords.size > 500) seenRecords.delete(seenRecords.values().next().value);
      once(`log:${record.id}`, () => emit("callLog", clone(record), clone(call)));
    }

    function handlePop(pop, seq) {
      once(`pop:${agent ? agent.id : ""}:${seq}:${pop.callId}`, () => {
        let useDefault = true;
        if (typeof config.onScreenPop === "function") {
          try {
            useDefault = config.onScreenPop(clone(pop)) === false;
          } catch (e) {
            console.error("CtiToolbar: onScreenPop failed; opening the pop the default way", e);
          }
        }
        if (useDefault) openPop(pop);
      });
    }

    /** The default for a pop's target: tab or named window; iframe: the screenPop event (gadgets show it). */
    function openPop(pop) {
      const target = String(pop.target || "tab");
      if (target === "iframe") return emit("screenPop", clone(pop));
      if (target === "callback") return undefined; // onScreenPop's business only
      const url = safeUrl(pop.url);
      if (!url) {
        console.warn("CtiToolbar: screen pop skipped, not an http(s) URL:", pop.url);
        return;
      }
      const name = target.indexOf("window:") === 0 && target.length > 7 ? target.slice(7) : "_blank";
      const post = String(pop.method).toUpperCase() === "POST";
      let win = null;
      try {
        if (post) {
          // Open the window first: that is how a blocked pop-up shows (a form submit never says).
          const windowName = name === "_blank" ? `cti_pop_${Date.now().toString(36)}${Math.random().toString(36).slice(2)}` : name;
          win = root.open("", windowName);
          if (win) postForm(pop, url, windowName);
        } else {
          win = root.open(url, name);
        }
        // Not the "noopener" feature: with it window.open always returns null and a blocked pop-up
        // could not be told apart. Cutting the opener right away protects the page the same way.
        if (win && name === "_blank") win.opener = null;
      } catch (e) {
        win = null;
      }
      if (!win) popBlocked(pop, url, name, post);
    }

    function postForm(pop, url, target) {
      const form = doc.createElement("form");
      form.method = "POST";
      form.action = url;
      form.target = target;
      form.acceptCharset = "UTF-8";
      if (target === "_blank") form.setAttribute("rel", "noopener");
      form.style.display = "none";
      const fields = pop.form || {};
      for (const name of Object.keys(fields)) {
        const input = doc.createElement("input");
        input.type = "hidden";
        input.name = name;
        input.value = String(fields[name]);
        form.append(input);
      }
      (doc.body || doc.documentElement).append(form);
      form.submit();
      form.remove();
    }

    function popBlocked(pop, url, name, post) {
      emit("screenPopBlocked", clone(pop));
      if (hasSession()) { // counted by the bridge for the admin (cti_screenpop_blocked_total)
        const params = {callId: String(pop.callId || "unknown")};
        if (url.length <= 4096) params.url = url;
        request("screenpop.blocked", params).catch(() => {});
      }
      if (!ui) return;
      const link = h("a", {href: url, target: name, rel: name === "_blank" ? "noopener" : null}, t("popup_open"));
      const box = notify(t("popup_blocked"), "popup", 0, link);
      box.setAttribute("data-cti", "popup-blocked");
      box.setAttribute("data-call-id", pop.callId || "");
      link.addEventListener("click", (event) => {
        if (post) {
          event.preventDefault();
          postForm(pop, url, name); // a click may open windows
        }
        box.remove();
      });
    }

    // -- the API: agent --

    /** session.login params from {agentId | loginName, password | token, extension}; null if one is missing. */
    function loginParams(details) {
      const d = details || {};
      const params = {};
      if (d.agentId) params.agentId = String(d.agentId);
      else if (d.loginName) params.loginName = String(d.loginName);
      if (d.password) params.password = String(d.password);
      else if (d.token) params.token = String(d.token);
      if (d.extension) params.extension = String(d.extension);
      return (params.agentId || params.loginName) && (params.password || params.token) && params.extension ? params : null;
    }

    function login(details) {
      const params = loginParams(details);
      if (!params) {
        return Promise.reject(fail("INVALID_ARGUMENT", {message: t("login_missing")}, {method: "session.login"}));
      }
      if (hasSession() || loginBusy) return Promise.reject(fail("ALREADY_SIGNED_IN", null, {method: "session.login"}));
      loginBusy = true;
      render();
      return request("session.login", params, {session: false, timeout: loginTimeout, onResult(result) {
        credentials = Object.freeze(params);
        applyLogin(result);
      }}).then(() => loadLists()).then(() => {
        if (!hasSession()) throw fail("NOT_SIGNED_IN", null, {method: "session.login"});
        signedIn = true;
        const snapshot = {agent: clone(agent), calls: getCalls()};
        render();
        emit("loggedIn", clone(snapshot));
        return snapshot;
      }).finally(() => {
        loginBusy = false;
        render();
      });
    }

    function logout(reasonCodeId) {
      const params = reasonCodeId == null || reasonCodeId === "" ? null : {reasonCodeId: String(reasonCodeId)};
      const signOut = () => request("session.logout", params);
      return signOut().catch((e) => {
        // UCCE signs agents out from NOT_READY only (UCCX also from READY): go NOT_READY first.
        if (e.code !== 4090 || !agent || agent.state !== "READY") throw e;
        return setState("NOT_READY").then(() => stateIs("NOT_READY")).then(signOut);
      }).then(() => {
        expectClose = true; // the bridge ends the session and closes the socket
        endSession("logout", "");
      });
    }

    /** Gadget mode: sign in with config.credentials; a failure shows as a notice (there is no form) and,
     * unless the credentials themselves were refused, is tried again with backoff. */
    function gadgetLogin() {
      gadgetTimer = 0;
      if (destroyed || hasSession() || loginBusy) return;
      let details = null;
      try {
        details = typeof config.credentials === "function" ? config.credentials() : config.credentials;
      } catch (e) {
        console.warn("CtiToolbar: config.credentials failed", e);
      }
      login(details).then(() => {
        gadgetTries = 0;
        if (loginNotice) loginNotice.remove();
        loginNotice = null;
      }, (e) => {
        if (e.code === "ALREADY_SIGNED_IN" || e.code === "DESTROYED") return;
        if (loginNotice) loginNotice.remove();
        loginNotice = notify(errorText(e), "error", 0);
        emit("error", e);
        if ([4010, 4003, -32602, "INVALID_ARGUMENT"].indexOf(e.code) < 0) {
          const base = Math.min(maxDelay, minDelay * Math.pow(2, Math.min(gadgetTries++, 30)));
          gadgetTimer = setTimeout(gadgetLogin, base / 2 + Math.random() * (base / 2));
        }
      });
    }

    /** Resolves when the agent is in `state` (Finesse applies state changes after accepting them). */
    function stateIs(state) {
      return new Promise((resolve, reject) => {
        if (agent && agent.state === state) return resolve();
        const timer = setTimeout(() => {
          sub.unsubscribe();
          reject(fail("TIMEOUT", null, {method: "agent.setState"}));
        }, timeout);
        const sub = on("agent.stateChanged", (changed) => {
          if (changed.state !== state) return;
          clearTimeout(timer);
          sub.unsubscribe();
          resolve();
        });
        return undefined;
      });
    }

    function setState(state, reasonCodeId) {
      if (SETTABLE.indexOf(state) < 0) {
        return Promise.reject(fail("INVALID_ARGUMENT", {message: `state must be one of ${SETTABLE.join(", ")}`},
          {method: "agent.setState"}));
      }
      const params = {state};
      if (reasonCodeId != null && reasonCodeId !== "") params.reasonCodeId = String(reasonCodeId);
      return request("agent.setState", params).then(() => undefined);
    }

    // -- the API: calls --

    function makeCall(number, opts) {
      const to = cleanNumber(number);
      if (!to) return Promise.reject(fail("INVALID_ARGUMENT", {message: "makeCall needs a number"}, {method: "call.make"}));
      const params = {to};
      const variables = opts && opts.variables;
      if (variables && typeof variables === "object" && Object.keys(variables).length) params.variables = stringValues(variables);
      return request("call.make", params).then(() => undefined);
    }

    /** The call a verb applies to when the caller gave no id: the one whose actions allow it. */
    function pickCall(verb) {
      const order = verb === "setWrapUp" ? ["wrapup", "active", "held", "dialing"]
        : ["active", "ringing", "held", "dialing", "wrapup", "failed"];
      const allowed = Array.from(calls.values()).filter((c) => (c.actions || []).indexOf(verb) >= 0);
      allowed.sort((a, b) => (order.indexOf(a.state) + 99) % 99 - (order.indexOf(b.state) + 99) % 99);
      return allowed.length ? allowed[0].id : null;
    }

    function callAction(verb, callId, extra) {
      const method = `call.${verb}`;
      if (!hasSession()) return Promise.reject(fail("NOT_SIGNED_IN", null, {method}));
      const id = callId == null || callId === "" ? pickCall(verb) : String(callId);
      if (!id) return Promise.reject(fail("NO_CALL", {action: verb}, {method}));
      return request(method, Object.assign({callId: id}, extra)).then(() => undefined);
    }

    function needs(value, what, method) {
      return value ? null : Promise.reject(fail("INVALID_ARGUMENT", {message: `${method} needs ${what}`}, {method}));
    }

    const answer = (callId) => callAction("answer", callId);
    const hold = (callId) => callAction("hold", callId);
    const retrieve = (callId) => callAction("retrieve", callId);
    const end = (callId) => callAction("end", callId);
    const transfer = (callId) => callAction("transfer", callId);
    const conference = (callId) => callAction("conference", callId);

    function consult(callId, number) {
      const to = cleanNumber(number);
      return needs(to, "a number", "call.consult") || callAction("consult", callId, {to});
    }

    function blindTransfer(callId, number) {
      const to = cleanNumber(number);
      return needs(to, "a number", "call.blindTransfer") || callAction("blindTransfer", callId, {to});
    }

    function sendDigits(callId, digits) {
      const value = String(digits == null ? "" : digits).replace(/\s/g, "");
      return needs(value, "digits", "call.sendDigits") || callAction("sendDigits", callId, {digits: value});
    }

    function updateVariables(callId, variables) {
      const ok = variables && typeof variables === "object" && Object.keys(variables).length;
      return needs(ok, "variables", "call.updateVariables")
        || callAction("updateVariables", callId, {variables: stringValues(variables)});
    }

    function setWrapUp(callId, reason) {
      const value = String(reason == null ? "" : reason);
      return needs(value, "a reason", "call.setWrapUp") || callAction("setWrapUp", callId, {reason: value});
    }

    /** The caller's contact and this agent's earlier calls with the number (customer.lookup). */
    function lookupCustomer(number) {
      return request("customer.lookup", {number: String(number == null ? "" : number).slice(0, 64)});
    }

    // -- the API: getters and the rest --

    function getAgent() {
      return agent ? clone(agent) : null;
    }

    function getCalls() {
      return Array.from(calls.values(), clone);
    }

    function getConnectionState() {
      return connState;
    }

    function getReasonCodes(category) {
      return clone(reasonCodes[category || "NOT_READY"] || []);
    }

    function getWrapUpReasons() {
      return clone(wrapUpReasons);
    }

    function reconnect() {
      if (destroyed) return;
      attempt = 0;
      if (ws && socket === "open") abandon(true);
      else if (!ws) connect();
    }

    function destroy() {
      if (destroyed) return;
      destroyed = true;
      clearTimeout(retryTimer);
      clearTimeout(gadgetTimer);
      stopHeartbeat();
      clearInterval(ticker);
      const sock = ws;
      generation++;
      ws = null;
      try { if (sock) sock.close(1000); } catch (e) { /* gone */ }
      for (const req of Array.from(pending.values()).concat(waiting)) settle(req, fail("DESTROYED", null, {method: req.method}));
      credentials = null;
      resumeToken = null;
      if (doc) {
        doc.removeEventListener("click", onDocumentClick);
        doc.removeEventListener("visibilitychange", onVisible);
      }
      if (root.removeEventListener) {
        root.removeEventListener("online", onOnline);
        root.removeEventListener("offline", ping);
      }
      updateConnection();
      if (host) {
        if (host.shadowRoot) host.shadowRoot.replaceChildren();
        for (const name of ["data-cti-toolbar", "data-cti-state", "data-cti-layout", "data-cti-session", "data-cti-ready",
          "data-cti-mode"]) {
          host.removeAttribute(name);
        }
      }
      ui = null;
      listeners.clear();
    }

    // -- click-to-call, network and visibility --

    function onDocumentClick(event) {
      if (event.defaultPrevented || event.button !== 0) return;
      const path = event.composedPath ? event.composedPath() : [event.target];
      for (const node of path) {
        if (!node || node.nodeType !== 1) continue;
        if (node === host) return; // the toolbar's own clicks
        if (node.hasAttribute("data-cti-dial")) {
          event.preventDefault();
          dialFrom(node.getAttribute("data-cti-dial") || node.textContent, node);
          return;
        }
        const href = node.tagName === "A" ? node.getAttribute("href") || "" : "";
        if (config.telLinks && /^tel:/i.test(href)) {
          event.preventDefault();
          dialFrom(telNumber(href), node);
          return;
        }
      }
    }

    function dialFrom(number, el) {
      if (!hasSession()) {
        notify(t("sign_in_to_dial"));
        emit("error", fail("NOT_SIGNED_IN", null, {method: "call.make"}));
        return;
      }
      let variables;
      const raw = el.getAttribute("data-cti-variables");
      if (raw) {
        try {
          variables = JSON.parse(raw);
        } catch (e) {
          console.warn("CtiToolbar: data-cti-variables is not JSON:", raw);
        }
      }
      makeCall(number, {variables}).catch(fault);
    }

    function onOnline() {
      attempt = 0;
      if (!ws) connect();
    }

    function onVisible() {
      if (doc.visibilityState !== "visible") return;
      if (ws && socket === "open") ping(); // after a sleep the socket may be dead without knowing it
      else if (!ws) connect();
    }

    // -- the UI (Shadow DOM) ----------------------------------------------------------------------

    function buildUi() {
      const shadow = host.shadowRoot || host.attachShadow({mode: "open"});
      shadow.replaceChildren();
      host.setAttribute("data-cti-toolbar", "");
      host.setAttribute("data-cti-layout", layout);
      if (gadget) host.setAttribute("data-cti-mode", "gadget");
      const box = h("div", {class: "cti", "data-layout": layout, "data-mode": gadget ? "gadget" : null, role: "region",
        "aria-label": t("toolbar"), part: "toolbar"});
      const u = {box, callViews: new Map(), shadow};

      // Styles: a <link> inside the shadow root loads from another origin without CORS, and no
      // inline <style> is needed (pages with a strict Content-Security-Policy keep working).
      if (config.stylesheet !== false) {
        const href = config.stylesheet ? String(config.stylesheet) : new URL("cti-toolbar.css", SCRIPT_URL).href;
        const link = h("link", {rel: "stylesheet", href});
        box.style.visibility = "hidden"; // until styled: no flash of bare controls
        let shown = false;
        const show = () => {
          if (shown) return;
          shown = true;
          box.style.visibility = "";
          if (ui) host.setAttribute("data-cti-ready", "");
        };
        link.addEventListener("load", show);
        link.addEventListener("error", () => {
          console.warn(`CtiToolbar: could not load ${href}; set config.stylesheet`);
          show();
        });
        setTimeout(show, 3000);
        shadow.append(link);
      } else {
        setTimeout(() => { if (ui) host.setAttribute("data-cti-ready", ""); }, 0);
      }

      // Connection
      u.connLabel = h("span", {class: "conn-label", role: "status"});
      u.retryIn = h("span", {class: "retry-in", hidden: true});
      u.retryNow = h("button", {type: "button", class: "link", "data-cti": "reconnect", hidden: true,
        onclick: reconnect}, t("retry_now"));
      u.conn = h("div", {class: "conn", "data-cti": "connection", "data-state": ""},
        h("span", {class: "dot", "aria-hidden": "true"}), u.connLabel, u.retryIn, u.retryNow);

      // Sign-in
      const hint = (key) => (layout === "bar" ? t(key) : null); // the panel shows its labels instead
      const field = (key, input) => h("label", {class: "field"}, h("span", {class: "field-label"}, t(key)), input);
      u.agentInput = h("input", {"data-cti": "login-agent", name: "cti-agent", autocomplete: "username",
        autocapitalize: "off", spellcheck: "false", placeholder: hint("login_agent")});
      u.passwordInput = h("input", {"data-cti": "login-password", type: "password", name: "cti-password",
        autocomplete: "current-password", placeholder: hint("login_password")});
      u.extensionInput = h("input", {"data-cti": "login-extension", name: "cti-extension", inputmode: "tel",
        autocomplete: "off", placeholder: hint("login_extension")});
      u.submit = h("button", {type: "submit", class: "primary", "data-cti": "login-submit"}, t("login_submit"));
      u.loginError = h("p", {class: "login-error", "data-cti": "login-error", role: "alert"});
      u.form = h("form", {class: "login", "data-cti": "login-form", "aria-label": t("login_title"), novalidate: true,
        onsubmit: onLoginSubmit},
      field("login_agent", u.agentInput), field("login_password", u.passwordInput),
      field("login_extension", u.extensionInput), u.submit, u.loginError);

      // Agent
      u.agentName = h("span", {class: "agent-name", "data-cti": "agent-name"});
      u.stateText = h("span", {class: "state-text"});
      u.stateReason = h("span", {class: "state-reason"});
      u.state = h("span", {class: "state", "data-cti": "agent-state", "data-state": ""}, u.stateText, u.stateReason);
      u.timer = h("span", {class: "timer", "data-cti": "state-timer", role: "timer", "aria-label": t("state_timer")}, "00:00");
      u.pendingState = h("span", {class: "pending", "data-cti": "agent-pending", hidden: true});
      u.stateSelect = h("select", {"data-cti": "state-select", "aria-label": t("state_select")});
      u.stateHint = h("span", {class: "sr-only", id: "cti-state-hint"}, t("state_enter_hint"));
      wireStateSelect(u);
      u.agentLine = h("div", {class: "agent-line"}, u.agentName, u.state, u.timer, u.pendingState);
      const agentBox = h("div", {class: "agent", "data-cti": "agent"}, u.agentLine, u.stateSelect, u.stateHint);

      // Calls
      u.calls = h("div", {class: "calls", "data-cti": "calls", role: "list", "aria-label": t("calls")});
      u.noCalls = h("p", {class: "no-calls", "data-cti": "no-calls"}, t("no_calls"));

      // Dial pad: in its place (the number, the keypad toggle, Call) while no call is live; a call's
      // Consult, Blind transfer and Keypad buttons open it as a popover for that call, with one confirm
      // button (dial-consult, dial-transfer, dial-dtmf).
      u.dialNumber = h("input", {type: "tel", "data-cti": "dial-number", "aria-label": t("dial_number"),
        placeholder: t("dial_number"), autocomplete: "off", inputmode: "tel", maxlength: "64",
        oninput: () => { u.padHint.hidden = true; },
        onkeydown: (event) => {
          const go = [u.dialCall, u.dialConsult, u.dialTransfer, u.dialDtmf].find((b) => !b.hidden);
          if (event.key === "Enter" && go) {
            event.preventDefault();
            go.click();
          }
        }});
      const padButton = (key, cls, fn, iconName) => h("button", {type: "button", class: cls, "data-cti": key,
        onclick: (event) => fn(event.currentTarget)}, iconName ? icon(iconName) : null, h("span", null, t(key.replace("-", "_"))));
      u.dialCall = padButton("dial-call", "ok", (b) => uiAction(b, () => makeCall(u.dialNumber.value)
        .then(() => { u.dialNumber.value = ""; })), "phone");
      u.dialConsult = padButton("dial-consult", "go", (b) => withNumber(b, (n) => consult(u.padCall, n)), "personAdd");
      u.dialTransfer = padButton("dial-transfer", "go", (b) => withNumber(b, (n) => blindTransfer(u.padCall, n)), "arrow");
      u.dialDtmf = padButton("dial-dtmf", "go", (b) => withNumber(b, (n) => sendDigits(u.padCall, n), "digits_needed"), "keypad");
      u.keysOpen = false;
      u.keys = h("div", {class: "keys", id: "cti-keys", "data-cti": "dialpad-keys", hidden: true},
        Array.from("123456789*0#", (digit) => h("button", {type: "button", class: "key", "data-cti-digit": digit,
          onclick: () => typeDigit(digit)}, digit)),
        h("button", {type: "button", class: "key back", "data-cti": "dial-backspace", "aria-label": t("dial_backspace"),
          onclick: () => { u.dialNumber.value = u.dialNumber.value.slice(0, -1); }}, "⌫"));
      u.padToggle = h("button", {type: "button", class: "toggle", "data-cti": "dialpad-toggle", title: t("dialpad_toggle"),
        "aria-expanded": "false", "aria-controls": "cti-keys", onclick: () => toggleKeys()},
      icon("keypad"), h("span", {class: "sr-only"}, t("dialpad_toggle")));
      u.padTitle = h("span", {class: "pad-title", id: "cti-pad-title"});
      u.padHead = h("div", {class: "pad-head", hidden: true}, u.padTitle,
        h("button", {type: "button", class: "pad-close", "aria-label": t("pad_close"), title: t("pad_close"),
          onclick: () => closePad(true)}, "×"));
      u.padHint = h("p", {class: "pad-hint", role: "alert", hidden: true});
      u.pad = h("div", {class: "pad", id: "cti-pad", "data-cti": "dialpad", role: "group", "aria-label": t("dialpad")},
        u.padHead,
        h("div", {class: "pad-line"}, u.dialNumber, u.padToggle, u.dialCall, u.dialConsult, u.dialTransfer, u.dialDtmf),
        u.padHint, u.keys);

      u.callsBox = h("div", {class: "calls-box"}, u.calls, u.noCalls);
      u.main = h("div", {class: "main", "data-cti": "main", hidden: true}, agentBox, u.callsBox, u.pad);
      u.notices = h("div", {class: "notices", "data-cti": "notices"});
      u.announcer = h("div", {class: "sr-only", "aria-live": "assertive"});
      box.append(u.conn, u.form, u.main, u.notices, u.announcer);
      box.addEventListener("keydown", (event) => {
        if (event.key !== "Escape" || event.defaultPrevented) return;
        if (u.padMode) closePad(u.pad.contains(shadow.activeElement));
        else if (u.keysOpen && layout === "bar") toggleKeys(false, u.pad.contains(shadow.activeElement));
        else return;
        event.preventDefault();
      });
      box.addEventListener("click", (event) => { // after the clicked control's own handler
        const path = event.composedPath();
        if (path.indexOf(u.pad) >= 0 || (u.padAnchor && path.indexOf(u.padAnchor) >= 0)) return;
        if (u.padMode) closePad(false);
        else if (u.keysOpen && layout === "bar") toggleKeys(false);
      });
      shadow.append(box);
      return u;
    }

    function onLoginSubmit(event) {
      event.preventDefault();
      if (loginBusy) return;
      const who = ui.agentInput.value.trim();
      const password = ui.passwordInput.value;
      const extension = ui.extensionInput.value.trim();
      ui.passwordInput.value = ""; // the password never stays in the DOM
      ui.loginError.textContent = "";
      if (!who || !password || !extension) {
        ui.loginError.textContent = t("login_missing");
        (who ? extension ? ui.passwordInput : ui.extensionInput : ui.agentInput).focus();
        return;
      }
      // Digits: Finesse's agent id; anything else: a login name (UCCX user ids, SSO names).
      const details = /^\d+$/.test(who) ? {agentId: who, password, extension} : {loginName: who, password, extension};
      login(details).catch((e) => {
        if (e.code === "ALREADY_SIGNED_IN") return;
        ui && (ui.loginError.textContent = errorText(e));
        if (ui) ui.passwordInput.focus();
        emit("error", e instanceof CtiError ? e : fail("ERROR", {message: String(e)}));
      });
    }

    function wireStateSelect(u) {
      // Arrow keys on a closed <select> fire "change" at every step: applying each would send the
      // agent through every state (and out). Keyboard changes wait for Enter; Escape or leaving undoes.
      let keyboard = false;
      let held = false;
      const select = u.stateSelect;
      select.addEventListener("keydown", (event) => {
        const step = ["ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"].indexOf(event.key) >= 0;
        if ((step && !event.altKey) || (event.key.length === 1 && event.key !== " ")) {
          keyboard = true;
        } else if (event.key === "Enter" && held) {
          event.preventDefault();
          held = false;
          select.removeAttribute("aria-describedby");
          applyState(select.value);
        } else if (event.key === "Escape" && held) {
          held = false;
          select.removeAttribute("aria-describedby");
          renderAgent();
        }
      });
      select.addEventListener("mousedown", () => { keyboard = false; });
      select.addEventListener("change", () => {
        if (keyboard) {
          held = true;
          select.setAttribute("aria-describedby", "cti-state-hint");
          return;
        }
        applyState(select.value);
      });
      select.addEventListener("blur", () => {
        keyboard = false;
        if (held) {
          held = false;
          select.removeAttribute("aria-describedby");
          renderAgent();
        }
      });
      u.stateHeld = () => held;
    }

    function applyState(value) {
      const [state, reason] = String(value).split(":");
      const action = state === "LOGOUT" ? () => logout(reason) : () => setState(state, reason);
      uiAction(null, action, () => renderAgent());
    }

    /** A UI click: one request at a time per button; failures become notices and error events. */
    function uiAction(button, fn, onFail) {
      if (button && button.getAttribute("aria-busy") === "true") return;
      if (button) button.setAttribute("aria-busy", "true");
      let promise;
      try {
        promise = fn();
      } catch (e) {
        promise = Promise.reject(e);
      }
      promise.catch((e) => {
        fault(e);
        if (onFail) onFail(e);
      }).finally(() => { if (button) button.removeAttribute("aria-busy"); });
    }

    function withNumber(button, fn, missing) {
      const number = cleanNumber(ui.dialNumber.value);
      if (!number) {
        ui.padHint.textContent = t(missing || "number_needed"); // said in the popover, not in a notice
        ui.padHint.hidden = false;
        ui.dialNumber.focus();
        return;
      }
      uiAction(button, () => fn(number).then(() => {
        if (!ui) return;
        ui.dialNumber.value = "";
        if (ui.padMode && ui.padMode !== "sendDigits") closePad(true);
      }));
    }

    function typeDigit(digit) {
      const input = ui.dialNumber;
      ui.padHint.hidden = true;
      input.value = (input.value + digit).slice(0, 64);
    }

    function toggleKeys(open, focusToggle) {
      ui.keysOpen = open == null ? !ui.keysOpen : open;
      ui.keys.hidden = !ui.keysOpen;
      ui.padToggle.setAttribute("aria-expanded", String(ui.keysOpen));
      if (focusToggle) ui.padToggle.focus();
    }

    /** A call's Consult, Blind transfer or Keypad button: the dial pad as a popover for that call. */
    function openPad(v, verb, button) {
      if (ui.padMode === verb && ui.padCall === v.id) return closePad(true); // the same button again
      closePad(false);
      ui.padMode = verb;
      ui.padCall = v.id;
      ui.padAnchor = button;
      button.setAttribute("aria-expanded", "true");
      ui.dialNumber.value = "";
      toggleKeys(verb === "sendDigits");
      renderPad();
      ui.dialNumber.focus();
    }

    function closePad(focusBack) {
      if (!ui.padMode) return;
      const anchor = ui.padAnchor;
      const view = ui.callViews.get(ui.padCall);
      const hadFocus = ui.pad.contains(ui.shadow.activeElement);
      anchor.setAttribute("aria-expanded", "false");
      ui.padMode = ui.padCall = ui.padAnchor = null;
      ui.dialNumber.value = "";
      toggleKeys(false);
      renderPad();
      if (focusBack || hadFocus) {
        const target = anchor.isConnected ? anchor : view && view.el.isConnected && view.actions.querySelector("button");
        (target || homeFocus()).focus();
      }
    }

    /** Where focus goes when its element leaves: the first call's first button, the number, the state. */
    function homeFocus() {
      return ui.calls.querySelector(".actions button") || (ui.pad.hidden ? ui.stateSelect : ui.dialNumber);
    }

    function notify(text, kind, ttl, ...extra) {
      if (!ui) return null;
      const box = h("div", {class: "notice", "data-kind": kind || "error", "data-cti": "notice",
        role: (kind || "error") === "info" ? "status" : "alert"}, h("span", {class: "notice-text"}, text), " ", extra);
      box.append(h("button", {type: "button", class: "dismiss", "aria-label": t("dismiss"),
        onclick: () => box.remove()}, "×"));
      ui.notices.append(box);
      while (ui.notices.children.length > 4) ui.notices.firstElementChild.remove();
      const life = ttl == null ? 8000 : ttl;
      if (life) setTimeout(() => box.remove(), life);
      return box;
    }

    function announce(text) {
      if (!ui) return;
      ui.announcer.textContent = "";
      setTimeout(() => { if (ui) ui.announcer.textContent = text; }, 50);
    }

    function callNumber(call) {
      const own = agent ? agent.extension : "";
      let number;
      if (call.direction === "inbound") number = call.ani || call.from;
      else if (call.direction === "outbound") number = call.to || call.dnis;
      else number = call.from && call.from !== own ? call.from : call.to;
      return number || t("call_unknown");
    }

    // -- rendering --

    function render() {
      if (!ui) return;
      const shown = signedIn && agent !== null;
      ui.form.hidden = shown || gadget;
      ui.main.hidden = !shown;
      host.setAttribute("data-cti-session", shown ? "signed-in" : "signed-out");
      ui.submit.setAttribute("aria-disabled", String(loginBusy));
      ui.submit.textContent = loginBusy ? t("login_busy") : t("login_submit");
      // The connection dot sits with the agent once signed in, before the sign-in form otherwise.
      const connHome = shown ? ui.agentLine : ui.box;
      if (ui.conn.parentNode !== connHome) connHome.prepend(ui.conn);
      if (!shown) return;
      renderAgent();
      renderCalls();
      renderPad();
      tick();
    }

    function renderConnection(state) {
      const finesseSide = socket === "open" && (state === "reconnecting" || state === "disconnected") && sessionReady;
      const label = t(finesseSide ? `connection_finesse_${state}` : `connection_${state}`);
      ui.conn.setAttribute("data-state", state);
      ui.conn.title = finesse.node && socket === "open" ? `${label} (${finesse.node})` : label;
      if (ui.connLabel.textContent !== label) ui.connLabel.textContent = label;
      const waitingToRetry = socket !== "open" && retryAt > Date.now() + 1500;
      ui.retryIn.hidden = !waitingToRetry;
      ui.retryNow.hidden = !waitingToRetry;
      if (waitingToRetry) ui.retryIn.textContent = t("retry_in", {seconds: Math.ceil((retryAt - Date.now()) / 1000)});
    }

    function renderAgent() {
      if (!ui || !agent) return;
      const name = [agent.firstName, agent.lastName].join(" ").trim() || agent.loginName || agent.id;
      ui.agentName.textContent = name;
      ui.agentName.title = `${name} (${agent.id}) · ${t("agent_extension", {extension: agent.extension})}`;
      ui.state.setAttribute("data-state", agent.state);
      ui.stateText.textContent = t(`state_${agent.state}`);
      const reason = agent.reasonCode && agent.reasonCode.label && (agent.state === "NOT_READY" || agent.state === "LOGOUT")
        ? agent.reasonCode.label : "";
      ui.stateReason.textContent = reason ? ` · ${reason}` : "";
      ui.pendingState.hidden = !agent.pendingState;
      ui.pendingState.textContent = agent.pendingState ? t("state_pending", {state: t(`state_${agent.pendingState}`)}) : "";

      const options = [["READY", t("option_ready")]];
      const group = (category, plain, plainKey, reasonKey) => {
        const list = reasonCodes[category] || [];
        if (!list.length) options.push([plain, t(plainKey)]);
        for (const rc of list) options.push([`${category}:${rc.id}`, t(reasonKey, {label: rc.label, code: rc.code})]);
      };
      group("NOT_READY", "NOT_READY", "option_not_ready", "option_not_ready_reason");
      group("LOGOUT", "LOGOUT", "option_logout", "option_logout_reason");
      const select = ui.stateSelect;
      const signature = JSON.stringify(options);
      if (select.getAttribute("data-options") !== signature) {
        // The first option ("") stands for a current state no option is (Reserved, Talking, On hold,
        // Work...): shown, disabled, so the select says where the agent is without offering it.
        select.replaceChildren(h("option", {value: "", disabled: true}),
          ...options.map(([value, label]) => h("option", {value}, label)));
        select.setAttribute("data-options", signature);
      }
      if (ui.stateHeld && ui.stateHeld()) return; // the agent is choosing with the keyboard
      let value = "";
      if (agent.state === "READY") value = "READY";
      else if (agent.state === "NOT_READY") {
        const id = agent.reasonCode && agent.reasonCode.id;
        value = options.some(([v]) => v === `NOT_READY:${id}`) ? `NOT_READY:${id}` : "NOT_READY";
      }
      const current = options.some(([v]) => v === value) ? value : "";
      const placeholder = select.options[0];
      placeholder.textContent = t(`state_${agent.state}`) + (reason ? ` – ${reason}` : "");
      placeholder.hidden = current !== "";
      select.value = current;
    }

    function renderCalls() {
      const list = Array.from(calls.values());
      const keep = new Set();
      list.forEach((call, index) => {
        let view = ui.callViews.get(call.id);
        if (!view) {
          view = callView(call.id);
          ui.callViews.set(call.id, view);
        }
        updateCallView(view, call);
        const at = ui.calls.children[index];
        if (at !== view.el) ui.calls.insertBefore(view.el, at || null);
        keep.add(call.id);
      });
      for (const [id, view] of Array.from(ui.callViews)) {
        if (keep.has(id)) continue;
        const hadFocus = view.el.contains(ui.shadow.activeElement);
        view.el.remove();
        ui.callViews.delete(id);
        if (hadFocus) ui.refocus = true; // focus must not fall out of the toolbar (renderPad places it)
      }
      ui.noCalls.hidden = list.length > 0;
      ui.callsBox.hidden = !list.length && layout === "bar"; // the bar: one row per call, none without
    }

    function callView(id) {
      const v = {id, buttons: new Map()};
      const numberId = `cti-call-${Math.random().toString(36).slice(2, 9)}`;
      v.number = h("span", {class: "number", "data-cti": "call-number", id: numberId});
      v.tag = h("span", {class: "tag", "data-cti": "call-tag"});
      v.state = h("span", {class: "call-state", "data-cti": "call-state"});
      v.timer = h("span", {class: "timer", "data-cti": "call-timer", role: "timer", "aria-label": t("call_timer")});
      v.queue = h("span", {class: "queue", "data-cti": "call-queue"});
      v.variables = h("ul", {class: "variables", "data-cti": "call-variables", "aria-label": t("call_variables")});
      v.actions = h("div", {class: "actions", "data-cti": "call-actions"});
      v.wrapSelect = h("select", {"data-cti": "wrapup-select", "aria-label": t("wrapup_label")});
      v.wrapApply = h("button", {type: "button", class: "apply", "data-cti": "wrapup-apply", "data-cti-action": "setWrapUp",
        "aria-describedby": numberId, onclick: (event) => {
          const reason = v.wrapSelect.value;
          if (!reason) {
            notify(t("wrapup_choose"), "info");
            v.wrapSelect.focus();
            return;
          }
          uiAction(event.currentTarget, () => setWrapUp(v.id, reason));
        }}, t("action_setWrapUp"));
      v.wrap = h("div", {class: "wrapup", "data-cti": "call-wrapup"}, v.wrapSelect, v.wrapApply);
      v.numberId = numberId;
      v.el = h("div", {class: "call", "data-cti": "call", "data-call-id": id, role: "listitem", "aria-labelledby": numberId},
        h("div", {class: "call-info"},
          h("div", {class: "call-head"}, v.tag, v.number, v.state, v.timer),
          h("div", {class: "call-meta"}, v.queue, v.variables)),
        v.actions);
      return v;
    }

    function updateCallView(v, call) {
      const el = v.el;
      const hadFocus = el.contains(ui.shadow.activeElement);
      el.setAttribute("data-call-state", call.state);
      el.setAttribute("data-direction", call.direction || "");
      v.call = call;
      v.number.textContent = callNumber(call);
      const consultLeg = call.callType === "CONSULT";
      v.tag.textContent = consultLeg ? t("call_consult") : t(`call_${call.direction}`);
      v.state.textContent = t(`call_state_${call.state}`);
      const queue = call.queue ? call.queue.name || call.queue.number || "" : "";
      v.queue.textContent = queue;
      v.queue.hidden = !queue;
      if (queue) v.queue.title = t("call_queue", {queue});

      const variables = call.variables || {};
      const filled = Object.keys(variables).filter((name) => variables[name] !== "" && variables[name] != null);
      const signature = JSON.stringify(filled.map((name) => [name, variables[name]]));
      if (v.varSignature !== signature) {
        v.varSignature = signature;
        const text = (name) => `${labels[name] || name}: ${variables[name]}`;
        v.variables.title = filled.map(text).join("\n"); // the bar shows what fits
        v.variables.replaceChildren(...filled.map((name) => h("li", {"data-variable": name, title: text(name)},
          h("span", {class: "var-name"}, `${labels[name] || name}: `), h("span", {class: "var-value"}, String(variables[name])))));
      }
      v.variables.hidden = !filled.length;

      // One set of controls per call, in reading order, then the wrap-up reason.
      const actions = call.actions || [];
      const wanted = [];
      for (const verb of BUTTONS) {
        let button = v.buttons.get(verb);
        if (actions.indexOf(verb) < 0) { // not allowed now: not in the DOM at all
          if (button) v.buttons.delete(verb);
          continue;
        }
        if (!button) {
          const label = t(verb === "sendDigits" ? "dialpad_toggle" : `action_${verb}`);
          const opens = verb === "consult" || verb === "blindTransfer" || verb === "sendDigits";
          const hint = `action_${verb}_hint`;
          button = h("button", {type: "button", class: `act act-${verb}`, "data-cti-action": verb,
            "aria-describedby": v.numberId, title: hint in MESSAGES ? t(hint) : label,
            "aria-haspopup": opens ? "dialog" : null, "aria-expanded": opens ? "false" : null,
            "aria-controls": opens ? "cti-pad" : null, onclick: (event) => callButton(v, verb, event.currentTarget)},
          VERB_ICONS[verb] ? icon(VERB_ICONS[verb]) : null, h("span", {class: "act-label"}, label));
          v.buttons.set(verb, button);
        }
        wanted.push(button);
      }
      if (wrapUpReasons.length > 0 && actions.indexOf("setWrapUp") >= 0) {
        wanted.push(v.wrap);
        const names = wrapUpReasons.map((w) => w.label);
        if (call.wrapUpReason && names.indexOf(call.wrapUpReason) < 0) names.push(call.wrapUpReason);
        const signature = JSON.stringify(names);
        if (v.wrapSignature !== signature) {
          v.wrapSignature = signature;
          v.wrapSelect.replaceChildren(h("option", {value: "", disabled: true}, t("wrapup_placeholder")),
            ...names.map((label) => h("option", {value: label}, label)));
          v.wrapSelect.value = call.wrapUpReason || "";
        } else if (call.wrapUpReason && v.wrapSelect !== ui.shadow.activeElement) {
          v.wrapSelect.value = call.wrapUpReason;
        }
      }
      // Move only what is out of place (moving the focused element would blur it), then drop the rest.
      wanted.forEach((el, i) => {
        if (v.actions.children[i] !== el) v.actions.insertBefore(el, v.actions.children[i] || null);
      });
      while (v.actions.children.length > wanted.length) v.actions.lastElementChild.remove();
      if (hadFocus && !el.contains(ui.shadow.activeElement)) (v.actions.querySelector("button") || homeFocus()).focus();
    }

    function callButton(v, verb, button) {
      const id = v.id;
      switch (verb) {
        case "consult":
        case "blindTransfer":
        case "sendDigits":
          return openPad(v, verb, button);
        default:
          return uiAction(button, () => api[verb](id));
      }
    }

    function renderPad() {
      const live = Array.from(calls.values()).some((c) => LIVE.indexOf(c.state) >= 0);
      const call = ui.padMode ? calls.get(ui.padCall) : null;
      if (ui.padMode && (!call || (call.actions || []).indexOf(ui.padMode) < 0 || !ui.padAnchor.isConnected)) {
        return closePad(false); // the call moved on (held, transferred, gone): so does its popover
      }
      const mode = ui.padMode;
      const pad = ui.pad;
      const hadFocus = pad.contains(ui.shadow.activeElement);
      pad.hidden = live && !mode; // in place only while no call is live
      pad.classList.toggle("popped", !!mode);
      pad.setAttribute("role", mode ? "dialog" : "group");
      if (mode) {
        pad.removeAttribute("aria-label");
        pad.setAttribute("aria-labelledby", "cti-pad-title");
      } else {
        pad.removeAttribute("aria-labelledby");
        pad.setAttribute("aria-label", t("dialpad"));
      }
      ui.padHead.hidden = !mode;
      if (!mode) ui.padHint.hidden = true;
      if (mode) ui.padTitle.textContent = t("pad_for", {action: t(`action_${mode}`), number: callNumber(call)});
      const digitsOnly = mode === "sendDigits";
      ui.dialNumber.placeholder = t(digitsOnly ? "dial_digits" : "dial_number");
      ui.dialNumber.setAttribute("aria-label", ui.dialNumber.placeholder);
      ui.dialCall.hidden = live || !!mode;
      ui.dialConsult.hidden = mode !== "consult";
      ui.dialTransfer.hidden = mode !== "blindTransfer";
      ui.dialDtmf.hidden = mode !== "sendDigits";
      if (pad.hidden && ui.keysOpen) toggleKeys(false);
      if (mode) placePad();
      if ((hadFocus && pad.hidden) || ui.refocus) homeFocus().focus();
      ui.refocus = false;
    }

    /** The popover under the button that opened it, inside the bar's width (the panel shows it in place). */
    function placePad() {
      const style = ui.pad.style;
      if (layout !== "bar") return;
      const box = ui.box.getBoundingClientRect();
      const anchor = ui.padAnchor.getBoundingClientRect();
      const left = Math.min(anchor.left - box.left, box.width - ui.pad.offsetWidth - 8);
      style.top = `${Math.round(anchor.bottom - box.top + 4)}px`;
      style.left = `${Math.round(Math.max(4, left))}px`;
    }

    /** Once a second: the timers, and the retry countdown. */
    function tick() {
      if (!ui) return;
      if (socket !== "open") renderConnection(connState);
      if (!agent || ui.main.hidden) return;
      if (ui.padMode) placePad(); // the bar may have been resized
      const now = Date.now();
      const since = Date.parse(agent.stateSince);
      ui.timer.textContent = duration(since ? now + clockOffset - since : now - stateSeenAt);
      for (const v of ui.callViews.values()) {
        const call = v.call;
        const start = Date.parse((call.state === "active" || call.state === "held" || call.state === "wrapup")
          && call.answeredAt ? call.answeredAt : call.startedAt);
        v.timer.textContent = start ? duration(now + clockOffset - start) : "";
      }
    }

    // -- start --

    const api = {
      on,
      getAgent,
      getCalls,
      getConnectionState,
      getReasonCodes,
      getWrapUpReasons,
      login,
      logout,
      setState,
      makeCall,
      answer,
      hold,
      retrieve,
      end,
      consult,
      transfer,
      conference,
      blindTransfer,
      sendDigits,
      updateVariables,
      setWrapUp,
      lookupCustomer,
      reconnect,
      destroy,
    };

    if (host) {
      ui = buildUi();
      render();
    }
    const ticker = setInterval(tick, 1000);
    if (doc && config.clickToDial !== false) doc.addEventListener("click", onDocumentClick);
    if (doc) doc.addEventListener("visibilitychange", onVisible);
    if (root.addEventListener) {
      root.addEventListener("online", onOnline);
      root.addEventListener("offline", ping);
    }
    connect();
    if (gadget) gadgetLogin();
    return api;
  }

  root.CtiToolbar = {init, messages: MESSAGES, version: VERSION, CtiError};
})(typeof window !== "undefined" ? window : globalThis);
