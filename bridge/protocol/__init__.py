"""The toolbar protocol as data: ``openrpc.json`` (docs/client.md).

One document lists every method, notification (``x-notifications``), schema and error code. This
module loads it once and checks messages against it with jsonschema (Draft 2020-12); every
``$ref: "#/components/..."`` resolves inside the document through a ``referencing.Registry``.
The server checks params with :func:`validate_params`; tests check everything they receive with
:func:`validate_message`. Params that pass take a fast path compiled from the same schemas
(:func:`_fast`, exact for the keywords it knows); only params that fail, or a schema using a keyword
it does not know, go through jsonschema, which then words the error as before.
"""
from __future__ import annotations

import copy
import functools
import json
import numbers
import re
from importlib import resources
from typing import Any, Callable

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .. import redact

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


# -- the fast path for valid params ----------------------------------------------------------------
# jsonschema spends 20-40 us on one call.answer's params (each $ref goes through the registry); these
# predicates take about 1 us. Each is exact for the keywords below, with jsonschema 4's semantics
# (Draft 2020-12: an integer may be 3.0; bool is neither integer nor number; format is not asserted);
# anything else makes the schema "unknown" (None) and jsonschema alone checks it.

Check = Callable[[Any], bool]


class _Unsure(Exception):
    """Raised by a predicate for an instance it cannot judge exactly (not from JSON): ask jsonschema."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$comment", "deprecated", "readOnly",
                          "writeOnly"})
_OBJECT = ("properties", "patternProperties", "additionalProperties")


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(value: Any) -> bool:
        for one in checks:
            if not one(value):
                return False
        return True
    return check


def _object(props: dict[str, Check], patterns: list[tuple[re.Pattern[str], Check]], extra: Check | None) -> Check:
    # jsonschema finds "additional" keys with the patterns joined by "|": so does this.
    joined = re.compile("|".join(p.pattern for p, _ in patterns)) if patterns else None

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unsure()
            sub = props.get(key)
            if sub is not None and not sub(item):
                return False
            for pattern, psub in patterns:
                if pattern.search(key) and not psub(item):
                    return False
            if extra is not None and sub is None and (joined is None or not joined.search(key)) \
                    and not extra(item):
                return False
        return True
    return check


def _keyword(key: str, value: Any, doc: dict[str, Any], depth: int) -> Check | None:
    """One keyword's predicate (None: not a keyword the fast path knows)."""
    if key == "type":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(name in _TYPES for name in names):
            return None
        tests = [_TYPES[name] for name in names]
        return tests[0] if len(tests) == 1 else (lambda v: any(test(v) for test in tests))
    if key == "enum" and isinstance(value, list) and value and all(isinstance(e, str) for e in value):
        members = frozenset(value)  # strings compare as strings only (jsonschema's equal)
        return lambda v: isinstance(v, str) and v in members
    if key in ("minLength", "maxLength") and isinstance(value, int) and not isinstance(value, bool):
        n = value
        return (lambda v: not isinstance(v, str) or len(v) >= n) if key == "minLength" else \
            (lambda v: not isinstance(v, str) or len(v) <= n)
    if key == "pattern" and isinstance(value, str):
        compiled = re.compile(value)  # jsonschema: re.search(pattern, instance)
        return lambda v: not isinstance(v, str) or compiled.search(v) is not None
    if key in ("minimum", "maximum") and _is_number(value):
        bound = value
        return (lambda v: not _is_number(v) or not v < bound) if key == "minimum" else \
            (lambda v: not _is_number(v) or not v > bound)
    if key in ("minProperties", "maxProperties") and isinstance(value, int) and not isinstance(value, bool):
        count = value
        return (lambda v: not isinstance(v, dict) or len(v) >= count) if key == "minProperties" else \
            (lambda v: not isinstance(v, dict) or len(v) <= count)
    if key == "required" and isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = list(value)
        return lambda v: not isinstance(v, dict) or all(name in v for name in names)
    if key == "propertyNames":
        sub = _fast(value, doc, depth + 1)
        return None if sub is None else (lambda v: not isinstance(v, dict) or all(sub(k) for k in v))
    if key in ("allOf", "oneOf") and isinstance(value, list) and value:
        subs = [_fast(item, doc, depth + 1) for item in value]
        if any(sub is None for sub in subs):
            return None
        known = [sub for sub in subs if sub is not None]
        if key == "allOf":
            return _all(known)
        return lambda v: sum(1 for sub in known if sub(v)) == 1  # each predicate is exact, so this is too
    if key == "$ref" and isinstance(value, str):
        target = _resolve(value, doc)
        return None if target is None else _fast(target, doc, depth + 1)
    return None


def _resolve(ref: str, doc: dict[str, Any]) -> Any:
    """A ``$ref`` into this document (``urn:...#/a/b`` or ``#/a/b``), or None for anything else."""
    base, _, pointer = ref.partition("#")
    if base not in ("", DOCUMENT_URI) or not pointer.startswith("/"):
        return None
    node: Any = doc
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _fast(schema: Any, doc: dict[str, Any], depth: int = 0) -> Check | None:
    """An exact predicate for ``schema``, or None when it uses a keyword this does not know."""
    if schema is True or schema == {}:
        return lambda v: True
    if schema is False:
        return lambda v: False
    if not isinstance(schema, dict) or depth > 32:
        return None
    checks: list[Check] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS or key in _OBJECT:
            continue
        check = _keyword(key, value, doc, depth)
        if check is None:
            return None
        checks.append(check)
    if any(key in schema for key in _OBJECT):
        props = {name: _fast(sub, doc, depth + 1) for name, sub in schema.get("properties", {}).items()}
        patterns = [(re.compile(p), _fast(sub, doc, depth + 1)) for p, sub in schema.get("patternProperties", {}).items()]
        extra = _fast(schema["additionalProperties"], doc, depth + 1) if "additionalProperties" in schema else None
        if any(sub is None for sub in props.values()) or any(sub is None for _, sub in patterns) \
                or ("additionalProperties" in schema and extra is None):
            return None
        checks.append(_object({k: v for k, v in props.items() if v is not None},
                              [(p, sub) for p, sub in patterns if sub is not None], extra))
    return _all(checks) if checks else (lambda v: True)


class _Validators:
    """Every validator compiled once: params and result per method, params per notification."""

    def __init__(self, doc: dict[str, Any]) -> None:
        resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.params: dict[str, Draft202012Validator] = {}
        self.fast_params: dict[str, Check] = {}  # only methods whose params schema _fast knows
        self.results: dict[str, Draft202012Validator] = {}
        self.notifications: dict[str, Draft202012Validator] = {}
        for i, method in enumerate(doc["methods"]):
            schema = _params_schema("methods", i, method)
            self.params[method["name"]] = self.compile(schema)
            fast = _fast(schema, doc)
            if fast is not None:
                self.fast_params[method["name"]] = fast
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
    message = redact.secrets(error.message, _secrets(instance, _sensitive_names()), f"'{redact.MASK}'")
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
    fast = validators.fast_params.get(method)
    if fast is not None:
        try:
            if fast(params):
                return
        except _Unsure:
            pass
    _check(validators.params[method], params, f"{method} params")  # finds the error and words it


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
