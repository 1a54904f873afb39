"""The JSON-RPC methods (the only module that imports jsonrpcserver).

``handle(text, context) -> text`` is the whole interface: the WebSocket loop passes each message
and sends back what it returns (nothing for notifications). Methods are plain functions taking
the per-connection context; the agent always comes from the session, never from params.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import re
import time
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit

from jsonrpcserver import Error, Success, dispatch_to_response
from jsonrpcserver.response import ErrorResponse, Response, to_serializable_one
from jsonrpcserver.sentinels import NODATA

from .times import iso_now
from . import logs
from . import protocol
from .errors import BridgeError, Internal, InvalidParams as InvalidParamsError, NotAllowed, NotSignedIn
from .finesse.model import VERB_ACTIONS
from .profiles import digits_of
from .records import list_records
from .sessions import AgentSession, Socket
from .store import StoreError

log = logs.get("bridge.rpc")
SPEC_CODES = (-32700, -32600, -32601)  # answered exactly as the specification's examples show


class Context(Protocol):
    """What a method sees of its connection (``ws.Connection`` provides it)."""

    bridge: Any
    session: AgentSession | None
    address: str  # the client's address, for the sign-in limits

    @property
    def socket(self) -> Socket: ...

    def after_reply(self, fn: Callable[[], None]) -> None: ...


def _session(ctx: Context) -> AgentSession:
    session = ctx.session
    if session is None or session.closed:
        raise NotSignedIn()
    return session


# -- session ---------------------------------------------------------------------------------------

def session_login(ctx: Context, **params: Any) -> dict[str, Any]:
    """Sign in, or join the agent's session. A refusal leaves the socket exactly as it was (still
    attached to its session, if it had one); a success moves it off its earlier session."""
    result = ctx.bridge.sign_in(ctx.socket, address=ctx.address, **params)
    _moved_to(ctx, ctx.bridge.registry.by_token(result["resumeToken"]))
    return dict(result)


def _moved_to(ctx: Context, session: AgentSession | None) -> None:
    """The socket now belongs to ``session``: let go of the one it had, if another."""
    old = ctx.session
    if old is not None and old is not session and not old.closed:
        old.detach(ctx.socket)
    ctx.session = session


def session_resume(ctx: Context, *, resumeToken: str, lastSeq: int) -> None:
    """Answered by ``handle`` from inside the session lock (the reply, then the missed events)."""
    raise InvalidParamsError("session.resume must be sent on its own, not in a batch")


def session_logout(ctx: Context, reasonCodeId: str | int | None = None) -> dict[str, Any]:
    session = _session(ctx)
    ctx.bridge.sign_out(session, None if reasonCodeId is None else str(reasonCodeId))
    ctx.after_reply(lambda: ctx.bridge.workers.submit(ctx.bridge.finish, session, "logout", True))
    return {}


def session_ping(ctx: Context) -> dict[str, Any]:
    return {"at": iso_now()}


# -- agent -----------------------------------------------------------------------------------------

def agent_get(ctx: Context) -> dict[str, Any]:
    return _session(ctx).agent.to_json()


def agent_set_state(ctx: Context, *, state: str, reasonCodeId: str | int | None = None) -> dict[str, Any]:
    session = _session(ctx)
    session.backend.rest.set_state(session.agent.id, state, None if reasonCodeId is None else str(reasonCodeId))
    return {}


def agent_reason_codes(ctx: Context, *, category: str) -> list[dict[str, Any]]:
    session = _session(ctx)
    return [rc.to_json() for rc in session.backend.rest.reason_codes(session.agent.id, category)]


def agent_wrap_up_reasons(ctx: Context) -> list[dict[str, Any]]:
    session = _session(ctx)
    return list(session.backend.rest.wrap_up_reasons(session.agent.id))


# -- calls -----------------------------------------------------------------------------------------

def call_list(ctx: Context) -> list[dict[str, Any]]:
    session = _session(ctx)
    with session.lock:
        return session.calls.as_json()


def _writable(ctx: Context, variables: dict[str, str] | None) -> None:
    """4003 naming the first variable ``WRITABLE_VARIABLES`` does not let clients write."""
    for name in variables or ():
        if not ctx.bridge.writable_variable(name):
            raise NotAllowed(f"Call variable {name} is not writable (WRITABLE_VARIABLES)", {"variable": name})


def call_make(ctx: Context, *, to: str, variables: dict[str, str] | None = None) -> dict[str, Any]:
    session = _session(ctx)
    _writable(ctx, variables)
    session.backend.rest.make_call(session.agent.id, session.extension, to, variables or None)
    return {}


def _action(verb: str, **extra: Any) -> Callable[..., dict[str, Any]]:
    def method(ctx: Context, *, callId: str, **params: Any) -> dict[str, Any]:
        session = _session(ctx)
        session.call(callId)  # 4004 unless the call is this agent's
        if "variables" in params:
            _writable(ctx, params["variables"])
        kwargs = {key: params[name] for name, key in extra.items() if name in params}
        session.backend.rest.dialog_action(callId, VERB_ACTIONS[verb], session.extension, **kwargs)
        return {}
    method.__name__ = f"call_{verb}"
    return method


# -- screen pops and the customer gadget -----------------------------------------------------------

def screenpop_blocked(ctx: Context, *, callId: str, url: str | None = None) -> dict[str, Any]:
    """The browser blocked a pop's window: count it for the admin (the page already told the agent)."""
    session = _session(ctx)
    ctx.bridge.metrics.screenpop_blocked.inc()
    try:
        host = urlsplit(url).hostname if url else None
    except ValueError:
        host = None
    # The host only: a pop's query string often carries the caller's number or a case id.
    log.info("agent %s: the browser blocked the screen pop for call %s%s", session.agent.id, callId,
             f" (host {host})" if host else "")
    return {}


def customer_lookup(ctx: Context, *, number: str, limit: int = 10) -> dict[str, Any]:
    """The caller's contact and this agent's own earlier calls with the number (never another agent's)."""
    session = _session(ctx)
    if not digits_of(number):  # caller ID withheld: nobody to look up
        return {"contact": None, "records": []}
    try:
        contact = ctx.bridge.profiles.lookup(number)
        records, _ = list_records(ctx.bridge.store, agent_id=session.agent.id, number=number, limit=limit)
    except StoreError as exc:
        log.error("customer.lookup for agent %s: the database failed: %s", session.agent.id, exc)
        raise Internal("The database is not available") from None
    return {"contact": contact, "records": records}


def rpc_discover(ctx: Context) -> dict[str, Any]:
    return protocol.document()


METHODS: dict[str, Callable[..., Any]] = {
    "session.login": session_login,
    "session.resume": session_resume,
    "session.logout": session_logout,
    "session.ping": session_ping,
    "agent.get": agent_get,
    "agent.setState": agent_set_state,
    "agent.reasonCodes": agent_reason_codes,
    "agent.wrapUpReasons": agent_wrap_up_reasons,
    "call.list": call_list,
    "call.make": call_make,
    "call.answer": _action("answer"),
    "call.hold": _action("hold"),
    "call.retrieve": _action("retrieve"),
    "call.end": _action("end"),
    "call.consult": _action("consult", to="to_address"),
    "call.transfer": _action("transfer"),
    "call.conference": _action("conference"),
    "call.blindTransfer": _action("blindTransfer", to="to_address"),
    "call.sendDigits": _action("sendDigits", digits="digits"),
    "call.updateVariables": _action("updateVariables", variables="variables"),
    "call.setWrapUp": _action("setWrapUp", reason="wrap_up_reason"),
    "screenpop.blocked": screenpop_blocked,
    "customer.lookup": customer_lookup,
    "rpc.discover": rpc_discover,
}
"""Every method; a test keeps this equal to openrpc.json."""

NOTIFICATIONS = ("agent.stateChanged", "agent.error", "call.ringing", "call.dialing", "call.answered",
                 "call.updated", "call.ended", "call.screenPop", "call.error", "connection.changed",
                 "session.ended")
"""Every notification the bridge sends; a test keeps this equal to openrpc.json."""


# -- dispatch --------------------------------------------------------------------------------------

@functools.cache
def _sensitive() -> frozenset[str]:
    """Params marked ``x-sensitive`` in openrpc.json (password, token, resumeToken)."""
    return frozenset(p["name"] for m in protocol.document()["methods"] for p in m["params"] if p.get("x-sensitive"))


def _leaves(value: Any) -> Iterator[str]:
    """The repr of every scalar inside ``value`` (keys included), as jsonschema quotes them."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield repr(key)
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None:
        yield repr(value)


def _params_problem(method: str, params: dict[str, Any], exc: Exception) -> str:
    """What is wrong with ``params``, naming the param, never repeating a credential whatever its shape."""
    message = getattr(exc, "message", None) or "Invalid params"
    secrets = [leaf for name in _sensitive() if name in params for leaf in _leaves(params[name])]
    if any(secret in message for secret in secrets):
        path = ".".join(str(part) for part in getattr(exc, "path", ())) or "params"
        return f"{method} params: invalid value at {path}"
    return message


def _unfit(params: dict[str, Any]) -> str | None:
    """What JSON Schema lets through and the bridge cannot use, as "<problem> (at $.path)", or None.

    No param of the protocol is a fraction, so a number written with one (5.0, 1e3) is refused
    rather than read as an integer; a string (or key) holding half of a UTF-16 surrogate pair
    ("\\ud800" alone) is not Unicode text and cannot go into Finesse's XML; and no param is more
    than one line, so control characters (a newline in a callId would forge a log line) are
    refused too. Iterative: params may be nested as deep as the parser allows.
    """
    stack: list[tuple[str, Any]] = [("$", params)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            return f"{value!r} is not an integer: write integers without a fraction or exponent (at {path})"
        if isinstance(value, str):
            problem = _bad_text(value)
            if problem:
                return f"{problem} (at {path})"
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = _bad_text(key)
                if problem:
                    return f"a name with {problem} (at {path})"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return None


_NOT_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _bad_text(value: str) -> str:
    """"" for text the bridge can pass on and log; else what is wrong with it (never the value)."""
    found = _NOT_TEXT.search(value)
    if found is None:
        return ""
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return "text that is not valid Unicode (a lone surrogate)"
    return f"a control character (U+{ord(char):04X})"


def _invalid_params(detail: str) -> Any:
    """-32602 with the reason (naming the param) as the message."""
    return Error(-32602, detail)


@functools.lru_cache(maxsize=1024)
def _latency(histogram: Any, name: str) -> Any:
    """``histogram.labels(name)``, kept: prometheus_client takes a lock and builds a tuple per call.

    Keyed by the histogram itself (each app has its own); bounded, so test runs that build many
    apps keep at most a few of them alive.
    """
    return histogram.labels(name)


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(ctx: Context, *args: Any, **params: Any) -> Any:
        if args:
            return _invalid_params("params must be an object (by name), not an array")
        try:
            protocol.validate_params(name, params)
        except Exception as exc:  # jsonschema.ValidationError: say which param and why
            return _invalid_params(_params_problem(name, params, exc))
        unfit = _unfit(params)
        if unfit is not None:
            return _invalid_params(f"{name} params: {unfit}")
        started = time.perf_counter()
        try:
            return Success(fn(ctx, **params))
        except BridgeError as exc:
            ctx.bridge.metrics.finesse_errors.labels(str(exc.code)).inc()
            return Error(exc.code, exc.message, exc.data if exc.data is not None else NODATA)
        except Exception:
            log.exception("method %s failed", name)
            return Error(-32603, "Internal error")
        finally:
            _latency(ctx.bridge.metrics.rpc_latency, name).observe(time.perf_counter() - started)
    # jsonrpcserver checks every call with inspect.signature(method).bind(...): computing the
    # signature is 8 of its 11 us, and it never changes.
    method.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return method


_WRAPPED = {name: _wrap(name, fn) for name, fn in METHODS.items()}

_SPEC_MESSAGES = {-32700: "Parse error", -32600: "Invalid Request", -32601: "Method not found"}
"""The specification's own wording (jsonrpcserver says "Invalid request")."""


def _serialise(response: Response) -> dict[str, Any]:
    body: dict[str, Any] = dict(to_serializable_one(response))  # type: ignore[arg-type]
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        if code in SPEC_CODES:  # exactly as the specification's examples: no data
            body["error"] = {"code": code, "message": _SPEC_MESSAGES[code]}
        elif code == -32603 or (isinstance(code, int) and -32099 <= code <= -32000):
            # jsonrpcserver's own failures carry the exception text as data: never send it.
            body["error"] = {"code": -32603, "message": "Internal error"}
    return body


def _error(code: int, message: str, data: Any = None) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": None})


_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


def _check_request(request: Any) -> Any:
    """``request`` if it is a JSON-RPC 2.0 request object, else raise (jsonrpcserver's validator).

    jsonrpcserver's own is jsonschema against its request-schema.json (draft 4), 40 us a call; this
    answers the same for every parsed JSON value: an object with "jsonrpc" exactly "2.0", "method"
    a string, "params" (if any) an array or object, "id" (if any) a string, number or null (never a
    boolean), and no other member. One difference, on purpose: that schema also accepts an *array*
    of requests, which as an element of a batch made jsonrpcserver run a nested batch (past
    ``max_batch``) and then fail with -32603; JSON-RPC 2.0 section 6 wants a Request object there,
    so a nested array is an Invalid Request like any other non-object.
    """
    if not (isinstance(request, dict) and request.get("jsonrpc") == "2.0"
            and isinstance(request.get("method"), str) and request.keys() <= _MEMBERS):
        raise ValueError("Invalid Request")
    if "params" in request and not isinstance(request["params"], (dict, list)):
        raise ValueError("Invalid Request")
    if "id" in request:
        id_ = request["id"]
        if not (id_ is None or isinstance(id_, str)
                or (isinstance(id_, (int, float)) and not isinstance(id_, bool))):
            raise ValueError("Invalid Request")
    return request


def _parsed(item: Any) -> Any:
    """The deserializer for an item ``handle`` has already parsed."""
    return item


def _dispatch_one(item: Any, ctx: Context) -> dict[str, Any] | None:
    """One request object (already parsed): its response, or None for a notification."""
    response = dispatch_to_response(item, _WRAPPED, context=ctx, deserializer=_parsed, validator=_check_request)
    if response is None:
        return None
    return _serialise(response)


def _is_resume(data: Any) -> bool:
    return (isinstance(data, dict) and data.get("jsonrpc") == "2.0" and data.get("method") == "session.resume"
            and "id" in data and (data["id"] is None or isinstance(data["id"], str)
                                  or (isinstance(data["id"], int) and not isinstance(data["id"], bool))))


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a float that JSON.parse would read back as Infinity
        raise ValueError("number out of range")
    return value


def _loads(text: str) -> Any:
    """RFC 8259 JSON only: NaN, Infinity and numbers beyond a double are refused (Python accepts
    them, then writes them back as text a browser's JSON.parse rejects). Integers past 4,300 digits
    are refused by Python itself."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


ALONE = frozenset({"session.login", "session.resume", "rpc.discover"})
"""Methods refused inside a batch: sign-ins (one at a time per socket: docs/security.md) and the
protocol document (tens of kilobytes a reply)."""


def _alone(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("method"), str) and item["method"] in ALONE


def _refused_in_batch(item: dict[str, Any]) -> dict[str, Any] | None:
    """The error for an ``ALONE`` method inside a batch (nothing for a notification); never run."""
    try:
        _check_request(item)
    except ValueError:
        return {"jsonrpc": "2.0", "error": {"code": -32600, "message": _SPEC_MESSAGES[-32600]}, "id": None}
    if "id" not in item:
        return None
    message = f"{item['method']} must be sent on its own, not in a batch"
    return {"jsonrpc": "2.0", "error": {"code": -32602, "message": message}, "id": item["id"]}


def handle(text: str, ctx: Context, max_batch: int = 20) -> str:
    """One WebSocket message in, the reply text out ("" when nothing is owed)."""
    try:
        data = _loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return _error(-32700, "Parse error")
    try:
        if isinstance(data, list):
            if not data:
                return _error(-32600, "Invalid Request")
            if len(data) > max_batch:
                return _error(-32600, "Invalid Request", f"a batch holds at most {max_batch} requests")
            # Each element on its own (JSON-RPC 2.0 section 6): an invalid one gets its own error.
            replies = [reply for reply in (
                _refused_in_batch(item) if _alone(item) else _dispatch_one(item, ctx) for item in data)
                if reply is not None]
            return json.dumps(replies) if replies else ""
        if _is_resume(data):
            return _resume(data, ctx)
        reply = _dispatch_one(data, ctx)
        return "" if reply is None else json.dumps(reply)
    except Exception:  # a bug of ours: answer, keep the socket, never send the exception text
        log.exception("handling a message failed")
        return _error(-32603, "Internal error")


def _resume(data: dict[str, Any], ctx: Context) -> str:
    """session.resume: the reply and the replayed events must leave in order, under the session lock."""
    request_id = data.get("id")
    params = data.get("params", {})
    try:
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object (by name)")
        try:
            protocol.validate_params("session.resume", params)
        except Exception as exc:
            raise InvalidParamsError(_params_problem("session.resume", params, exc)) from None
        unfit = _unfit(params)
        if unfit is not None:
            raise InvalidParamsError(f"session.resume params: {unfit}")

        def reply(result: dict[str, Any]) -> str:
            return json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id})
        # A refusal leaves the socket on the session it had; a success moves it.
        _moved_to(ctx, ctx.bridge.resume(ctx.socket, params["resumeToken"], params["lastSeq"], reply))
        return ""  # already sent, in order, by the session
    except BridgeError as exc:
        return json.dumps({"jsonrpc": "2.0", "error": exc.to_json(), "id": request_id})
    except Exception:
        log.exception("session.resume failed")
        return json.dumps({"jsonrpc": "2.0", "error": {"code": -32603, "message": "Internal error"},
                           "id": request_id})


__all__ = ["METHODS", "NOTIFICATIONS", "handle", "ErrorResponse"]
