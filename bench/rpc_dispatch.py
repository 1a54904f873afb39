"""Microseconds per ``bridge.rpc.handle`` call, in process: the stock jsonrpcserver path against ours.

    .venv/bin/python bench/rpc_dispatch.py [--number 2000] [--repeat 7]

No network, no Finesse: a fake signed-in session whose REST backend does nothing, so what is timed
is the bridge's own per-message cost (parse, request check, params check, dispatch, metrics, reply).
Each message is timed in two modes, alternating, in the same process:

``stock``  what ``handle`` did before it was tuned, put back by monkeypatching: jsonrpcserver's own
           request validator (jsonschema against its request-schema.json), params checked by
           jsonschema alone (no fast path), ``inspect.signature`` recomputed per call,
           ``rpc_latency.labels(name)`` looked up per call.
``tuned``  the module as it is.

Prints, per message, the median over ``--repeat`` rounds of ``--number`` calls (µs per call) for each
mode and stock/tuned, after checking that both modes give the same reply text. Exit status 1 if
they do not.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import statistics
import sys
import threading
import time
from typing import Any, Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jsonrpcserver.main import default_validator  # noqa: E402  (the baseline only)

from bridge import protocol, rpc  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402


class _Rest:
    """Finesse that accepts everything at once."""

    def dialog_action(self, *args: Any, **kwargs: Any) -> None:
        return None

    def make_call(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Agent:
    id = "1001"

    def to_json(self) -> dict[str, Any]:
        return {"id": "1001", "state": "READY"}


class _Session:
    """A signed-in agent whose every call is its own."""

    def __init__(self) -> None:
        self.closed = False
        self.agent = _Agent()
        self.extension = "71001"
        self.backend = type("Backend", (), {"rest": _Rest()})()
        self.lock = threading.RLock()

    def call(self, call_id: str) -> None:
        return None


class _Bridge:
    def __init__(self) -> None:
        self.metrics = Metrics(lambda: {})

    @staticmethod
    def writable_variable(name: str) -> bool:
        """WRITABLE_VARIABLES of a deployment that lets the CRM write user.case (docs/security.md)."""
        return name.startswith("callVariable") or name == "user.case"


class _Connection:
    """What ``ws.Connection`` gives ``handle``."""

    def __init__(self) -> None:
        self.bridge = _Bridge()
        self.session: Any = _Session()
        self.address = "127.0.0.1"

    @property
    def socket(self) -> "_Connection":
        return self

    def after_reply(self, fn: Callable[[], None]) -> None:
        fn()


def _answer(id_: int, call_id: str = "16777217") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "call.answer", "params": {"callId": call_id}, "id": id_}


MESSAGES: list[tuple[str, str]] = [
    ("call.answer", json.dumps(_answer(7))),
    ("session.ping", json.dumps({"jsonrpc": "2.0", "method": "session.ping", "id": 1})),
    ("batch of 5 call.answer", json.dumps([_answer(i, str(16777217 + i)) for i in range(5)])),
    ("call.make + variables", json.dumps({"jsonrpc": "2.0", "method": "call.make", "id": 2, "params": {
        "to": "5550100", "variables": {"callVariable1": "12345", "user.case": "C-1"}}})),
    ("invalid request", json.dumps({"jsonrpc": "2.0", "method": 1, "params": "bar", "id": 3})),
    ("bad params", json.dumps({"jsonrpc": "2.0", "method": "call.answer", "params": {"callId": 12}, "id": 4})),
]


@contextlib.contextmanager
def stock() -> Iterator[None]:
    """Put back the untuned pieces of the path for the duration (see the module docstring)."""
    validators = protocol._validators()
    fast = dict(validators.fast_params)
    signatures = {name: method.__dict__.pop("__signature__", None) for name, method in rpc._WRAPPED.items()}
    check_request, latency = rpc._check_request, rpc._latency
    validators.fast_params.clear()
    rpc._check_request = default_validator  # type: ignore[assignment]
    rpc._latency = lambda histogram, name: histogram.labels(name)  # type: ignore[assignment]
    try:
        yield
    finally:
        validators.fast_params.update(fast)
        for name, signature in signatures.items():
            if signature is not None:
                rpc._WRAPPED[name].__signature__ = signature  # type: ignore[attr-defined]
        rpc._check_request, rpc._latency = check_request, latency


def _per_call_us(text: str, ctx: _Connection, number: int) -> float:
    handle = rpc.handle
    started = time.perf_counter()
    for _ in range(number):
        handle(text, ctx)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / number * 1e6


_STAMP = re.compile(r'"at": "[^"]*"')  # session.ping's reply carries the time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000, help="calls per round (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds per mode; the median is printed (default 7)")
    args = parser.parse_args()
    protocol.compile_all()
    ctx = _Connection()
    logging.getLogger("bridge.rpc").disabled = True  # nothing here logs; a bug would flood the figures

    same = True
    for label, text in MESSAGES:
        with stock():
            stock_reply = rpc.handle(text, ctx)  # type: ignore[arg-type]
        tuned_reply = rpc.handle(text, ctx)  # type: ignore[arg-type]
        if _STAMP.sub("", stock_reply) != _STAMP.sub("", tuned_reply):
            print(f"DIFFERENT REPLY for {label}:\n  stock {stock_reply}\n  tuned {tuned_reply}")
            same = False

    print(f"rpc.handle, µs per call (median of {args.repeat} rounds of {args.number}; python {sys.version.split()[0]})")
    print(f"{'message':<26}{'stock':>10}{'tuned':>10}{'stock/tuned':>13}")
    for label, text in MESSAGES:
        rounds: dict[str, list[float]] = {"stock": [], "tuned": []}
        for _ in range(args.repeat):  # alternate, so drift on a shared machine hits both modes alike
            with stock():
                rounds["stock"].append(_per_call_us(text, ctx, args.number))
            rounds["tuned"].append(_per_call_us(text, ctx, args.number))
        before, after = statistics.median(rounds["stock"]), statistics.median(rounds["tuned"])
        print(f"{label:<26}{before:>10.1f}{after:>10.1f}{before / after:>12.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
