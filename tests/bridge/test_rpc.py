"""``bridge.rpc.handle`` on its own: JSON-RPC text in, JSON-RPC text out, a fake bridge, no network.

The specification's section 7 examples are answered exactly as the specification shows them
(parsed JSON compared for equality), adapted to our method names.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any, Callable

import pytest
from jsonschema.validators import validator_for

from bridge import protocol, rpc
from bridge.errors import ActionRefused, BadCredentials, NotSignedIn, NoSuchCall
from bridge.metrics import Metrics

PING = {"jsonrpc": "2.0", "method": "session.ping"}


class FakeRest:
    """Records what the methods ask of Finesse; ``fail`` is raised instead when set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: BaseException | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            if self.fail is not None:
                raise self.fail
            return []
        return method


class FakeCalls:
    def as_json(self) -> list[dict[str, Any]]:
        return []


class FakeAgent:
    id = "1001"

    def to_json(self) -> dict[str, Any]:
        return {"id": "1001", "state": "NOT_READY"}


class FakeSession:
    """A signed-in agent with no calls."""

    def __init__(self) -> None:
        self.closed = False
        self.agent = FakeAgent()
        self.extension = "71001"
        self.calls = FakeCalls()
        self.backend = type("Backend", (), {"rest": FakeRest()})()
        self.lock = __import__("threading").RLock()
        self.detached: list[Any] = []

    def call(self, call_id: str) -> Any:
        raise NoSuchCall(f"No call {call_id!r} for this agent")

    def detach(self, socket: Any) -> None:
        self.detached.append(socket)


class FakeBridge:
    """Just what ``rpc`` touches: metrics, sign-in and resume (each replaceable by a test)."""

    def __init__(self) -> None:
        self.metrics = Metrics(lambda: {})
        self.sign_in: Callable[..., Any] = self._not_expected
        self.resume: Callable[..., Any] = self._not_expected

    @staticmethod
    def writable_variable(name: str) -> bool:  # WRITABLE_VARIABLES' default: callVariable1..10, no ECC
        return name.startswith("callVariable")

    @staticmethod
    def _not_expected(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not expected in this test")


class FakeConnection:
    """The per-socket context ``ws.Connection`` provides."""

    def __init__(self) -> None:
        self.id = "sock-1"
        self.address = "127.0.0.1"
        self.bridge = FakeBridge()
        self.session: Any = None
        self.after: list[Callable[[], None]] = []

    @property
    def socket(self) -> "FakeConnection":
        return self

    def after_reply(self, fn: Callable[[], None]) -> None:
        self.after.append(fn)


@pytest.fixture
def ctx() -> FakeConnection:
    return FakeConnection()


def answer(ctx: FakeConnection, message: Any, max_batch: int = 20) -> Any:
    """Send ``message`` (text as is, anything else as JSON); the parsed reply, or None for no reply."""
    text = message if isinstance(message, str) else json.dumps(message)
    reply = rpc.handle(text, ctx, max_batch)  # type: ignore[arg-type]
    return json.loads(reply) if reply else None


def error(code: int, message: str, id_: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_}


INVALID_REQUEST = error(-32600, "Invalid Request")
PARSE_ERROR = error(-32700, "Parse error")


# -- the specification's section 7 examples --------------------------------------------------------

def test_call_with_named_params_echoes_the_id(ctx):
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "agent.reasonCodes", "params": {"category": "NOT_READY"},
                         "id": 3})
    assert reply == error(4001, "Not signed in", 3)  # named params accepted; the session decides
    ctx.session = FakeSession()
    assert answer(ctx, {"jsonrpc": "2.0", "method": "agent.reasonCodes", "params": {"category": "NOT_READY"},
                        "id": 4}) == {"jsonrpc": "2.0", "result": [], "id": 4}
    assert ctx.session.backend.rest.calls == [("reason_codes", ("1001", "NOT_READY"))]


def test_notification_gets_no_reply_even_when_it_fails(ctx):
    assert answer(ctx, PING) is None
    assert answer(ctx, {"jsonrpc": "2.0", "method": "agent.get"}) is None  # 4001, but unanswered
    assert answer(ctx, {"jsonrpc": "2.0", "method": "no.such"}) is None


def test_non_existent_method(ctx):
    assert answer(ctx, {"jsonrpc": "2.0", "method": "foobar", "id": "1"}) == error(-32601, "Method not found", "1")


def test_invalid_json(ctx):
    assert answer(ctx, '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]') == PARSE_ERROR


def test_invalid_request_object(ctx):
    assert answer(ctx, {"jsonrpc": "2.0", "method": 1, "params": "bar"}) == INVALID_REQUEST


def test_batch_with_invalid_json(ctx):
    text = ('[{"jsonrpc": "2.0", "method": "session.ping", "params": {}, "id": "1"},'
            '{"jsonrpc": "2.0", "method"]')
    assert answer(ctx, text) == PARSE_ERROR


def test_empty_batch(ctx):
    assert answer(ctx, []) == INVALID_REQUEST


@pytest.mark.parametrize("batch", [[1], [1, 2, 3]])
def test_invalid_batch_answers_each_element(ctx, batch):
    assert answer(ctx, batch) == [INVALID_REQUEST] * len(batch)


def test_mixed_batch(ctx):
    ctx.session = FakeSession()
    reply = answer(ctx, [
        {"jsonrpc": "2.0", "method": "call.list", "id": "1"},
        {"jsonrpc": "2.0", "method": "session.ping"},
        {"jsonrpc": "2.0", "method": "agent.get", "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "agent.wrapUpReasons", "id": "9"},
    ])
    assert reply == [
        {"jsonrpc": "2.0", "result": [], "id": "1"},
        {"jsonrpc": "2.0", "result": {"id": "1001", "state": "NOT_READY"}, "id": "2"},
        INVALID_REQUEST,
        error(-32601, "Method not found", "5"),
        {"jsonrpc": "2.0", "result": [], "id": "9"},
    ]


def test_batch_of_notifications_gets_no_reply(ctx):
    assert rpc.handle(json.dumps([PING, {"jsonrpc": "2.0", "method": "agent.get"}]), ctx) == ""  # type: ignore[arg-type]


# -- ids, params, limits ---------------------------------------------------------------------------

@pytest.mark.parametrize("id_", ["abc", "", 0, 7, 2**53, None])
def test_id_echoed_exactly(ctx, id_):
    reply = answer(ctx, {**PING, "id": id_})
    assert reply["id"] == id_ and type(reply["id"]) is type(id_) and "at" in reply["result"]
    assert answer(ctx, {"jsonrpc": "2.0", "method": "nope", "id": id_}) == error(-32601, "Method not found", id_)


@pytest.mark.parametrize("id_", [True, [1], {"a": 1}])
def test_id_of_a_wrong_type_is_an_invalid_request(ctx, id_):
    assert answer(ctx, {**PING, "id": id_}) == INVALID_REQUEST


def test_positional_params_are_invalid_params(ctx):
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "agent.setState", "params": ["READY"], "id": 1})
    assert reply["error"]["code"] == -32602 and "by name" in reply["error"]["message"] and reply["id"] == 1


@pytest.mark.parametrize("method, params, named", [
    ("call.answer", {}, "callId"),
    ("call.answer", {"callId": 12}, "callId"),
    ("agent.setState", {"state": "BUSY"}, "state"),
    ("agent.reasonCodes", {"category": "NOT_READY", "agentId": "1002"}, "agentId"),
    ("session.login", {"agentId": "1001", "password": "pw"}, "extension"),
])
def test_invalid_params_message_names_the_param(ctx, method, params, named):
    ctx.session = FakeSession()
    reply = answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply["error"]["code"] == -32602 and named in reply["error"]["message"], reply
    assert ctx.session.backend.rest.calls == []  # nothing reached Finesse


def test_invalid_params_never_echo_a_password(ctx):
    params = {"agentId": "1001", "loginName": "jdoe", "password": "hunter2-secret", "extension": "71001"}
    text = rpc.handle(json.dumps({"jsonrpc": "2.0", "method": "session.login", "params": params, "id": 1}),
                      ctx)  # type: ignore[arg-type]
    assert json.loads(text)["error"]["code"] == -32602
    assert "hunter2" not in text


@pytest.mark.parametrize("method, name, value", [
    ("session.login", "password", ["hunter2-secret"]),
    ("session.login", "password", {"nested": "hunter2-secret"}),
    ("session.login", "password", {"hunter2-secret": 1}),
    ("session.login", "token", ["hunter2-secret"]),
    ("session.resume", "resumeToken", ["hunter2-secret"]),
])
def test_a_credential_of_the_wrong_shape_is_not_echoed(ctx, method, name, value):
    params: dict[str, Any] = {"agentId": "1001", "extension": "71001", name: value} if method == "session.login" \
        else {"resumeToken": value, "lastSeq": 0}
    text = rpc.handle(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}),
                      ctx)  # type: ignore[arg-type]
    error = json.loads(text)["error"]
    assert error["code"] == -32602 and name in error["message"], error
    assert "hunter2" not in text


def test_batch_over_the_limit_is_one_invalid_request(ctx):
    reply = answer(ctx, [{**PING, "id": i} for i in range(4)], max_batch=3)
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert len(answer(ctx, [{**PING, "id": i} for i in range(3)], max_batch=3)) == 3  # the limit itself is fine


def test_resume_inside_a_batch_is_refused_clearly(ctx):
    resume = {"jsonrpc": "2.0", "method": "session.resume", "params": {"resumeToken": "t", "lastSeq": 0}, "id": "r"}
    reply = answer(ctx, [resume, {**PING, "id": "p"}])  # bridge.resume would raise AssertionError
    assert reply[0]["id"] == "r" and reply[0]["error"]["code"] == -32602
    assert "batch" in reply[0]["error"]["message"]
    assert reply[1]["id"] == "p" and "result" in reply[1]


def test_resume_errors_keep_the_id(ctx):
    def resume(socket: Any, token: str, last_seq: int, reply: Any) -> Any:
        raise NotSignedIn("Session expired; sign in again")
    ctx.bridge.resume = resume
    message = {"jsonrpc": "2.0", "method": "session.resume", "params": {"resumeToken": "t", "lastSeq": 0}, "id": "r"}
    assert answer(ctx, message) == error(4001, "Session expired; sign in again", "r")
    reply = answer(ctx, {**message, "params": {"resumeToken": "t"}})
    assert reply["error"]["code"] == -32602 and "lastSeq" in reply["error"]["message"] and reply["id"] == "r"


@pytest.mark.parametrize("depth", [100_000, 2_000])
def test_deeply_nested_json_is_answered_not_raised(ctx, depth):
    reply = answer(ctx, '{"jsonrpc": "2.0", "method": "session.ping", "id": 1, "params": {"x": '
                   + "[" * depth + "]" * depth + "}}")
    assert reply["error"]["code"] in (-32700, -32600, -32602)


# -- the request check: what jsonrpcserver's own (jsonschema) validator answers ---------------------

def _stock_validator() -> Any:
    """jsonrpcserver's default validator, built as it builds it (its request-schema.json, draft 4)."""
    schema = json.loads(resources.files("jsonrpcserver").joinpath("request-schema.json").read_text())
    return validator_for(schema)(schema)


STOCK = _stock_validator()


@pytest.mark.parametrize("message", [
    {"jsonrpc": "1.0", "method": "session.ping", "id": 1},
    {"jsonrpc": 2.0, "method": "session.ping", "id": 1},
    {"jsonrpc": "2.0 ", "method": "session.ping", "id": 1},
    {"jsonrpc": None, "method": "session.ping", "id": 1},
    {"method": "session.ping", "id": 1},
    {"jsonrpc": "2.0", "id": 1},
    {"jsonrpc": "2.0", "method": None, "id": 1},
    {"jsonrpc": "2.0", "method": 1, "id": 1},
    {"jsonrpc": "2.0", "method": ["session.ping"], "id": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "params": "bar", "id": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "params": 1, "id": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "params": None, "id": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "params": True, "id": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "id": False},
    {"jsonrpc": "2.0", "method": "session.ping", "id": True},
    {"jsonrpc": "2.0", "method": "session.ping", "id": 1, "extra": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "ID": 1},
    {"jsonrpc": "2.0", "method": "session.ping", "id": 1, "result": {}},
    {"jsonrpc": "2.0", "method": "session.resume", "params": {"resumeToken": "t", "lastSeq": 0}, "id": True},
    {"jsonrpc": "2.0", "method": 1},  # a notification, but not a request object: answered
    {}, "2.0", None, 7, True,
])
def test_what_the_stock_validator_refuses_is_an_invalid_request(ctx, message):
    assert not STOCK.is_valid(message)
    assert answer(ctx, json.dumps(message)) == INVALID_REQUEST
    assert answer(ctx, [message, {**PING, "id": "p"}])[0] == INVALID_REQUEST  # and as an element of a batch


@pytest.mark.parametrize("message, reply", [
    ({**PING, "id": 1.5}, "result"),
    ({**PING, "id": -3}, "result"),
    ({**PING, "id": 1e300}, "result"),
    ({**PING, "params": {}, "id": 1}, "result"),
    ({**PING, "params": [], "id": 1}, "result"),  # positional, but none: nothing to refuse
    ({"jsonrpc": "2.0", "method": "", "id": 1}, error(-32601, "Method not found", 1)),
    ({"jsonrpc": "2.0", "method": "session.ping", "params": ["x"], "id": 1}, -32602),
])
def test_what_the_stock_validator_accepts_is_dispatched(ctx, message, reply):
    assert STOCK.is_valid(message)
    got = answer(ctx, message)
    if reply == "result":
        assert got["id"] == message["id"] and "at" in got["result"]
    elif isinstance(reply, int):
        assert got["error"]["code"] == reply and got["id"] == message["id"]
    else:
        assert got == reply


def test_a_nested_array_in_a_batch_is_an_invalid_request(ctx):
    """The one answer that differs from jsonrpcserver's: its schema takes an array of requests anywhere,
    so a batch inside a batch ran (past max_batch) and the message then failed with -32603."""
    ctx.session = FakeSession()
    ready = {"jsonrpc": "2.0", "method": "agent.setState", "params": {"state": "READY"}}
    assert STOCK.is_valid([ready] * 3)
    assert answer(ctx, [[ready] * 3, {**PING, "id": "p"}])[0] == INVALID_REQUEST
    assert answer(ctx, [[{**ready, "id": 1}]]) == [INVALID_REQUEST]
    assert ctx.session.backend.rest.calls == []  # nothing inside reached Finesse


# -- params: the fast path accepts exactly what jsonschema accepts, jsonschema words the refusals ----

@pytest.mark.parametrize("method, params", [
    ("customer.lookup", {"number": "", "limit": 50}),
    ("agent.setState", {"state": "READY", "reasonCodeId": 1}),
    ("call.sendDigits", {"callId": "1", "digits": "12#"}),
    ("call.make", {"to": "5550100", "variables": {"callVariable10": "\u00e9" * 40}}),
    ("call.make", {"to": "5550100", "variables": {}}),
    ("call.setWrapUp", {"callId": "1", "reason": "x" * 40}),
])
def test_edge_params_that_jsonschema_accepts_are_accepted(ctx, method, params):
    ctx.session = FakeSession()
    ctx.session.call = lambda call_id: None
    reply = answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply == {"jsonrpc": "2.0", "result": {"contact": None, "records": []} if method == "customer.lookup" else {},
                     "id": 1}


@pytest.mark.parametrize("method, params, message", [
    # Draft 2020-12 calls 5.0 an integer; the bridge's store and Finesse do not: refused, not -32603
    ("customer.lookup", {"number": "4155550100", "limit": 5.0},
     "customer.lookup params: 5.0 is not an integer: write integers without a fraction or exponent (at $.limit)"),
    ("agent.setState", {"state": "READY", "reasonCodeId": 1.0},
     "agent.setState params: 1.0 is not an integer: write integers without a fraction or exponent (at $.reasonCodeId)"),
    ("session.logout", {"reasonCodeId": 1e3},
     "session.logout params: 1000.0 is not an integer: write integers without a fraction or exponent (at $.reasonCodeId)"),
    # a lone surrogate cannot go into Finesse's XML (it was -32603 with a traceback)
    ("call.make", {"to": "555\ud800"},
     "call.make params: text that is not valid Unicode (a lone surrogate) (at $.to)"),
    ("call.make", {"to": "5550100", "variables": {"callVariable1": "\udfff"}},
     "call.make params: text that is not valid Unicode (a lone surrogate) (at $.variables.callVariable1)"),
    # Python's $ matches before a final newline, so a pattern alone lets "12\n" through: a forged log line
    ("call.sendDigits", {"callId": "1", "digits": "12\n"},
     "call.sendDigits params: a control character (U+000A) (at $.digits)"),
    ("call.answer", {"callId": "1\n"}, "call.answer params: a control character (U+000A) (at $.callId)"),
    ("call.setWrapUp", {"callId": "1", "reason": "ok\x1b[31m"},
     "call.setWrapUp params: a control character (U+001B) (at $.reason)"),
])
def test_params_jsonschema_accepts_but_the_bridge_cannot_use_are_invalid_params(ctx, caplog, method, params, message):
    ctx.session = FakeSession()
    ctx.session.call = lambda call_id: None
    with caplog.at_level(logging.DEBUG, logger="bridge"):
        reply = answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply == error(-32602, message, 1)
    assert ctx.session.backend.rest.calls == []  # nothing reached Finesse
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback


def test_a_fractional_last_seq_is_refused_by_resume(ctx):
    params = {"resumeToken": "t", "lastSeq": 3.0}  # bridge.resume would raise AssertionError
    assert answer(ctx, {"jsonrpc": "2.0", "method": "session.resume", "params": params, "id": 1}) == error(
        -32602, "session.resume params: 3.0 is not an integer: write integers without a fraction or exponent "
                "(at $.lastSeq)", 1)


@pytest.mark.parametrize("text", [
    '{"jsonrpc": "2.0", "method": "session.ping", "id": NaN}',
    '{"jsonrpc": "2.0", "method": "session.ping", "id": Infinity}',
    '{"jsonrpc": "2.0", "method": "session.ping", "id": -Infinity}',
    '{"jsonrpc": "2.0", "method": "session.ping", "id": 1e999}',
    '{"jsonrpc": "2.0", "method": "customer.lookup", "params": {"number": "1", "limit": 1e999}, "id": 1}',
    '[{"jsonrpc": "2.0", "method": "session.ping", "id": NaN}]',
])
def test_nan_infinity_and_numbers_beyond_a_double_are_parse_errors(ctx, text):
    reply = rpc.handle(text, ctx)  # type: ignore[arg-type]
    assert json.loads(reply, parse_constant=lambda name: pytest.fail(f"{name} in the reply")) == PARSE_ERROR


@pytest.mark.parametrize("method, params", [
    ("session.login", {"agentId": "1001", "password": "pw", "extension": "71001"}),
    ("session.resume", {"resumeToken": "t", "lastSeq": 0}),
    ("rpc.discover", {}),
])
def test_sign_ins_and_the_document_are_refused_inside_a_batch(ctx, method, params):
    batch = [{"jsonrpc": "2.0", "method": method, "params": params, "id": n} for n in range(5)]
    reply = answer(ctx, [*batch, {**PING, "id": "p"}])  # bridge.sign_in and resume would raise AssertionError
    assert reply[:5] == [error(-32602, f"{method} must be sent on its own, not in a batch", n) for n in range(5)]
    assert reply[5] == {"jsonrpc": "2.0", "result": reply[5]["result"], "id": "p"}  # the rest of the batch runs
    assert answer(ctx, [{"jsonrpc": "2.0", "method": method, "params": params}]) is None  # notifications: no reply


@pytest.mark.parametrize("method, params", [
    ("call.make", {"to": "5550100", "variables": {"callVariable1": "ok", "user.routing.priority": "1"}}),
    ("call.updateVariables", {"callId": "1", "variables": {"user.routing.priority": "1"}}),
])
def test_variables_outside_the_allow_list_are_not_allowed(ctx, method, params):
    ctx.session = FakeSession()
    ctx.session.call = lambda call_id: None
    reply = answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": 4003, "message": "Call variable user.routing.priority is not writable (WRITABLE_VARIABLES)",
        "data": {"variable": "user.routing.priority"}}}
    assert ctx.session.backend.rest.calls == []


@pytest.mark.parametrize("method, params, message", [
    ("call.answer", {"callId": 12}, "call.answer params: 12 is not of type 'string' (at $.callId)"),
    ("call.answer", {"callId": ""}, "call.answer params: '' should be non-empty (at $.callId)"),
    ("call.answer", {"callId": "1", "x": 1},
     "call.answer params: Additional properties are not allowed ('x' was unexpected) (at $)"),
    ("session.resume", {"resumeToken": "t", "lastSeq": 1.5},
     "session.resume params: 1.5 is not of type 'integer' (at $.lastSeq)"),
    ("session.resume", {"resumeToken": "t", "lastSeq": True},
     "session.resume params: True is not of type 'integer' (at $.lastSeq)"),
    ("session.resume", {"resumeToken": "t", "lastSeq": -1},
     "session.resume params: -1 is less than the minimum of 0 (at $.lastSeq)"),
    ("customer.lookup", {"number": "1", "limit": True},
     "customer.lookup params: True is not of type 'integer' (at $.limit)"),
    ("customer.lookup", {"number": "1", "limit": 51},
     "customer.lookup params: 51 is greater than the maximum of 50 (at $.limit)"),
    ("agent.setState", {"state": "ready"},
     "agent.setState params: 'ready' is not one of ['READY', 'NOT_READY', 'WORK', 'WORK_READY'] (at $.state)"),
    ("agent.setState", {"state": "READY", "reasonCodeId": True},
     "agent.setState params: True is not of type 'string', 'integer' (at $.reasonCodeId)"),
    ("call.sendDigits", {"callId": "1", "digits": "E"},
     "call.sendDigits params: 'E' does not match '^[0-9A-D*#]{1,32}$' (at $.digits)"),
    ("call.make", {"to": "1", "variables": {"callVariable11": "x"}},
     "call.make params: 'callVariable11' does not match '^(callVariable([1-9]|10)|user\\\\.[A-Za-z0-9_.\\\\[\\\\]]+)$'"
     " (at $.variables)"),
    ("call.make", {"to": "1", "variables": {"callVariable1": "x" * 41}},
     f"call.make params: '{'x' * 41}' is too long (at $.variables.callVariable1)"),
    ("session.login", {"password": "pw", "extension": "1"},
     "session.login params: {'password': '***', 'extension': '1'} is not valid under any of the given schemas (at $)"),
])
def test_invalid_params_get_jsonschemas_message(ctx, method, params, message):
    ctx.session = FakeSession()
    assert answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}) == error(-32602, message, 1)
    assert ctx.session.backend.rest.calls == []


def test_both_login_names_are_refused(ctx):
    params = {"agentId": "1001", "loginName": "jdoe", "password": "pw", "extension": "71001"}
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "session.login", "params": params, "id": 1})
    assert reply["error"]["code"] == -32602 and "is valid under each of" in reply["error"]["message"]


# -- sessions and errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, params", [
    ("agent.get", {}), ("agent.setState", {"state": "READY"}), ("agent.reasonCodes", {"category": "LOGOUT"}),
    ("agent.wrapUpReasons", {}), ("call.list", {}), ("call.make", {"to": "5550100"}),
    ("call.answer", {"callId": "1"}), ("session.logout", {}),
])
def test_4001_before_login(ctx, method, params):
    assert answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}) == \
        error(4001, "Not signed in", 1)


def test_4001_after_the_session_closed(ctx):
    ctx.session = FakeSession()
    ctx.session.closed = True
    assert answer(ctx, {"jsonrpc": "2.0", "method": "agent.get", "id": 1}) == error(4001, "Not signed in", 1)


def test_internal_errors_never_leak_the_exception_text(ctx, caplog):
    def sign_in(socket: Any, **params: Any) -> Any:
        raise RuntimeError("secret detail")
    ctx.bridge.sign_in = sign_in
    params = {"agentId": "1001", "password": "pw", "extension": "71001"}
    with caplog.at_level(logging.ERROR, logger="bridge.rpc"):
        text = rpc.handle(json.dumps({"jsonrpc": "2.0", "method": "session.login", "params": params, "id": 1}),
                          ctx)  # type: ignore[arg-type]
    assert json.loads(text) == error(-32603, "Internal error", 1)
    assert "secret detail" not in text
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)  # logged for us


def test_a_failure_inside_jsonrpcserver_is_internal_error_without_detail(ctx):
    class Broken:
        def labels(self, *args: Any) -> Any:
            raise RuntimeError("secret detail")
    ctx.bridge.metrics.rpc_latency = Broken()  # raises from the wrapper's finally, inside the library
    text = rpc.handle(json.dumps({**PING, "id": 5}), ctx)  # type: ignore[arg-type]
    assert json.loads(text) == error(-32603, "Internal error", 5)
    assert "secret" not in text


def test_resume_internal_error_never_leaks(ctx):
    def resume(*args: Any) -> Any:
        raise RuntimeError("secret detail")
    ctx.bridge.resume = resume
    text = rpc.handle(json.dumps({"jsonrpc": "2.0", "method": "session.resume",
                                  "params": {"resumeToken": "t", "lastSeq": 0}, "id": 2}), ctx)  # type: ignore[arg-type]
    assert json.loads(text) == error(-32603, "Internal error", 2)


def test_bridge_error_code_message_and_data_pass_through(ctx):
    ctx.session = FakeSession()
    ctx.session.backend.rest.fail = ActionRefused("Finesse refused: Invalid State",
                                                  data={"errorType": "Invalid State", "message": "no"})
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "agent.setState", "params": {"state": "READY"}, "id": 1})
    assert reply == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": 4090, "message": "Finesse refused: Invalid State", "data": {"errorType": "Invalid State", "message": "no"}}}
    ctx.session.backend.rest.fail = ActionRefused()
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "agent.setState", "params": {"state": "READY"}, "id": 2})
    assert reply == error(4090, "Finesse refused the action in this state", 2)  # no data member at all


def test_call_methods_check_the_call_is_the_agents(ctx):
    ctx.session = FakeSession()
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "call.end", "params": {"callId": "999"}, "id": 1})
    assert reply["error"]["code"] == 4004
    assert ctx.session.backend.rest.calls == []  # never asked Finesse to end someone else's call


def test_login_replaces_an_earlier_session_on_the_socket(ctx):
    old = FakeSession()
    ctx.session = old
    new = FakeSession()
    seen: dict[str, Any] = {}

    def sign_in(socket: Any, **params: Any) -> dict[str, Any]:
        seen.update(params)
        return {"sessionId": "s", "resumeToken": "tok", "agent": {}, "calls": [], "seq": 0}
    ctx.bridge.sign_in = sign_in
    ctx.bridge.registry = type("Registry", (), {"by_token": staticmethod(lambda token: new)})()
    params = {"agentId": "1001", "password": "pw", "extension": "71001"}
    reply = answer(ctx, {"jsonrpc": "2.0", "method": "session.login", "params": params, "id": 1})
    assert reply["result"]["resumeToken"] == "tok" and seen == {**params, "address": "127.0.0.1"}
    assert old.detached == [ctx] and ctx.session is new


@pytest.mark.parametrize("method, params", [
    ("session.login", {"agentId": "1002", "password": "wrong", "extension": "71002"}),
    ("session.resume", {"resumeToken": "expired", "lastSeq": 0}),
])
def test_a_refused_sign_in_or_resume_leaves_the_socket_on_its_session(ctx, method, params):
    old = FakeSession()
    ctx.session = old

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise (BadCredentials() if method == "session.login" else NotSignedIn("Session expired; sign in again"))
    ctx.bridge.sign_in = ctx.bridge.resume = refuse
    reply = answer(ctx, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    assert reply["error"]["code"] in (4010, 4001)
    assert old.detached == [] and ctx.session is old  # still attached: its events still reach this socket


def test_rpc_discover_is_the_document(ctx):
    assert answer(ctx, {"jsonrpc": "2.0", "method": "rpc.discover", "id": 1})["result"] == protocol.document()


def test_latency_is_counted_per_method(ctx):
    answer(ctx, {**PING, "id": 1})
    answer(ctx, {**PING, "id": 2})
    registry = ctx.bridge.metrics.registry
    assert registry.get_sample_value("cti_rpc_seconds_count", {"method": "session.ping"}) == 2.0
