"""The toolbar protocol as data: ``openrpc.json`` (design.md section 4, style.md item 11).

One document lists every method, notification (``x-notifications``), schema and error code. This
module loads it once and checks messages against it with jsonschema (Draft 2020-12); every
``$ref: "#/components/..."`` resolves inside the document through a ``referencing.Registry``.
The server checks params with :func:`validate_params`; tests check everything they receive with
:func:`validate_message`.
"""
from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["ProtocolError", "document", "method_names", "notification_names", "error_codes",
           "validate_params", "validate_result", "validate_notification", "validate_message",
           "validate_schema", "compile_all"]

DOCUMENT_URI = "urn:cti-bridge:openrpc"
"""The document's URI in the registry; schemas below point into it by JSON pointer."""

SPEC_CODES = frozenset({-32700, -32600, -32601, -32602, -32603})
"""JSON-RPC 2.0's own error codes."""


class ProtocolError(jsonschema.ValidationError):
    """A message, params or result that does not match ``openrpc.json``."""


@functools.cache
def _document() -> dict[str, Any]:
    text = resources.files(__name__).joinpath("openrpc.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def document() -> dict[str, Any]:
    """The OpenRPC document (a copy: callers may change it; the file is read once)."""
    return copy.deepcopy(_document())


def method_names() -> set[str]:
    """Every documented method."""
    return {m["name"] for m in _document()["methods"]}


def notification_names() -> set[str]:
    """Every documented notification (bridge to client)."""
    return {n["name"] for n in _document()["x-notifications"]}


def error_codes() -> set[int]:
    """Every error code in ``components.errors`` (the JSON-RPC codes and ours)."""
    return {e["code"] for e in _document()["components"]["errors"].values()}


# -- validators -----------------------------------------------------------------------------------

def _ref(pointer: str) -> dict[str, Any]:
    return {"$ref": f"{DOCUMENT_URI}#{pointer}"}


def _params_schema(kind: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
    """An object schema for a by-name params list; each property points into the document."""
    base = f"/{kind}/{index}"
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {p["name"]: _ref(f"{base}/params/{j}/schema") for j, p in enumerate(item["params"])},
        "required": [p["name"] for p in item["params"] if p.get("required")],
        "additionalProperties": False,
    }
    if "x-params-schema" in item:
        schema["allOf"] = [_ref(f"{base}/x-params-schema")]
    return schema


_ID = {"type": ["string", "integer", "null"]}


def _envelopes() -> dict[str, dict[str, Any]]:
    """JSON-RPC 2.0 response and notification shapes (codes must be ones the document lists)."""
    error = {"type": "object", "required": ["code", "message"], "additionalProperties": False,
             "properties": {"code": {"type": "integer", "enum": sorted(error_codes())},
                            "message": {"type": "string"}, "data": {}}}
    return {
        "result": {"type": "object", "required": ["jsonrpc", "id", "result"], "additionalProperties": False,
                   "properties": {"jsonrpc": {"const": "2.0"}, "id": _ID, "result": {}}},
        "error": {"type": "object", "required": ["jsonrpc", "id", "error"], "additionalProperties": False,
                  "properties": {"jsonrpc": {"const": "2.0"}, "id": _ID, "error": error}},
        "notification": {"type": "object", "required": ["jsonrpc", "method", "params"],
                         "additionalProperties": False,
                         "properties": {"jsonrpc": {"const": "2.0"}, "method": {"type": "string"},
                                        "params": {"type": "object"}}},
    }


class _Validators:
    """Every validator compiled once: params and result per method, params per notification."""

    def __init__(self, doc: dict[str, Any]) -> None:
        resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.params: dict[str, Draft202012Validator] = {}
        self.results: dict[str, Draft202012Validator] = {}
        self.notifications: dict[str, Draft202012Validator] = {}
        for i, method in enumerate(doc["methods"]):
            self.params[method["name"]] = self.compile(_params_schema("methods", i, method))
            self.results[method["name"]] = self.compile(_ref(f"/methods/{i}/result/schema"))
        for i, note in enumerate(doc["x-notifications"]):
            self.notifications[note["name"]] = self.compile(_params_schema("x-notifications", i, note))
        self.envelopes = {name: self.compile(schema) for name, schema in _envelopes().items()}
        self.schemas = {name: self.compile(_ref(f"/components/schemas/{name}"))
                        for name in doc["components"]["schemas"]}

    def compile(self, schema: dict[str, Any]) -> Draft202012Validator:
        Draft202012Validator.check_schema(schema)
        return Draft202012Validator(schema, registry=self.registry)


@functools.cache
def _validators() -> _Validators:
    return _Validators(_document())


@functools.cache
def _sensitive_names() -> frozenset[str]:
    """Params marked ``x-sensitive`` (password, token, resumeToken): their values never reach a message."""
    doc = _document()
    return frozenset(p["name"] for item in doc["methods"] + doc["x-notifications"] for p in item["params"]
                     if p.get("x-sensitive"))


def _secrets(instance: Any, names: frozenset[str]) -> list[str]:
    """The reprs of every value under a sensitive key, anywhere in ``instance``."""
    found: list[str] = []
    if isinstance(instance, dict):
        for key, value in instance.items():
            if key in names and isinstance(value, (str, int, float)) and str(value):
                found.append(repr(value))
            else:
                found.extend(_secrets(value, names))
    elif isinstance(instance, list):
        for value in instance:
            found.extend(_secrets(value, names))
    return found


def _check(validator: Draft202012Validator, instance: Any, what: str) -> None:
    """Raise the most relevant error, with credentials blanked out.

    Only the message, path and schema path are kept (no instance, no ``__cause__``): jsonschema's
    own error prints the whole instance, and a login's params hold a password.
    """
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return
    message = error.message
    for secret in sorted(_secrets(instance, _sensitive_names()), key=len, reverse=True):
        message = message.replace(secret, "'***'")
    raise ProtocolError(f"{what}: {message} (at {error.json_path})", path=error.path,
                        schema_path=error.schema_path) from None


def compile_all() -> None:
    """Load the document and compile every validator now (import is lazy; a server calls this at start)."""
    _validators()


def validate_schema(name: str, instance: Any) -> None:
    """Check ``instance`` against ``components.schemas[name]`` (Agent, Call, Record...)."""
    validators = _validators()
    if name not in validators.schemas:
        raise KeyError(f"no schema {name!r} in openrpc.json")
    _check(validators.schemas[name], instance, name)


def validate_params(method: str, params: Any) -> None:
    """Check a request's params (``None`` means none given) against ``method``'s params."""
    validators = _validators()
    if method not in validators.params:
        raise ProtocolError(f"unknown method {method!r}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{method} params: must be an object (by-name), not {type(params).__name__}")
    _check(validators.params[method], params, f"{method} params")


def validate_result(method: str, result: Any) -> None:
    """Check a successful response's result against ``method``'s result schema."""
    validators = _validators()
    if method not in validators.results:
        raise ProtocolError(f"unknown method {method!r}")
    _check(validators.results[method], result, f"{method} result")


def validate_notification(message: Any) -> None:
    """Check a whole notification ``{"jsonrpc": "2.0", "method": ..., "params": {...}}``."""
    validators = _validators()
    _check(validators.envelopes["notification"], message, "notification")
    method = message["method"]
    if method not in validators.notifications:
        raise ProtocolError(f"unknown notification {method!r}")
    _check(validators.notifications[method], message["params"], f"{method} params")


def validate_message(message: Any, method: str | None = None) -> None:
    """Check anything a client receives: a notification, a response, or a batch (a list) of them.

    A result is checked against ``method``'s result schema only when ``method`` is given (a response
    does not say which request it answers); an error must have a code the document lists.
    """
    if isinstance(message, list):
        if not message:
            raise ProtocolError("batch response: must not be empty")
        for item in message:
            validate_message(item)
        return
    if not isinstance(message, dict):
        raise ProtocolError(f"message: must be an object or an array, not {type(message).__name__}")
    validators = _validators()
    if "method" in message:
        if "id" in message:
            raise ProtocolError("message: the bridge sends no requests (a method with an id)")
        validate_notification(message)
    elif "error" in message:
        _check(validators.envelopes["error"], message, "error response")
    else:
        _check(validators.envelopes["result"], message, "response")
        if method is not None:
            validate_result(method, message["result"])
