"""openrpc.json: well formed, complete, equal to the code, and strict enough: the protocol is this one document, and these tests keep the code equal to it."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Iterator

import jsonschema
import pytest
from jsonschema import Draft7Validator, Draft202012Validator

import bridge.errors
import bridge.protocol as protocol
from bridge.finesse import model

AT = "2024-05-02T10:11:12.345Z"

USER_XML = """<User><uri>/finesse/api/User/1001</uri><loginId>1001</loginId><loginName>jdoe</loginName>
<firstName>Jane</firstName><lastName>Doe</lastName><extension>2001</extension>
<roles><role>Agent</role><role>Supervisor</role></roles><state>NOT_READY</state>
<stateChangeTime>2024-05-02T10:11:12.345Z</stateChangeTime><pendingState/><reasonCodeId>12</reasonCodeId>
<ReasonCode><category>NOT_READY</category><uri>/finesse/api/ReasonCode/12</uri><code>7</code>
<label>Lunch</label><forAll>true</forAll></ReasonCode><teamId>5</teamId><teamName>Sales</teamName></User>"""

DIALOG_XML = """<Dialog><uri>/finesse/api/Dialog/16777217</uri><id>16777217</id><associatedDialogUri/>
<secondaryId/><mediaType>Voice</mediaType><state>ALERTING</state><fromAddress>5551234</fromAddress>
<toAddress>2001</toAddress><mediaProperties><dialedNumber>8000</dialedNumber><callType>ACD_IN</callType>
<DNIS>8000</DNIS><queueNumber>9000</queueNumber><queueName>Sales</queueName><wrapUpReason/>
<callvariables><CallVariable><name>callVariable1</name><value>ACCT-1001</value></CallVariable>
<CallVariable><name>user.order.id</name><value>42</value></CallVariable></callvariables></mediaProperties>
<participants><Participant><actions><action>ANSWER</action><action>UPDATE_CALL_DATA</action></actions>
<mediaAddress>2001</mediaAddress><mediaAddressType>AGENT_DEVICE</mediaAddressType>
<startTime>2024-05-02T10:11:12.345Z</startTime><state>ALERTING</state><stateCause/>
<stateChangeTime>2024-05-02T10:11:12.345Z</stateChangeTime></Participant>
<Participant><actions/><mediaAddress>5551234</mediaAddress><mediaAddressType/>
<startTime>1714644672000</startTime><state>ACTIVE</state><stateCause/><stateChangeTime/></Participant>
</participants></Dialog>"""


def agent_json() -> dict[str, Any]:
    return model.parse_user(model.parse_document(USER_XML)).to_json()


def call_json() -> dict[str, Any]:
    return model.parse_call(model.parse_document(DIALOG_XML), "2001").to_json()


def record_json() -> dict[str, Any]:
    return {"id": "r1", "agentId": "1001", "callId": "16777217", "direction": "inbound", "from": "5551234",
            "to": "2001", "startedAt": AT, "answeredAt": "", "endedAt": AT, "durationSeconds": 12.5,
            "talkSeconds": 0, "outcome": "missed", "wrapUpReason": "", "variables": {"callVariable1": "x"}}


def note(name: str, /, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": name, "params": {"seq": 3, "at": AT, **params}}


def refused(fn: Any, *args: Any) -> str:
    with pytest.raises(jsonschema.ValidationError) as info:
        fn(*args)
    return str(info.value)


# -- the document ---------------------------------------------------------------------------------

def test_document_is_json_with_the_expected_header() -> None:
    text = resources.files("bridge.protocol").joinpath("openrpc.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    assert doc == protocol.document()
    assert doc["openrpc"] == "1.2.6"
    assert doc["info"]["title"] == "CTI Bridge protocol" and doc["info"]["version"] == "1.0.0"
    assert doc["servers"][0]["url"] == "ws://127.0.0.1:8080/rpc"
    protocol.document()["info"]["title"] = "changed"
    assert protocol.document()["info"]["title"] == "CTI Bridge protocol"  # callers get a copy


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_resolves_inside_the_document() -> None:
    doc = protocol.document()
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, ref
            node = node[part]


def test_every_schema_compiles_as_draft_7_and_2020_12() -> None:
    """OpenRPC 1.2.6 schemas are draft 7; we validate with 2020-12; they must mean the same in both."""
    doc = protocol.document()
    schemas = [*doc["components"]["schemas"].values()]
    for item in doc["methods"] + doc["x-notifications"]:
        schemas += [p["schema"] for p in item["params"]] + ([item["result"]["schema"]] if "result" in item else [])
        schemas += [item[key] for key in ("x-params-schema",) if key in item]
    for schema in schemas:
        Draft7Validator.check_schema(schema)
        Draft202012Validator.check_schema(schema)
        assert not {"$defs", "prefixItems", "dependentRequired", "unevaluatedProperties"} & set(_keys(schema))
    protocol.compile_all()


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def test_openrpc_shape() -> None:
    """The parts of the OpenRPC 1.2.6 meta-schema we use: allowed keys, by-name, errors by reference."""
    doc = protocol.document()
    method_keys = {"name", "summary", "description", "paramStructure", "params", "result", "errors"}
    param_keys = {"name", "description", "summary", "required", "schema"}
    for kind in ("methods", "x-notifications"):
        names = [item["name"] for item in doc[kind]]
        assert len(names) == len(set(names)), kind
        for item in doc[kind]:
            assert {k for k in item if not k.startswith("x-")} <= method_keys, item["name"]
            assert item["paramStructure"] == "by-name"
            for param in item["params"]:
                assert {"name", "schema", "required"} <= set(param)
                assert {k for k in param if not k.startswith("x-")} <= param_keys
            if kind == "methods":
                assert set(item["result"]) <= {"name", "schema", "description"} and "schema" in item["result"]
                assert item["errors"] and all(set(e) == {"$ref"} for e in item["errors"])
            else:
                assert "result" not in item and "errors" not in item
                assert [p["name"] for p in item["params"][:2]] == ["seq", "at"]
    for error in doc["components"]["errors"].values():
        assert set(error) <= {"code", "message", "data"} and isinstance(error["code"], int)


def test_methods_and_notifications_are_the_designed_ones() -> None:
    assert protocol.method_names() == {
        "session.login", "session.resume", "session.logout", "session.ping", "agent.get", "agent.setState",
        "agent.reasonCodes", "agent.wrapUpReasons", "call.list", "call.make", "call.answer", "call.hold",
        "call.retrieve", "call.end", "call.consult", "call.transfer", "call.conference", "call.blindTransfer",
        "call.sendDigits", "call.updateVariables", "call.setWrapUp", "screenpop.blocked", "customer.lookup",
        "rpc.discover"}
    assert protocol.notification_names() == {
        "agent.stateChanged", "agent.error", "call.ringing", "call.dialing", "call.answered", "call.updated",
        "call.ended", "call.screenPop", "call.error", "connection.changed", "session.ended"}


def test_error_codes_equal_the_error_tree() -> None:
    assert protocol.error_codes() == {cls.code for cls in bridge.errors.ALL} | protocol.SPEC_CODES
    assert protocol.SPEC_CODES == {-32700, -32600, -32601, -32602, -32603}
    doc = protocol.document()
    codes = [e["code"] for e in doc["components"]["errors"].values()]
    assert len(codes) == len(set(codes))
    assert set(doc["components"]["schemas"]["ErrorCode"]["enum"]) == set(codes)


def test_registered_methods_equal_documented() -> None:
    import bridge.rpc  # the lead's module; this fails until it exists
    assert set(bridge.rpc.METHODS) == protocol.method_names()
    assert set(bridge.rpc.NOTIFICATIONS) == protocol.notification_names()


# -- params ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, params", [
    ("session.login", {"agentId": "1001", "password": "pw", "extension": "2001"}),
    ("session.login", {"loginName": "jdoe", "token": "eyJ...", "extension": "2001"}),
    ("session.resume", {"resumeToken": "t", "lastSeq": 0}),
    ("session.logout", None),
    ("session.logout", {"reasonCodeId": 7}),
    ("session.logout", {"reasonCodeId": "7"}),
    ("session.ping", {}),
    ("agent.setState", {"state": "NOT_READY", "reasonCodeId": "12"}),
    ("agent.reasonCodes", {"category": "LOGOUT"}),
    ("call.make", {"to": "5551234", "variables": {"callVariable10": "x" * 40, "user.a[1].b_c": "y" * 100}}),
    ("call.answer", {"callId": "16777217"}),
    ("call.consult", {"callId": "1", "to": "2002"}),
    ("call.sendDigits", {"callId": "1", "digits": "12#"}),
    ("call.sendDigits", {"callId": "1", "digits": "*0ABCD#"}),
    ("call.updateVariables", {"callId": "1", "variables": {}}),
    ("call.setWrapUp", {"callId": "1", "reason": "Sale"}),
])
def test_valid_params_pass(method: str, params: Any) -> None:
    protocol.validate_params(method, params)


@pytest.mark.parametrize("method, params, words", [
    ("call.sendDigits", {"callId": "1", "digits": "12x"}, "digits"),
    ("call.sendDigits", {"callId": "1", "digits": ""}, "digits"),
    ("call.sendDigits", {"callId": "1", "digits": "1" * 33}, "digits"),
    ("agent.setState", {"state": "TALKING"}, "TALKING"),
    ("agent.setState", {}, "state"),
    ("agent.setState", {"state": "READY", "extra": 1}, "extra"),
    ("agent.reasonCodes", {"category": "READY"}, "category"),
    ("session.login", {"agentId": "1001", "password": "pw"}, "extension"),
    ("session.login", {"agentId": "1001", "loginName": "jdoe", "password": "pw", "extension": "2001"}, "$"),
    ("session.login", {"agentId": "1001", "extension": "2001"}, "$"),
    ("session.login", {"agentId": "1001", "password": "pw", "token": "t", "extension": "2001"}, "$"),
    ("session.resume", {"resumeToken": "t", "lastSeq": -1}, "lastSeq"),
    ("session.resume", {"resumeToken": "t", "lastSeq": "3"}, "lastSeq"),
    ("session.logout", {"reasonCodeId": 1.5}, "reasonCodeId"),
    ("call.answer", {}, "callId"),
    ("call.answer", {"callId": ""}, "callId"),
    ("call.make", {"to": "1", "variables": {"callVariable11": "x"}}, "callVariable11"),
    ("call.make", {"to": "1", "variables": {"callVariable1": "x" * 41}}, "callVariable1"),
    ("call.make", {"to": "1", "variables": {"user.x": 5}}, "user.x"),
    ("call.setWrapUp", {"callId": "1", "reason": "x" * 41}, "reason"),
    ("call.updateVariables", {"callId": "1"}, "variables"),
    ("call.answer", ["16777217"], "by-name"),
    ("no.such", {}, "unknown method"),
])
def test_invalid_params_are_refused(method: str, params: Any, words: str) -> None:
    assert words in refused(protocol.validate_params, method, params)


def test_credentials_never_reach_the_message() -> None:
    message = refused(protocol.validate_params, "session.login",
                      {"agentId": "1", "loginName": "x", "password": "hunter2", "extension": "2001"})
    assert "hunter2" not in message and "***" in message
    message = refused(protocol.validate_params, "session.resume", {"resumeToken": "sekrit-token", "lastSeq": "x"})
    assert "sekrit-token" not in message
    with pytest.raises(jsonschema.ValidationError) as info:
        protocol.validate_params("session.login", {"agentId": 1, "password": "hunter2", "extension": "2001"})
    assert "hunter2" not in repr(info.value) and info.value.__cause__ is None


# -- our model against the schemas ----------------------------------------------------------------

def test_model_agent_and_call_validate() -> None:
    agent, call = agent_json(), call_json()
    assert agent["reasonCode"]["category"] == "NOT_READY" and call["from"] == "5551234"
    protocol.validate_schema("Agent", agent)
    protocol.validate_schema("Call", call)
    protocol.validate_schema("Agent", model.Agent(id="1001").to_json())
    protocol.validate_schema("Call", model.Call(id="1").to_json())
    protocol.validate_result("agent.get", agent)
    protocol.validate_result("call.list", [call])
    reason = model.ReasonCode(id="12", code="7", label="Lunch", category="NOT_READY")
    protocol.validate_result("agent.reasonCodes", [reason.to_json()])
    protocol.validate_result("session.login", {"sessionId": "s", "resumeToken": "r", "agent": agent,
                                               "calls": [call], "seq": 0})


@pytest.mark.parametrize("schema, change, words", [
    ("Agent", {"state": "BUSY"}, "BUSY"),
    ("Agent", {"stateSince": "yesterday"}, "stateSince"),
    ("Agent", {"reasonCode": {"id": "1", "code": "1", "label": "x"}}, "reasonCode"),
    ("Agent", {"extra": 1}, "extra"),
    ("Call", {"state": "ACTIVE"}, "state"),
    ("Call", {"actions": ["ANSWER"]}, "ANSWER"),
    ("Call", {"from_": "x"}, "from_"),
    ("Call", {"participants": [{"address": "1", "type": "agent", "state": "active", "actions": [],
                                "startedAt": "", "stateSince": "", "cause": ""}]}, "actions"),
    ("Call", {"direction": "in"}, "direction"),
    ("Call", {"variables": {"callVariable1": 5}}, "callVariable1"),
    ("Call", {"startedAt": "1714644672000"}, "startedAt"),
])
def test_model_mistakes_are_caught(schema: str, change: dict[str, Any], words: str) -> None:
    instance = {"Agent": agent_json, "Call": call_json}[schema]()
    instance.update(change)
    assert words in refused(protocol.validate_schema, schema, instance)


def test_missing_keys_are_caught() -> None:
    call = call_json()
    del call["secondaryId"]
    assert "secondaryId" in refused(protocol.validate_schema, "Call", call)


# -- results --------------------------------------------------------------------------------------

def test_results() -> None:
    protocol.validate_result("session.logout", {})
    protocol.validate_result("call.answer", {})
    assert "ok" in refused(protocol.validate_result, "call.answer", {"ok": True})
    protocol.validate_result("session.ping", {"at": AT})
    refused(protocol.validate_result, "session.ping", {"at": ""})
    protocol.validate_result("session.resume", {"resumeToken": "r", "replayed": 0})
    protocol.validate_result("session.resume", {"resumeToken": "r", "snapshot": {
        "agent": agent_json(), "calls": [], "seq": 9}})
    refused(protocol.validate_result, "session.resume", {"resumeToken": "r"})
    refused(protocol.validate_result, "session.resume", {"resumeToken": "r", "replayed": 1, "snapshot": {
        "agent": agent_json(), "calls": [], "seq": 9}})
    protocol.validate_result("agent.wrapUpReasons", [{"id": "1", "label": "Sale"}])
    protocol.validate_result("rpc.discover", protocol.document())


# -- notifications and whole messages -------------------------------------------------------------

@pytest.mark.parametrize("message", [
    note("agent.stateChanged", agent=agent_json()),
    note("agent.error", code=4090, message="Invalid State", data={"errorType": "Invalid State"}),
    note("call.ringing", call=call_json()),
    note("call.ended", call=call_json(), record=record_json()),
    note("call.screenPop", callId="1", url="https://crm.example/c?ani=1", method="GET", target="tab"),
    note("call.screenPop", callId="1", url="https://crm.example/c", method="POST", target="window:crm",
         form={"ani": "5551234"}),
    note("call.error", callId="1", code=4090, message="Invalid State"),
    note("connection.changed", state="failover", node="finesse-b.example"),
    note("session.ended", reason="logout"),
])
def test_valid_notifications_pass(message: dict[str, Any]) -> None:
    protocol.validate_notification(message)
    protocol.validate_message(message)


@pytest.mark.parametrize("message, words", [
    (note("agent.stateChanged"), "agent"),
    ({"jsonrpc": "2.0", "method": "session.ended", "params": {"reason": "logout", "at": AT}}, "seq"),
    (note("session.ended", reason="logout", seq=-1), "seq"),
    (note("session.ended", reason="logout", at=""), "at"),
    (note("session.ended", reason="logout", at="now"), "at"),
    (note("call.ended", call=call_json()), "record"),
    (note("call.ended", call=call_json(), record={**record_json(), "outcome": "dropped"}), "dropped"),
    (note("call.ended", call=call_json(), record={**record_json(), "talkSeconds": -1}), "talkSeconds"),
    (note("call.screenPop", callId="1", url="u", method="PUT", target="tab"), "PUT"),
    (note("call.screenPop", callId="1", url="u", method="GET", target="window:"), "target"),
    (note("call.screenPop", callId="1", url="u", method="GET", target="tab", form={"a": 1}), "form"),
    (note("connection.changed", state="up", node=""), "up"),
    (note("call.error", callId="1", code=1234, message="x"), "code"),
    (note("call.exploded"), "unknown notification"),
    ({"jsonrpc": "2.0", "method": "session.ended"}, "params"),
    ({"jsonrpc": "1.0", "method": "session.ended", "params": {"seq": 1, "at": AT, "reason": "x"}}, "jsonrpc"),
])
def test_invalid_notifications_are_refused(message: dict[str, Any], words: str) -> None:
    assert words in refused(protocol.validate_notification, message)
    refused(protocol.validate_message, message)


def test_responses() -> None:
    protocol.validate_message({"jsonrpc": "2.0", "id": 1, "result": {}})
    protocol.validate_message({"jsonrpc": "2.0", "id": "a", "result": {"anything": 1}})  # no method: not checked
    protocol.validate_message({"jsonrpc": "2.0", "id": 1, "result": {}}, "call.answer")
    assert "call.answer" in refused(protocol.validate_message, {"jsonrpc": "2.0", "id": 1, "result": []},
                                    "call.answer")
    protocol.validate_message({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    protocol.validate_message({"jsonrpc": "2.0", "id": 4, "error": {
        "code": 4090, "message": "Finesse refused", "data": {"errorType": "Invalid State", "message": "x"}}})
    protocol.validate_message([{"jsonrpc": "2.0", "id": 1, "result": {}},
                               {"jsonrpc": "2.0", "id": 2, "error": {"code": 4001, "message": "Not signed in"}}])
    for bad in [{"jsonrpc": "2.0", "id": 1, "error": {"code": 4000, "message": "x"}},
                {"jsonrpc": "2.0", "id": 1, "error": {"code": 4001}},
                {"jsonrpc": "2.0", "id": 1, "error": {"code": 4001, "message": "x", "extra": 1}},
                {"jsonrpc": "2.0", "id": 1},
                {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 4001, "message": "x"}},
                {"id": 1, "result": {}},
                {"jsonrpc": "2.0", "id": 1.5, "result": {}},
                {"jsonrpc": "2.0", "id": 1, "method": "session.ping"},
                [], "text"]:
        refused(protocol.validate_message, bad)


def _strings(schema: Any, doc: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema under ``schema`` (refs followed) that admits a string, with where it is."""
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        yield from _strings(target, doc, path)
        return
    types = schema.get("type")
    if types == "string" or (isinstance(types, list) and "string" in types):
        yield path, schema
    for key in ("properties", "patternProperties"):
        for name, sub in schema.get(key, {}).items():
            yield from _strings(sub, doc, f"{path}.{name}")
    if isinstance(schema.get("propertyNames"), dict):
        yield f"{path} (names)", {"type": "string", **schema["propertyNames"]}
    for key in ("items", "additionalProperties"):
        yield from _strings(schema.get(key), doc, f"{path}[]")


def test_every_string_param_has_a_maximum_length() -> None:
    """Nothing a client sends is unbounded (docs/security.md): every string param, however deep,
    has a maxLength (or is one of a few values); objects a client sends have a most-properties."""
    doc = protocol.document()
    unbounded = [f"{m['name']} {where}" for m in doc["methods"] for p in m["params"]
                 for where, schema in _strings(p["schema"], doc, p["name"])
                 if "maxLength" not in schema and "enum" not in schema]
    assert unbounded == []
    assert doc["components"]["schemas"]["Variables"]["maxProperties"] == 64


@pytest.mark.parametrize("method, name, length", [
    ("session.login", "agentId", 129), ("session.login", "loginName", 256), ("session.login", "password", 257),
    ("session.login", "token", 8193), ("session.resume", "resumeToken", 129), ("call.answer", "callId", 65),
])
def test_identifiers_past_their_maximum_are_refused(method: str, name: str, length: int) -> None:
    base = {"session.login": {"agentId": "1001", "password": "pw", "extension": "71001"},
            "session.resume": {"resumeToken": "t", "lastSeq": 0}, "call.answer": {"callId": "1"}}[method]
    params = {**base, name: "1" * length}
    if name == "token":
        params.pop("password")
    if name == "loginName":
        params.pop("agentId")
    with pytest.raises(jsonschema.ValidationError, match="too long"):
        protocol.validate_params(method, params)
    protocol.validate_params(method, {**params, name: "1" * (length - 1)})  # the maximum itself passes


@pytest.mark.parametrize("call_id", ["1\n2", "a b", "../x", "1;2", "<x>"])
def test_call_ids_are_letters_digits_and_a_few_marks(call_id: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        protocol.validate_params("call.answer", {"callId": call_id})


def test_every_methods_params_take_the_fast_path() -> None:
    """A keyword the fast path does not know sends every call of that method through jsonschema (about
    five times slower, docs/performance.md): the document uses none."""
    assert set(protocol._validators().fast_params) == protocol.method_names()


def test_at_most_64_variables() -> None:
    many = {f"user.v{n}": "x" for n in range(65)}
    with pytest.raises(jsonschema.ValidationError, match="too many properties"):
        protocol.validate_params("call.make", {"to": "1", "variables": many})
    many.pop("user.v0")
    protocol.validate_params("call.make", {"to": "1", "variables": many})


@pytest.mark.parametrize("settings, words", [
    ({"WRITABLE_VARIABLES": ["callVariable11"]}, "WRITABLE_VARIABLES: 'callVariable11' is not a call variable"),
    ({"WRITABLE_VARIABLES": "callVariable1"}, "WRITABLE_VARIABLES: expected a list"),
    ({"SIGNIN_MAX_FAILURES_PER_AGENT": 0}, "SIGNIN_MAX_FAILURES_PER_AGENT and SIGNIN_MAX_FAILURES_PER_ADDRESS"),
    ({"XMPP_MAX_ELEMENTS": 10}, "XMPP_MAX_ELEMENTS: at least 100"),
])
def test_the_new_limits_are_checked_at_start_naming_the_key(settings: dict[str, Any], words: str) -> None:
    from bridge.config import ConfigError, load
    with pytest.raises(ConfigError, match=f"^{words}"):
        load({"FINESSE_NODES": [{"url": "http://127.0.0.1:8082"}], **settings}, file="/dev/null", environ={})
    load({"FINESSE_NODES": [{"url": "http://127.0.0.1:8082"}], "WRITABLE_VARIABLES": ["user.crm.*", "callVariable*"]},
         file="/dev/null", environ={})
