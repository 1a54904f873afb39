"""Sign-in guesses on the wire (docs/security.md): nobody is locked out of Finesse, a failed
request leaves the socket as it was, one agent has one session whatever name it signs in by."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from bridge.client import RpcError
from bridge.finesse.rest import FinesseRest
from tests.waiting import until

from .conftest import PASSWORD


@pytest.fixture
def finesse_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every credential check the bridge (in this process) asks of Finesse: (user, accepted)."""
    checks: list[tuple[str, bool]] = []
    real = FinesseRest.get_user

    def counting(self: FinesseRest, user: str, *args: Any, **kwargs: Any) -> Any:
        try:
            agent = real(self, user, *args, **kwargs)
        except Exception:
            checks.append((user, False))
            raise
        checks.append((user, True))
        return agent
    monkeypatch.setattr(FinesseRest, "get_user", counting)
    return checks


def _guess(client: Any, agent_id: str, password: str = "wrong") -> RpcError:
    with pytest.raises(RpcError) as caught:
        client.login(agent_id, password, "7" + agent_id)
    return caught.value


def _locked(stack: Any, agent_id: str) -> bool:
    return next(a for a in stack.sim_state()["agents"] if a["id"] == agent_id)["locked"]


@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0)
def test_guesses_at_a_working_agent_never_reach_finesse_and_it_keeps_working(stack, finesse_checks):
    agent = stack.agent("1001")
    finesse_checks.clear()
    attacker = stack.client()
    codes = [_guess(attacker, "1001").code for _ in range(10)]
    assert codes == [4010, 4010] + [4029] * 8  # checked against the session; then the bridge's own limit
    assert finesse_checks == []  # not one guess went to Finesse
    assert not _locked(stack, "1001")
    agent.call("agent.setState", state="READY")  # 1001 still works (a locked agent gets 4029 on everything)
    agent.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")


@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0)
def test_guesses_at_an_agent_not_signed_in_stop_below_finesses_lockout(stack, finesse_checks):
    attackers = [stack.client() for _ in range(3)]  # several sockets, one address
    errors = [_guess(attackers[n % 3], "1003") for n in range(12)]
    assert [e.code for e in errors] == [4010, 4010] + [4029] * 10
    assert all(isinstance(e.data["retryAfter"], int) and 1 <= e.data["retryAfter"] <= 300 for e in errors[2:])
    assert finesse_checks == [("1003", False)] * 2  # below the simulator's five
    assert not _locked(stack, "1003")
    with pytest.raises(RpcError) as refused:  # the right password too, until the window has passed...
        stack.client().login("1003", PASSWORD, "71003")
    assert refused.value.code == 4029
    assert not _locked(stack, "1003")  # ...but Finesse never locked 1003


@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0, SIGNIN_MAX_FAILURES_PER_ADDRESS=3)
def test_one_address_guessing_many_agents_is_stopped(stack, finesse_checks):
    attacker = stack.client()
    codes = [_guess(attacker, agent).code for agent in ("1002", "1003", "1004", "1005", "1006")]
    assert codes == [4010, 4010, 4010, 4029, 4029]
    assert len(finesse_checks) == 3


def test_each_failure_delays_the_next_attempt(stack, finesse_checks):
    attacker = stack.client()
    first, second = _guess(attacker, "1004"), _guess(attacker, "1004")
    assert (first.code, second.code) == (4010, 4029)  # the second came within the 1 s back-off
    assert second.data == {"retryAfter": 1}
    assert len(finesse_checks) == 1


def test_sign_in_guesses_in_a_batch_are_refused_unsent(stack, finesse_checks):
    attacker = stack.client()
    guesses = [("session.login", {"agentId": "1001", "password": f"guess-{n}", "extension": "71001"}) for n in range(5)]
    outcomes = attacker.batch(guesses)
    assert [o.code for o in outcomes] == [-32602] * 5
    assert "on its own" in outcomes[0].message
    assert finesse_checks == []


def test_identifiers_longer_than_finesse_allows_are_refused_and_leave_nothing(stack):
    bridge = stack.app.extensions["cti_bridge"]
    client = stack.client()
    for n in range(20):
        with pytest.raises(RpcError) as caught:
            client.login(f"{n:05d}" + "x" * 60_000, "pw", "71001")
        assert caught.value.code == -32602
    assert len(bridge.signin_throttle) == 0 and bridge.registry.lock_count() == 0


@pytest.mark.bridge(SIGNIN_MAX_FAILURES_PER_ADDRESS=1001, SIGNIN_BACKOFF_SECONDS=0.0)
def test_a_thousand_unknown_agents_leave_no_lock_behind(stack):
    bridge = stack.app.extensions["cti_bridge"]
    client = stack.client()
    for n in range(1000):
        assert _guess(client, f"9{n:06d}").code == 4010
    assert bridge.registry.lock_count() == 0  # per-agent locks exist only while a sign-in runs
    assert len(bridge.signin_throttle) <= 1001  # one count per agent tried and the address, expiring with the window
    assert stack.agent("1001").call("agent.get")["id"] == "1001"


def test_a_failed_resume_or_sign_in_leaves_the_socket_on_its_session(stack):
    tab = stack.agent("1001", ready=True)
    with pytest.raises(RpcError) as resumed:
        tab.resume("not-a-token", 0)
    assert resumed.value.code == 4001
    assert _guess(tab, "1002").code == 4010
    call_id = stack.ring(to="1001", ani="4155550100")
    ringing = tab.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id)  # events still arrive
    assert ringing["call"]["from"] == "4155550100"
    bridge = stack.app.extensions["cti_bridge"]
    session = bridge.registry.get("1001")
    assert session is not None and len(session.sockets) == 1  # still this tab's session: no grace timer


def test_an_agent_id_and_a_login_name_at_once_make_one_session(stack, finesse_logins):
    bridge = stack.app.extensions["cti_bridge"]
    clients = [stack.client() for _ in range(6)]
    results: list[Any] = [None] * 6
    start = threading.Barrier(6)

    def sign_in(n: int) -> None:
        start.wait(5)
        by_name = {"loginName": "agent1001"} if n % 2 else {"agentId": "1001"}
        results[n] = clients[n].request("session.login", {**by_name, "password": PASSWORD, "extension": "71001"})
    threads = [threading.Thread(target=sign_in, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len({r["sessionId"] for r in results}) == 1
    assert finesse_logins == ["1001"]  # one PUT LOGIN
    assert bridge.hub.client_count() == 1  # one XMPP connection
    assert len(bridge.registry) == 1 and bridge.registry.lock_count() == 0


def test_signing_in_again_and_again_keeps_only_the_newest_resume_tokens(stack):
    tab = stack.agent("1001")
    first = tab.resume_token
    tokens = [tab.login("1001", PASSWORD, "71001")["resumeToken"] for _ in range(200)]  # joins, each a new token
    registry = stack.app.extensions["cti_bridge"].registry
    assert registry.token_count() == 64  # bounded, whatever the number of sign-ins
    assert registry.by_token(first) is None and registry.by_token(tokens[-1]) is not None
    assert tab.resume(tokens[-1], tab.last_seq)["resumeToken"]  # the newest still resumes


@pytest.mark.bridge(MAX_SOCKETS_PER_AGENT=3)
def test_an_agent_has_at_most_so_many_sockets(stack):
    tabs = [stack.agent("1001") for _ in range(3)]
    extra = stack.client()
    with pytest.raises(RpcError) as refused:
        extra.login("1001", PASSWORD, "71001")
    assert refused.value.code == 4003 and "MAX_SOCKETS_PER_AGENT" in refused.value.message
    token = tabs[0].resume_token
    with pytest.raises(RpcError) as refused:
        stack.client().resume(token, tabs[0].last_seq)  # a fourth socket by resume: refused too...
    assert refused.value.code == 4003
    tabs[0].close()  # ...until a tab goes; the token was not spent by the refusal
    session = stack.app.extensions["cti_bridge"].registry.get("1001")
    until(lambda: len(session.sockets) == 2, timeout=5)
    assert stack.client().resume(token, tabs[0].last_seq)["resumeToken"]


@pytest.mark.bridge(SIGNIN_BACKOFF_SECONDS=0.0, SIGNIN_MAX_FAILURES_PER_AGENT=10)
@pytest.mark.parametrize("agent_id, password", [("1001", "пароль-\u2028"), ("\u2028é", "pw"), ("1002", "mot de passé")])
def test_credentials_beyond_latin_1_are_finesses_to_refuse_not_an_internal_error(stack, agent_id, password):
    assert _guess(stack.client(), agent_id, password).code == 4010  # Basic auth in UTF-8 (RFC 7617)


def test_a_token_outside_rfc_6750s_characters_is_invalid_params(stack, finesse_checks):
    with pytest.raises(RpcError) as refused:
        stack.client().request("session.login", {"agentId": "1001", "token": "tök én", "extension": "71001"})
    assert refused.value.code == -32602 and finesse_checks == []


@pytest.mark.sim(password="pässwörd-пароль")
def test_a_password_beyond_latin_1_signs_in(stack):
    client = stack.client()
    assert client.login("1001", "pässwörd-пароль", "71001")["agent"]["id"] == "1001"
    assert client.call("agent.reasonCodes", category="NOT_READY")  # REST as that agent works too
