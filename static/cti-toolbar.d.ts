// Type declarations for static/cti-toolbar.js, the CTI toolbar and headless SDK of the CTI bridge
// for Cisco Finesse. Guide: docs/toolbar.md. The wire protocol and its schemas:
// bridge/protocol/openrpc.json (the Agent, Call, Record and screen-pop types below mirror it).
//
// Use it from TypeScript with a triple-slash reference, or copy it into your project:
//   /// <reference path="./cti-toolbar.d.ts" />
//   const cti = CtiToolbar.init({element: "#cti"});

declare namespace CtiToolbar {
  // -- the bridge's JSON model (openrpc.json components.schemas) --------------------------------------

  /** An ISO 8601 timestamp with a time zone; "" when unknown or not yet. */
  type Timestamp = string;

  type AgentState = "LOGOUT" | "NOT_READY" | "READY" | "RESERVED" | "TALKING" | "HOLD" | "WORK" | "WORK_READY" | "UNKNOWN";

  /** The states an agent may ask for (agent.setState). */
  type SettableState = "READY" | "NOT_READY" | "WORK" | "WORK_READY";

  type CallState = "ringing" | "dialing" | "active" | "held" | "wrapup" | "ended" | "failed";

  type Direction = "inbound" | "outbound" | "internal";

  /** What the signed-in agent may do with a call now; the toolbar shows exactly these buttons. */
  type CallAction = "answer" | "hold" | "retrieve" | "end" | "consult" | "transfer" | "conference" | "blindTransfer"
    | "sendDigits" | "updateVariables" | "setWrapUp" | "startRecording";

  /** callVariable1..callVariable10 (40 bytes at most each) and ECC variables `user.<name>`. */
  type Variables = { [name: string]: string };

  interface ReasonCode {
    /** Finesse's reason code id: the value setState/logout take. */
    id: string;
    /** The numeric code reports show. */
    code: string;
    /** What the agent sees. */
    label: string;
  }

  interface AgentReasonCode extends ReasonCode {
    /** NOT_READY or LOGOUT; "" when Finesse did not say. */
    category: string;
  }

  interface WrapUpReason {
    id: string;
    /** The text setWrapUp sends (Finesse stores the label). */
    label: string;
  }

  interface Agent {
    /** Finesse loginId. */
    id: string;
    loginName: string;
    firstName: string;
    lastName: string;
    extension: string;
    state: AgentState;
    reasonCode: AgentReasonCode | null;
    /** The state Finesse applies when the current call ends; "" when none. */
    pendingState: AgentState | "";
    stateSince: Timestamp;
    roles: string[];
    teamId: string;
    teamName: string;
  }

  interface Queue {
    name?: string;
    number?: string;
  }

  interface Participant {
    address: string;
    type: "agent" | "external";
    /** Finesse's participant state in lower case (alerting, active, held, wrap_up, dropped, ...). */
    state: string;
    startedAt: Timestamp;
    stateSince: Timestamp;
    /** Finesse's stateCause (BUSY, CALL_REJECTED, ...); "" when none. */
    cause: string;
  }

  interface Call {
    /** Finesse dialog id. */
    id: string;
    direction: Direction;
    state: CallState;
    /** Finesse's dialog state (ALERTING, ACTIVE, DROPPED, ...). */
    dialogState: string;
    from: string;
    to: string;
    /** The caller's number; "" when withheld. */
    ani: string;
    dnis: string;
    /** Finesse's callType (ACD_IN, OUT, AGENT_INSIDE, CONSULT, TRANSFER, CONFERENCE, ...). */
    callType: string;
    queue: Queue;
    variables: Variables;
    participants: Participant[];
    actions: CallAction[];
    startedAt: Timestamp;
    answeredAt: Timestamp;
    endedAt: Timestamp;
    /** The other leg of a consult; "" when none. */
    associatedCallId: string;
    secondaryId: string;
    wrapUpReason: string;
  }

  type Outcome = "answered" | "missed" | "unanswered" | "failed" | "transferred" | "conferenced";

  /** The call record the bridge writes when the agent's part of a call ends. */
  interface Record {
    /** Unique: use it as the idempotency key when you store it. */
    id: string;
    agentId: string;
    callId: string;
    direction: Direction;
    from: string;
    to: string;
    startedAt: Timestamp;
    answeredAt: Timestamp;
    endedAt: Timestamp;
    durationSeconds: number;
    talkSeconds: number;
    outcome: Outcome;
    wrapUpReason: string;
    variables: Variables;
  }

  /** What the bridge's screen-pop rules decided for a call (call.screenPop). */
  interface ScreenPop {
    callId: string;
    url: string;
    method: "GET" | "POST";
    /** "tab", "window:<name>", "iframe" or "callback". */
    target: string;
    /** The fields to POST (method POST). */
    form?: { [name: string]: string };
  }

  /** A customer profile from the bridge's profile store (docs/records.md). */
  interface Contact {
    id: string;
    name: string;
    /** As people write them: "+1 (415) 555-0100". */
    phones: string[];
    /** The CRM's ids, a tier, a language...: any JSON. */
    attributes: { [name: string]: unknown };
    updatedAt: Timestamp;
    version: number;
  }

  /** lookupCustomer(): the caller's contact (or null) and this agent's own earlier calls with the number. */
  interface CustomerLookup {
    contact: Contact | null;
    /** Newest first; only the signed-in agent's records. */
    records: Record[];
  }

  // -- notifications as the bridge sends them (openrpc.json x-notifications) -----------------------

  /** Every notification carries seq (per agent, increasing by one) and at (ISO 8601). */
  interface Notification {
    seq: number;
    at: string;
  }

  interface AgentNotification extends Notification { agent: Agent }
  interface CallNotification extends Notification { call: Call }
  interface CallEndedNotification extends Notification { call: Call; record: Record }
  interface ScreenPopNotification extends Notification, ScreenPop {}
  interface CallErrorNotification extends Notification { callId: string; code: number; message: string; data?: unknown }
  interface AgentErrorNotification extends Notification { code: number; message: string; data?: unknown }

  /** The bridge's own link to Finesse. */
  interface FinesseConnectionNotification extends Notification {
    state: "connected" | "degraded" | "reconnecting" | "failover" | "disconnected";
    /** The Finesse node in use; "" when none. */
    node: string;
  }

  interface SessionEndedNotification extends Notification {
    /** logout, logged_out, replaced, expired, shutdown, ... */
    reason: string;
  }

  // -- the toolbar -----------------------------------------------------------------------------------

  /**
   * The connection as the agent should see it: the socket to the bridge first, then the bridge's
   * link to Finesse (connection.changed) while signed in.
   */
  type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected" | "degraded" | "failover";

  interface ConnectionInfo {
    state: ConnectionState;
    previous: ConnectionState | null;
    /** The browser-to-bridge socket. */
    socket: "connecting" | "reconnecting" | "open" | "disconnected";
    /** The server (ws:// or wss:// URL) of the last socket that opened. */
    server: string | null;
    /** The bridge-to-Finesse link, from the last connection.changed. */
    finesse: FinesseConnectionNotification["state"];
    node: string;
  }

  interface LoginDetails {
    /** Finesse loginId; or give loginName. */
    agentId?: string;
    loginName?: string;
    /** Or give token (SSO). Held in memory only, to sign in again after the bridge lost the session. */
    password?: string;
    token?: string;
    extension: string;
  }

  interface Snapshot {
    agent: Agent;
    calls: Call[];
  }

  /**
   * Codes of errors the toolbar makes itself; errors from the bridge keep its numeric JSON-RPC code
   * (4001 not signed in, 4003 not allowed, 4004 no such call, 4010 bad credentials, 4029 too many
   * attempts, 4090 refused by Finesse, 5030 Finesse unavailable, 5040 Finesse timeout, -32602 invalid params).
   */
  type ToolbarErrorCode = "TIMEOUT" | "NOT_CONNECTED" | "NOT_SIGNED_IN" | "ALREADY_SIGNED_IN" | "INVALID_ARGUMENT"
    | "NO_CALL" | "DESTROYED" | "ERROR";

  class CtiError extends Error {
    readonly name: "CtiError";
    readonly code: number | ToolbarErrorCode;
    /** The bridge's error data (for 4090: Finesse's errorType and message). */
    readonly data: unknown;
    /** The JSON-RPC method that failed, when there was one. */
    readonly method: string | null;
    toJSON(): { name: string; code: number | ToolbarErrorCode; message: string; data: unknown; method: string | null };
  }

  /** Listener signatures, by event name: the bridge's notifications, then the toolbar's own events. */
  interface EventMap {
    "agent.stateChanged": (agent: Agent, notification: AgentNotification) => void;
    "agent.error": (notification: AgentErrorNotification) => void;
    "call.ringing": (call: Call, notification: CallNotification) => void;
    "call.dialing": (call: Call, notification: CallNotification) => void;
    "call.answered": (call: Call, notification: CallNotification) => void;
    "call.updated": (call: Call, notification: CallNotification) => void;
    "call.ended": (call: Call, record: Record | null, notification: CallEndedNotification) => void;
    "call.screenPop": (pop: ScreenPop, notification: ScreenPopNotification) => void;
    "call.error": (notification: CallErrorNotification) => void;
    "connection.changed": (notification: FinesseConnectionNotification) => void;
    "session.ended": (notification: SessionEndedNotification) => void;
    /** login() succeeded (the reason codes and wrap-up reasons are loaded). */
    "loggedIn": (snapshot: Snapshot) => void;
    /** The sign-in is over: logout, signed out by Finesse or a supervisor, or signing in again failed. */
    "loggedOut": (info: { reason: string }) => void;
    /** Agent and calls were replaced wholesale (a resume after a long gap, or signing in again). */
    "snapshot": (snapshot: Snapshot) => void;
    "connectionStateChanged": (state: ConnectionState, info: ConnectionInfo) => void;
    /** An iframe pop that onScreenPop left to the toolbar (returned false, or there is none): show it in a frame. */
    "screenPop": (pop: ScreenPop) => void;
    /** The browser blocked the pop's window; the toolbar shows a click-to-open notice. */
    "screenPopBlocked": (pop: ScreenPop) => void;
    /** Once per call record (call.ended), across this page's tabs. */
    "callLog": (record: Record, call: Call) => void;
    /** Failures nobody's promise receives: UI actions, click-to-call, call.error/agent.error, signing in again. */
    "error": (error: CtiError) => void;
  }

  type EventName = keyof EventMap;

  interface Subscription {
    unsubscribe(): void;
  }

  /** Every text the toolbar shows, by key; see CtiToolbar.messages for the keys and the English. */
  type Messages = { [key: string]: string };

  interface Config {
    /**
     * ws:// or wss:// URLs of the bridge, tried in order (failover). Relative URLs resolve against
     * the script's address. Default: /rpc on the origin that served cti-toolbar.js.
     */
    servers?: string | string[];
    /** Where the UI goes (a selector or an element; it gets a shadow root). Omit for headless mode. */
    element?: string | Element;
    /** "bar" (default): a horizontal bar, one row for the agent and one per call. "panel": a column for a sidebar. */
    layout?: "bar" | "panel";
    /** Milliseconds before any action's promise rejects with TIMEOUT. Default 10000. */
    timeout?: number;
    /** Milliseconds for login (Finesse sign-in takes several round trips). Default 30000. */
    loginTimeout?: number;
    /** Milliseconds between session.ping checks of the socket; 0 turns them off. Default 25000. */
    heartbeat?: number;
    /** Reconnect timing: exponential backoff from minDelay to maxDelay, with jitter. */
    reconnect?: { minDelay?: number; maxDelay?: number; connectTimeout?: number };
    /** Text overrides (translations), by message key. */
    messages?: Messages;
    /** Display names for call variables, e.g. {callVariable1: "Account"}. */
    variableLabels?: { [name: string]: string };
    /** The stylesheet's URL (default: cti-toolbar.css next to the script), or false to load none. */
    stylesheet?: string | false;
    /** Place a call when an element with data-cti-dial is clicked. Default true. */
    clickToDial?: boolean;
    /** Also dial tel: links (and keep the browser from handling them). Default false. */
    telLinks?: boolean;
    /** With several tabs of this origin signed in as one agent, pop and log each call in one tab only. Default true. */
    dedupeAcrossTabs?: boolean;
    /**
     * "toolbar" (default). "gadget": inside a Finesse gadget (docs/gadgets.md): sign in by itself with
     * `credentials`, never show the sign-in form, and show status only (no state select, call buttons or dial pad).
     */
    mode?: "toolbar" | "gadget";
    /**
     * Gadget mode: the agent's identity (from finesse.gadget.Config), held in memory only. A function is
     * asked again before each sign-in, so a renewed SSO token is used.
     */
    credentials?: LoginDetails | (() => LoginDetails);

    /** A screen pop: open it yourself, or return false to let the toolbar do the default for its target. */
    onScreenPop?: (pop: ScreenPop) => boolean | void;
    /** Once per call record. */
    onCallLog?: (record: Record, call: Call) => void;
    onCallRinging?: (call: Call, notification: CallNotification) => void;
    onCallAnswered?: (call: Call, notification: CallNotification) => void;
    onCallEnded?: (call: Call, record: Record | null, notification: CallEndedNotification) => void;
    onAgentStateChanged?: (agent: Agent, notification: AgentNotification) => void;
    onConnectionChanged?: (state: ConnectionState, info: ConnectionInfo) => void;
    onError?: (error: CtiError) => void;
  }

  /** What init() returns. Actions return promises that settle once, and reject with TIMEOUT at the latest. */
  interface Toolbar {
    /** Listen to an event; returns {unsubscribe()}. */
    on<K extends EventName>(name: K, listener: EventMap[K]): Subscription;

    /** The agent as last known (a copy), or null when signed out. */
    getAgent(): Agent | null;
    /** The agent's calls as last known (copies). */
    getCalls(): Call[];
    getConnectionState(): ConnectionState;
    /** The NOT_READY (default) or LOGOUT reason codes, loaded at sign-in. */
    getReasonCodes(category?: "NOT_READY" | "LOGOUT"): ReasonCode[];
    getWrapUpReasons(): WrapUpReason[];

    /** Sign in (or join the session the bridge kept for this agent). */
    login(details: LoginDetails): Promise<Snapshot>;
    logout(reasonCodeId?: string): Promise<void>;
    setState(state: SettableState, reasonCodeId?: string): Promise<void>;
    makeCall(number: string, options?: { variables?: Variables }): Promise<void>;

    // Call actions. callId may be null: the toolbar then picks the call whose actions allow the verb.
    answer(callId?: string | null): Promise<void>;
    hold(callId?: string | null): Promise<void>;
    retrieve(callId?: string | null): Promise<void>;
    end(callId?: string | null): Promise<void>;
    /** Call `number` from an active call (which goes on hold); then transfer() or conference(). */
    consult(callId: string | null, number: string): Promise<void>;
    /** Complete a consult: either leg's id. */
    transfer(callId?: string | null): Promise<void>;
    conference(callId?: string | null): Promise<void>;
    blindTransfer(callId: string | null, number: string): Promise<void>;
    sendDigits(callId: string | null, digits: string): Promise<void>;
    updateVariables(callId: string | null, variables: Variables): Promise<void>;
    /** `reason` is a wrap-up reason's label. */
    setWrapUp(callId: string | null, reason: string): Promise<void>;
    /** The caller's contact and this agent's earlier calls with `number` (what the customer gadget shows). */
    lookupCustomer(number: string): Promise<CustomerLookup>;

    /** Try the connection now instead of waiting for the next retry. */
    reconnect(): void;
    /** Close the socket, drop the UI and every listener (the bridge keeps the session for its grace period). */
    destroy(): void;
  }

  /** Start a toolbar (with config.element) or a headless SDK (without). */
  function init(config?: Config): Toolbar;

  /** The default (English) texts; change keys here to translate every toolbar on the page. */
  const messages: Messages;

  const version: string;
}

interface Window {
  CtiToolbar: typeof CtiToolbar;
}
