"""Hostile JSON-RPC messages for the bridge, generated from its own protocol document.

    .venv/bin/python bench/rpcfuzz.py [--seed 0] [--count 40] [--summary]

``messages(seed, count)`` yields ``(kind, payload)``, the same sequence for the same seed. Every
method of ``bridge/protocol/openrpc.json`` (docs/client.md describes them) and each of its params
get valid values and subtly invalid ones; around them, the framing cases of a WebSocket message.
``payload`` is a ``str`` for a text frame, ``bytes`` for a binary frame, except for kinds starting
with ``raw-text:``: bytes meant for a *text* frame as they are (not UTF-8). The bridge reads a
binary frame's bytes as UTF-8 with replacement characters and answers it as text.

Kinds (``group:case[:method.param]``):

``valid:<method>``                    params as the schema wants them (no reply owed when no id)
``param:<mutation>:<method>.<param>`` one param made wrong: ``wrong-type``, ``float-for-int`` (5.0),
                                      ``fraction``, ``huge-int``, ``negative``, ``empty``,
                                      ``huge-string`` (60 KB), ``lone-surrogate`` (\\ud800),
                                      ``control-chars`` (NUL, ESC, newlines), ``null``, ``deep``
                                      (nested objects/arrays), ``non-finite`` (NaN, Infinity,
                                      -Infinity, 1e999 literals), ``missing``
``params:<case>:<method>``            the params member itself: ``extra`` (unknown name),
                                      ``array`` (positional), ``scalar``, ``null``, ``deep``
``batch:<case>``                      empty, 1..25 elements mixed valid and invalid, only
                                      notifications, nested arrays, 20 ``rpc.discover``,
                                      sign-in guesses
``framing:<case>``                    invalid JSON, non-finite literals, duplicate keys, wrong
                                      ``jsonrpc``, ids of every type, long method names, BOM,
                                      top-level scalars
``binary:<case>`` / ``raw-text:<case>`` binary frames; bytes that are not UTF-8

Identifiers: sign-in messages use ``agents`` (default the simulator's seeded 1001..1010, so that
wrong guesses reach a real account, docs/simulator.md) and ``password`` is never the right one.
``exclude`` drops methods (a signed-in socket that must keep its session leaves out
``session.login``, ``session.resume`` and ``session.logout``). No third-party dependency.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import string
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENT = os.path.join(ROOT, "bridge", "protocol", "openrpc.json")
HUGE = 60 * 1024  # a 60 KB string: a message still under MAX_MESSAGE_BYTES (64 KiB, docs/operations.md)
AGENTS = tuple(str(1001 + k) for k in range(10))
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")
_LITERAL = "\x00literal:"  # a string json.dumps keeps as is; replaced by the bare literal after it

Payload = str | bytes
Message = tuple[str, Payload]


@dataclass
class Param:
    name: str
    required: bool
    schema: dict[str, Any]


@dataclass
class Method:
    name: str
    params: list[Param]


def load(path: str = DOCUMENT) -> tuple[dict[str, Any], list[Method]]:
    """The OpenRPC document and its methods, each param's schema with its ``$ref`` resolved."""
    with open(path, encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = document
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema
    methods = [Method(m["name"], [Param(p["name"], bool(p.get("required")), resolve(p["schema"]))
                                  for p in m["params"]]) for m in document["methods"]]
    return document, methods


def error_codes(document: dict[str, Any]) -> set[int]:
    """Every error code the document lists (components.errors), the specification's included."""
    return {int(e["code"]) for e in document["components"]["errors"].values()}


# -- values --------------------------------------------------------------------------------------

def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", "string")
    return list(kind) if isinstance(kind, list) else [kind]


def valid_value(param: Param, rng: random.Random, agents: Sequence[str]) -> Any:
    """A value the param's schema accepts (and a plausible one: ids of seeded agents, dialable numbers)."""
    schema, name = param.schema, param.name
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = rng.choice(_types(schema))
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 1000)
        return rng.randint(low, min(high, low + 1000))
    if kind == "object":  # Variables (components.schemas)
        return {f"callVariable{rng.randint(1, 10)}": rng.choice(["", "x", "bench", "é" * 10]),
                "user.account": str(rng.randint(0, 10**6))}
    if name in ("agentId", "loginName"):
        agent = rng.choice(agents)
        return agent if name == "agentId" else f"agent{agent}"
    if name == "extension":
        return "7" + rng.choice(agents)
    if name == "digits":
        return "".join(rng.choice("0123456789*#ABCD") for _ in range(rng.randint(1, 32)))
    if name in ("to", "number"):
        return "555" + "".join(rng.choice(string.digits) for _ in range(7))
    if name == "url":
        return f"https://crm.example.com/contact?n={rng.randint(0, 10**6)}"
    low = max(1, schema.get("minLength", 0))
    high = min(schema.get("maxLength", 24), 24)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(low, max(low, high))))


def _deep(depth: int, rng: random.Random) -> Any:
    value: Any = rng.choice([0, "x", None, True])
    for _ in range(depth):
        value = {"a": value} if rng.random() < 0.5 else [value]
    return value


MUTATIONS: dict[str, Callable[[Param, random.Random], list[Any]]] = {
    "wrong-type": lambda p, r: [7, True, {}, [], "7"] if "integer" in _types(p.schema) or "object" in _types(p.schema)
    else [7, -1, True, False, {}, ["x"], 0.5],
    "float-for-int": lambda p, r: [5.0, float(p.schema.get("minimum", 1)), 50.0, 1e300] if "integer" in _types(p.schema) else [],
    "fraction": lambda p, r: [1.5, -0.5, 1e-300] if "integer" in _types(p.schema) else [],
    "huge-int": lambda p, r: [10**30, 2**63, -(2**63) - 1, 10**400],
    "negative": lambda p, r: [-1, -(10**9), -0.0],
    "empty": lambda p, r: ["", " ", {}, []],
    "huge-string": lambda p, r: ["x" * HUGE, "1" * HUGE, "é" * (HUGE // 2)],
    "lone-surrogate": lambda p, r: ["\ud800", "71\udfff01", "a\ud83d", "\udc00\ud800"],
    "control-chars": lambda p, r: ["10\n01", "1001\n", "\x00", "1001\x00", "\x1b[31m1001", "10\r\n01", "\u2028",
                                   "\t", "1\x7f"],
    "null": lambda p, r: [None],
    "deep": lambda p, r: [_deep(r.choice([30, 200, 500]), r)],
    "non-finite": lambda p, r: [_LITERAL + r.choice(NON_FINITE)],
}


def _dumps(message: Any) -> str:
    """JSON text; a ``_LITERAL`` string becomes its bare literal (NaN, 1e999: what json.dumps never writes)."""
    text = json.dumps(message)
    escaped = json.dumps(_LITERAL)[1:-1]
    if escaped not in text:
        return text
    for literal in NON_FINITE:
        text = text.replace(f'"{escaped}{literal}"', literal)
    return text


# -- the generator -------------------------------------------------------------------------------

class Fuzz:
    """Makers of one message each; ``messages`` cycles through them so every case comes early."""

    def __init__(self, methods: list[Method], agents: Sequence[str], exclude: Iterable[str] = ()) -> None:
        skip = set(exclude)
        self.methods = [m for m in methods if m.name not in skip]
        self.by_name = {m.name: m for m in self.methods}
        self.agents = agents
        self.makers: list[tuple[str, Callable[[random.Random], Payload]]] = []
        for method in self.methods:
            self.makers.append((f"valid:{method.name}", functools.partial(self._text, self.request, method)))
            for param in method.params:
                for mutation, values in MUTATIONS.items():
                    if values(param, random.Random(0)):
                        self.makers.append((f"param:{mutation}:{method.name}.{param.name}",
                                            functools.partial(self._text, self.mutated, method, param, values)))
                if param.required:
                    self.makers.append((f"param:missing:{method.name}.{param.name}",
                                        functools.partial(self._text, self.missing, method, param)))
            for case in ("extra", "array", "scalar", "null", "deep"):
                self.makers.append((f"params:{case}:{method.name}",
                                    functools.partial(self._text, self.params_case, method, case)))
        self.makers += [(f"batch:{case}", getattr(self, "batch_" + case.replace("-", "_"))) for case in BATCHES
                        if case != "discover" or "rpc.discover" in self.by_name]
        self.makers += [(f"framing:{case}", fn) for case, fn in FRAMING.items()]
        self.makers += [(f"binary:{case}", fn) for case, fn in BINARY.items()]
        self.makers += [(f"raw-text:{case}", fn) for case, fn in RAW_TEXT.items()]

    @staticmethod
    def _text(build: Callable[..., Any], *args: Any) -> Payload:
        """A maker's message: ``partial(_text, build, *bound)(rng)`` is ``build(rng, *bound)`` as JSON text."""
        *bound, rng = args
        return _dumps(build(rng, *bound))

    # -- requests --------------------------------------------------------------------------------

    def _id(self, rng: random.Random) -> Any:
        return rng.choice([rng.randint(1, 10**6), f"r{rng.randint(1, 10**6)}", rng.randint(1, 99), None, "x"])

    def request(self, rng: random.Random, method: Method, notify: bool = False) -> dict[str, Any]:
        params = {p.name: valid_value(p, rng, self.agents) for p in method.params if p.required or rng.random() < 0.5}
        if method.name == "session.login":  # exactly one login name and one secret (the schema's oneOf)
            for name in ("agentId", "loginName", "password", "token"):
                params.pop(name, None)
            name = "agentId" if rng.random() < 0.7 else "loginName"
            params[name] = valid_value(Param(name, True, {}), rng, self.agents)
            params["password" if rng.random() < 0.85 else "token"] = "wrong-" + str(rng.randint(0, 10**6))
            params["extension"] = "7" + rng.choice(self.agents)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method.name}
        if params or rng.random() < 0.3:
            message["params"] = params
        if not notify and rng.random() < 0.95:
            message["id"] = self._id(rng)
        return message

    def mutated(self, rng: random.Random, method: Method, param: Param,
                values: Callable[[Param, random.Random], list[Any]]) -> dict[str, Any]:
        message = self.request(rng, method)
        message.setdefault("id", self._id(rng))
        message["params"] = {**message.get("params", {}), param.name: rng.choice(values(param, rng))}
        return message

    def missing(self, rng: random.Random, method: Method, param: Param) -> dict[str, Any]:
        message = self.request(rng, method)
        message.setdefault("params", {}).pop(param.name, None)
        return message

    def params_case(self, rng: random.Random, method: Method, case: str) -> dict[str, Any]:
        message = self.request(rng, method)
        params = message.get("params", {})
        message["params"] = {
            "extra": lambda: {**params, rng.choice(["zzz", "agent", "__proto__", "constructor", "id", "x" * 300]): 1},
            "array": lambda: list(params.values()) or [rng.choice([1, "x", None])],
            "scalar": lambda: rng.choice(["x", 1, True, 1.5]),
            "null": lambda: None,
            "deep": lambda: {**params, "nested": _deep(rng.choice([50, 400]), rng)},
        }[case]()
        return message

    def any_request(self, rng: random.Random) -> dict[str, Any] | Any:
        """A request object for a batch: valid, a mutated one, or not a request at all."""
        method = rng.choice(self.methods)
        roll = rng.random()
        if roll < 0.4:
            return self.request(rng, method, notify=rng.random() < 0.2)
        if roll < 0.75 and method.params:
            param = rng.choice(method.params)
            mutation = rng.choice([v for v in MUTATIONS.values() if v(param, rng)])
            return self.mutated(rng, method, param, mutation)
        return rng.choice([1, "x", None, True, {}, {"jsonrpc": "2.0"}, {"jsonrpc": "1.0", "method": method.name, "id": 1},
                           {"jsonrpc": "2.0", "method": method.name, "id": True}, {"method": method.name, "id": 2}])

    # -- batches ---------------------------------------------------------------------------------

    def batch_empty(self, rng: random.Random) -> Payload:
        return rng.choice(["[]", "[ ]", "[\n]"])

    def batch_mixed(self, rng: random.Random) -> Payload:
        return _dumps([self.any_request(rng) for _ in range(rng.randint(1, 25))])

    def batch_valid(self, rng: random.Random) -> Payload:
        return _dumps([self.request(rng, rng.choice(self.methods)) for _ in range(rng.randint(1, 25))])

    def batch_notifications(self, rng: random.Random) -> Payload:
        return _dumps([self.request(rng, rng.choice(self.methods), notify=True) for _ in range(rng.randint(1, 20))])

    def batch_nested(self, rng: random.Random) -> Payload:
        inner = [self.request(rng, rng.choice(self.methods)) for _ in range(rng.randint(1, 5))]
        return _dumps(rng.choice([[inner], [inner, inner[0]], [[[inner]]], [[]], [[], []]]))

    def batch_discover(self, rng: random.Random) -> Payload:
        return _dumps([{"jsonrpc": "2.0", "method": "rpc.discover", "id": k} for k in range(rng.choice([2, 20, 25]))])

    def batch_sign_in(self, rng: random.Random) -> Payload:
        methods = [self.by_name[n] for n in ("session.login", "session.resume") if n in self.by_name] or self.methods
        return _dumps([self.request(rng, rng.choice(methods)) for _ in range(rng.randint(2, 20))])

    def batch_non_finite(self, rng: random.Random) -> Payload:
        batch = [self.request(rng, rng.choice(self.methods)) for _ in range(rng.randint(1, 5))]
        batch.append({"jsonrpc": "2.0", "method": "session.ping", "id": _LITERAL + rng.choice(NON_FINITE)})
        rng.shuffle(batch)
        return _dumps(batch)


def _ping(id_: str) -> str:
    return '{"jsonrpc": "2.0", "method": "session.ping", "id": ' + id_ + "}"


BATCHES = ("empty", "mixed", "valid", "notifications", "nested", "discover", "sign-in", "non-finite")

FRAMING: dict[str, Callable[[random.Random], Payload]] = {
    "invalid-json": lambda r: r.choice([
        "", " ", "{", "}", "[", "nul", "tru", '{"jsonrpc": "2.0", "method": "agent.get", "id": 1',
        '{"jsonrpc": "2.0", "method": "agent.get", "id": 1}x', "{'jsonrpc': '2.0'}", '{"a" 1}', "[1,]", '{"a":1,}',
        '{"jsonrpc": "2.0", /* c */ "method": "agent.get"}', '"unterminated', '{"method": "\\x41"}', "\x00",
        '[{"jsonrpc": "2.0", "method": "agent.get", "id": 1}, {"jsonrpc": "2.0", "method"]', "0x10", "01", "+1",
        '{"id": 1e}', '"\\ud800"x']),
    "non-finite-id": lambda r: _ping(r.choice(NON_FINITE)),
    "non-finite-param": lambda r: ('{"jsonrpc": "2.0", "method": "customer.lookup", "params": {"number": "1", "limit": '
                                   + r.choice(NON_FINITE) + '}, "id": 1}'),
    "non-finite-top": lambda r: r.choice(NON_FINITE + ("[NaN]", "[Infinity, 1]", '{"a": NaN}')),
    "duplicate-keys": lambda r: r.choice([
        '{"jsonrpc": "2.0", "method": "agent.get", "method": "rpc.discover", "id": 1}',
        '{"jsonrpc": "2.0", "method": "session.ping", "id": 1, "id": 2}',
        '{"jsonrpc": "2.0", "jsonrpc": "1.0", "method": "session.ping", "id": 1}',
        '{"jsonrpc": "2.0", "method": "call.answer", "params": {"callId": "1", "callId": 2}, "id": 1}',
        '{"jsonrpc": "2.0", "method": "session.ping", "params": {}, "params": [], "id": 1}']),
    "wrong-version": lambda r: json.dumps({"jsonrpc": r.choice(["1.0", 2.0, 2, "2", "2.0 ", "", None, "2.00"]),
                                           "method": "session.ping", "id": 1}),
    "no-version": lambda r: json.dumps({"method": "session.ping", "id": 1}),
    "id-type": lambda r: json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": r.choice([
        True, False, {}, {"a": 1}, [], [1], 1.5, -0.0, 1e300, -1e-300, 10**30, 10**400, 2**63, -(2**63), 0, "",
        "x" * HUGE, "\u0000\n", "\ud800", None])}),
    "method-name": lambda r: json.dumps({"jsonrpc": "2.0", "method": r.choice([
        "a" * HUGE, "rpc." + "x" * 1000, "agent.get\n", "agent.get\x00", "AGENT.GET", " agent.get", "rpc.", "",
        "__init__", "__class__", "constructor", "toString", "session.login.", "\ud800", "agent.get\u2028",
        "call.answer/../rpc.discover"]), "id": 1}),
    "method-type": lambda r: json.dumps({"jsonrpc": "2.0", "method": r.choice([1, None, True, [], {}, ["agent.get"]]),
                                         "id": 1}),
    "extra-member": lambda r: json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": 1,
                                          r.choice(["result", "error", "ID", "Method", "x"]): 1}),
    "top-scalar": lambda r: r.choice(["1", '"x"', "null", "true", "false", "-0", "1e5", '"' + "x" * 1000 + '"']),
    "bom": lambda r: "\ufeff" + _ping("1"),
    "whitespace": lambda r: " \n\t\r" * r.randint(1, 2000) + _ping("2") + " " * r.randint(0, 100),
    "deep-parse": lambda r: "[" * r.choice([1000, 10_000, 60_000]) + "]" * r.choice([0, 10, 1000]),
    "deep-object": lambda r: '{"jsonrpc": "2.0", "method": "session.ping", "id": 1, "params": ' + '{"a":' * 20_000
    + "1" + "}" * 20_000 + "}",
    "huge-number": lambda r: _ping(r.choice(["1" * 5000, "1e308", "-1e308", "1." + "0" * 5000 + "1", "1e-400"])),
    "escaped-surrogate-method": lambda r: '{"jsonrpc": "2.0", "method": "\\ud800", "id": 1}',
}

BINARY: dict[str, Callable[[random.Random], Payload]] = {
    "json": lambda r: _ping(str(r.randint(1, 100))).encode(),
    "random": lambda r: bytes(r.getrandbits(8) for _ in range(r.randint(0, 512))),
    "utf16": lambda r: _ping("3").encode("utf-16"),
    "not-utf8-json": lambda r: b'{"jsonrpc": "2.0", "method": "call.make", "params": {"to": "\xff\xfe"}, "id": 4}',
}

RAW_TEXT: dict[str, Callable[[random.Random], Payload]] = {
    "invalid-utf8": lambda r: r.choice([b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"]),
    "invalid-utf8-in-json": lambda r: b'{"jsonrpc": "2.0", "method": "call.make", "params": {"to": "'
    + r.choice([b"\xff", b"\xed\xa0\x80", b"\xc3"]) + b'"}, "id": 5}',
}


GROUPS = {"valid": 15, "param": 35, "params": 10, "batch": 15, "framing": 17, "binary": 4, "raw-text": 4}
"""How often each group comes, in percent (each group's cases in a shuffled cycle of their own)."""


def messages(seed: int = 0, count: int | None = None, *, agents: Sequence[str] = AGENTS,
             exclude: Iterable[str] = (), path: str = DOCUMENT) -> Iterator[Message]:
    """``count`` messages (endless when None), the same ones for the same arguments.

    A group is drawn by its weight (``GROUPS``), then the group's next case: each group goes
    through its cases in a shuffled order, reshuffled each round, so any 2,000 consecutive
    messages hold every framing and batch case and most param cases.
    """
    _, methods = load(path)
    fuzz = Fuzz(methods, agents, exclude)
    rng = random.Random(seed)
    by_group: dict[str, list[tuple[str, Callable[[random.Random], Payload]]]] = collections.defaultdict(list)
    for kind, maker in fuzz.makers:
        by_group[kind.split(":")[0]].append((kind, maker))
    names = [g for g in GROUPS if by_group[g]]
    weights = [GROUPS[g] for g in names]
    queues: dict[str, list[tuple[str, Callable[[random.Random], Payload]]]] = {g: [] for g in names}
    produced = 0
    while count is None or produced < count:
        group = rng.choices(names, weights)[0]
        if not queues[group]:
            queues[group] = list(by_group[group])
            rng.shuffle(queues[group])
        kind, maker = queues[group].pop()
        yield kind, maker(rng)
        produced += 1


def kinds(exclude: Iterable[str] = (), path: str = DOCUMENT) -> list[str]:
    """Every kind ``messages`` yields (one maker each)."""
    _, methods = load(path)
    return [kind for kind, _ in Fuzz(methods, AGENTS, exclude).makers]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--summary", action="store_true", help="count messages by group and size instead")
    args = parser.parse_args()
    if args.summary:
        groups: collections.Counter[str] = collections.Counter()
        size = 0
        for kind, payload in messages(args.seed, args.count):
            groups[kind.split(":")[0]] += 1
            size += len(payload)
        print(f"{args.count} messages, {size / 1e6:.1f} MB, {len(kinds())} kinds: "
              + ", ".join(f"{g} {n}" for g, n in groups.most_common()))
        return 0
    for kind, payload in messages(args.seed, args.count):
        shown = repr(payload)
        print(f"{kind:<48} {shown[:110]}{'...' if len(shown) > 110 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
