"""``bridge.rpc.handle`` against a few thousand hostile messages generated from openrpc.json.

The generator is ``bench/rpcfuzz.py`` (the same messages ``bench/abuse.py`` sends over real
WebSockets), loaded by path. Every message goes through ``handle`` in process with a signed-in
fake session (tests/bridge/test_rpc.py's fakes), and for every one: ``handle`` returns; the reply
is nothing or strict JSON (no NaN or Infinity); no -32603 and nothing logged at ERROR (a bug of
ours, docs/client.md: -32603 is never the answer to a message the client got wrong); every error
code is one openrpc.json lists. Non-finite number literals (NaN, Infinity, 1e999) are not JSON
(RFC 8259 section 6): -32700 wherever they are.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import logging
import os
import sys
import time
from types import ModuleType
from typing import Any, Iterator

import pytest

from bridge import rpc
from bridge.errors import BadCredentials, NotSignedIn
from bridge.finesse import model
from bridge.profiles import Profiles
from bridge.store import Store
from tests.bridge.test_rpc import FakeBridge, FakeConnection, FakeRest, FakeSession

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESSAGES = 6000
SEEDS = (1, 2)


def _load_rpcfuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rpcfuzz", os.path.join(ROOT, "bench", "rpcfuzz.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rpcfuzz", module)
    spec.loader.exec_module(module)
    return module


rpcfuzz = _load_rpcfuzz()
DOCUMENT, _ = rpcfuzz.load()
CODES = rpcfuzz.error_codes(DOCUMENT)


class FuzzRest(FakeRest):
    """Builds and encodes the request bodies the real client sends (bridge/finesse/rest.py: XML, UTF-8),
    so a value Finesse could never be sent fails here as it would there; Finesse then accepts it."""

    def set_state(self, user_id: str, state: str, reason_code_id: str | None = None) -> None:
        model.user_state_body(state, reason_code_id).encode("utf-8")
        self.calls.append(("set_state", (user_id, state, reason_code_id)))

    def make_call(self, user_id: str, from_address: str, to_address: str,
                  variables: dict[str, str] | None = None) -> None:
        model.make_call_body(from_address, to_address, variables).encode("utf-8")
        self.calls.append(("make_call", (user_id, to_address)))

    def sign_out(self, user_id: str, reason_code_id: str | None = None) -> None:
        model.user_state_body("LOGOUT", reason_code_id).encode("utf-8")


class FuzzBridge(FakeBridge):
    """What every method may touch: sign-in and resume refuse (a wrong guess, an unknown token) as the
    real ones do, sign-out does nothing, records and contacts live in an in-memory SQLite store."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.profiles = Profiles(store)
        self.sign_in = self._wrong_password
        self.resume = self._unknown_token
        self.workers = self
        self.signed_out: list[Any] = []

    @staticmethod
    def _wrong_password(socket: Any, **params: Any) -> Any:
        raise BadCredentials("Finesse rejected the credentials")

    @staticmethod
    def _unknown_token(*args: Any, **kwargs: Any) -> Any:
        raise NotSignedIn("Session expired; sign in again")

    def sign_out(self, session: Any, reason: str | None) -> None:
        self.signed_out.append(session)

    def submit(self, fn: Any, *args: Any) -> None:
        pass

    def finish(self, *args: Any) -> None:
        pass


@pytest.fixture
def fuzz_ctx() -> Iterator[FakeConnection]:
    store = Store.from_url("sqlite:///:memory:", busy_timeout=5.0)
    ctx = FakeConnection()
    ctx.bridge = FuzzBridge(store)
    ctx.session = FakeSession()
    ctx.session.backend.rest = FuzzRest()
    yield ctx
    store.close()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a reply is not JSON")


def _codes(reply: Any) -> Iterator[int]:
    for item in reply if isinstance(reply, list) else [reply]:
        if isinstance(item, dict) and isinstance(item.get("error"), dict):
            yield item["error"].get("code")


def _text(payload: str | bytes) -> str:
    """What the socket hands to ``handle``: a binary frame's bytes as UTF-8 with replacement characters
    (bridge/wsconn.py). The raw-text kinds (not UTF-8, for a text frame) are read the same way here."""
    return payload if isinstance(payload, str) else payload.decode("utf-8", "replace")


def _run(ctx: FakeConnection, caplog: pytest.LogCaptureFixture, seed: int,
         count: int) -> tuple[dict[str, list[str]], collections.Counter[Any]]:
    """Every message of the seed: {problem: [kind, ...]} and the error codes answered."""
    problems: dict[str, list[str]] = collections.defaultdict(list)
    codes: collections.Counter[Any] = collections.Counter()
    session = ctx.session
    for kind, payload in rpcfuzz.messages(seed, count):
        ctx.session = session  # a failed session.login must not change what the next message sees
        caplog.clear()
        try:
            reply = rpc.handle(_text(payload), ctx, 20)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001  (what is asserted: nothing escapes)
            problems[f"handle raised {type(exc).__name__}"].append(kind)
            continue
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        if errors:
            problems[f"logged at ERROR: {errors[0].getMessage()[:80]}"].append(kind)
        if not isinstance(reply, str):
            problems["reply is not text"].append(kind)
            continue
        if not reply:
            continue
        try:
            parsed = json.loads(reply, parse_constant=_no_constant)
        except ValueError as exc:
            problems[f"reply is not strict JSON: {str(exc)[:60]}"].append(kind)
            continue
        for code in _codes(parsed):
            codes[code] += 1
            if code == -32603:
                problems["-32603 Internal error"].append(kind)
            elif code not in CODES:
                problems[f"error code {code!r} is not in openrpc.json"].append(kind)
        if kind.startswith(("framing:non-finite", "batch:non-finite")) or ":non-finite:" in kind:
            if not (isinstance(parsed, dict) and parsed.get("error", {}).get("code") == -32700):
                problems["a non-finite literal is not -32700"].append(kind)
    return problems, codes


def _report(problems: dict[str, list[str]]) -> str:
    lines = []
    for problem, kinds in sorted(problems.items(), key=lambda item: -len(item[1])):
        by_kind = collections.Counter(kinds)
        lines.append(f"{problem}: {len(kinds)} messages; " + ", ".join(f"{k} x{n}" for k, n in by_kind.most_common(12))
                     + (" ..." if len(by_kind) > 12 else ""))
    return "\n".join(lines)


@pytest.mark.parametrize("seed", SEEDS)
def test_hostile_messages_are_answered_without_internal_errors(fuzz_ctx: FakeConnection, caplog: pytest.LogCaptureFixture,
                                                               seed: int) -> None:
    caplog.set_level(logging.WARNING)
    began = time.monotonic()
    problems, codes = _run(fuzz_ctx, caplog, seed, MESSAGES // len(SEEDS))
    assert time.monotonic() - began < 20
    assert codes, "no message got an error: the generator is not hostile"
    assert not problems, "\n" + _report(problems)


def test_the_generator_covers_every_method_and_framing_case() -> None:
    kinds = {kind for kind, _ in rpcfuzz.messages(0, 2000)}
    methods = {m["name"] for m in DOCUMENT["methods"]}
    assert {k.split(":")[1] for k in kinds if k.startswith("valid:")} == methods
    assert {k for k in rpcfuzz.kinds() if k.startswith(("framing:", "batch:", "binary:", "raw-text:"))} <= kinds
    assert list(rpcfuzz.messages(7, 50)) == list(rpcfuzz.messages(7, 50))  # deterministic for a seed
