"""Screen-pop rules on their own: parsing and its errors, conditions, URL encoding, POST forms,
reload on file change, the session's once-per-call-and-trigger memory, and the dry-run command.

No network. Time is a fake clock passed to ``ScreenPop``; the file's mtime is set with ``os.utime``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bridge import config
from bridge.config import ConfigError
from bridge.finesse.model import Agent, Call
from bridge.screenpop import RuleSet, ScreenPop, call_from, parse, read_file
from bridge.sessions import AgentSession

ROOT = Path(__file__).resolve().parents[2]
NODES = [{"url": "http://127.0.0.1:8082"}]
HOSTILE = "a&b#c?d/e%f g ü=+;"
CALL: dict[str, Any] = {
    "id": "D1", "direction": "inbound", "state": "ringing", "from": "4155550100", "to": "71001",
    "ani": "4155550100", "dnis": "8001", "callType": "ACD_IN", "queue": {"name": "Sales", "number": "7000"},
    "variables": {"callVariable1": "ACCT-1", "callVariable3": "VIP", "user.crm.caseid": "C-9"},
}
AGENT = {"id": "1001", "extension": "71001", "teamId": "1", "teamName": "Sales A"}


def rule(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r", "on": "ringing", "url": "https://crm.example.com/pop"}
    return {**base, **fields}


def rules(*raw: dict[str, Any]) -> RuleSet:
    return parse({"rules": list(raw)})


def pop(ruleset: RuleSet, call: dict[str, Any] | None = None, on: str = "ringing",
        agent: dict[str, Any] | None = None) -> dict[str, Any] | None:
    return ruleset.pop(on, CALL if call is None else call, AGENT if agent is None else agent)


def matches(condition: dict[str, Any], call: dict[str, Any] | None = None) -> bool:
    return pop(rules(rule(when=[condition])), call) is not None


# -- conditions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("condition, expected", [
    ({"field": "ani", "op": "equals", "value": "4155550100"}, True),
    ({"field": "ani", "op": "equals", "value": "415555010"}, False),
    ({"field": "dnis", "op": "equals", "value": 8001}, True),  # a TOML integer means its digits
    ({"field": "callType", "op": "not_equals", "value": "OUTBOUND"}, True),
    ({"field": "callType", "op": "not_equals", "value": "ACD_IN"}, False),
    ({"field": "variables.callVariable1", "op": "contains", "value": "CT-"}, True),
    ({"field": "variables.callVariable1", "op": "contains", "value": "XX"}, False),
    ({"field": "ani", "op": "starts_with", "value": "415"}, True),
    ({"field": "ani", "op": "starts_with", "value": "0100"}, False),
    ({"field": "ani", "op": "ends_with", "value": "0100"}, True),
    ({"field": "ani", "op": "ends_with", "value": "415"}, False),
    ({"field": "variables.callVariable9", "op": "empty"}, True),
    ({"field": "ani", "op": "empty"}, False),
    ({"field": "ani", "op": "not_empty"}, True),
    ({"field": "variables.missing", "op": "not_empty"}, False),
    ({"field": "callType", "op": "in", "value": ["ACD_IN", "PREROUTE_ACD_IN"]}, True),
    ({"field": "callType", "op": "in", "value": ["OUTBOUND"]}, False),
    ({"field": "queue.name", "op": "equals", "value": "Sales"}, True),
    ({"field": "queue.number", "op": "equals", "value": "7000"}, True),
    ({"field": "variables.user.crm.caseid", "op": "equals", "value": "C-9"}, True),
    ({"field": "agent.id", "op": "equals", "value": "1001"}, True),
    ({"field": "agent.extension", "op": "equals", "value": "71001"}, True),
    ({"field": "agent.teamName", "op": "equals", "value": "Sales A"}, True),
    ({"field": "id", "op": "equals", "value": "D1"}, True),
    ({"field": "from", "op": "equals", "value": "4155550100"}, True),
    ({"field": "to", "op": "equals", "value": "71001"}, True),
    ({"field": "direction", "op": "equals", "value": "inbound"}, True),
    ({"field": "queue.name", "op": "equals", "value": "sales"}, False),
    ({"field": "queue.name", "op": "equals", "value": "sales", "ignore_case": True}, True),
    ({"field": "queue.name", "op": "in", "value": ["SALES"], "ignore_case": True}, True),
])
def test_every_op(condition: dict[str, Any], expected: bool) -> None:
    assert matches(condition) is expected


def test_all_needs_every_condition_any_needs_one_none_means_always() -> None:
    vip = {"field": "variables.callVariable3", "op": "equals", "value": "VIP"}
    other = {"field": "ani", "op": "equals", "value": "0"}
    assert pop(rules(rule(match="all", when=[vip, other]))) is None
    assert pop(rules(rule(match="any", when=[vip, other]))) is not None
    assert pop(rules(rule(match="any", when=[other, other]))) is None
    assert pop(rules(rule(match="all"))) is not None and pop(rules(rule(match="any"))) is not None


def test_missing_fields_are_empty() -> None:
    bare = {"id": "D2"}  # no ani, no variables, no queue
    assert matches({"field": "ani", "op": "empty"}, bare)
    assert matches({"field": "variables.callVariable1", "op": "empty"}, bare)
    assert matches({"field": "queue.name", "op": "empty"}, bare)
    assert matches({"field": "variables.x", "op": "not_equals", "value": "VIP"}, bare)  # no Finesse quirk
    assert pop(rules(rule(when=[{"field": "agent.id", "op": "empty"}])), bare, agent={}) is not None
    weird = {"id": "D3", "queue": None, "variables": None}
    assert pop(rules(rule(url="https://crm.example.com/q/{queue.name}?v={variables.callVariable1}")), weird) == {
        "callId": "D3", "url": "https://crm.example.com/q/?v=", "method": "GET", "target": "tab"}


def test_empty_ani_falls_through_to_the_next_rule() -> None:
    ruleset = rules(
        rule(name="By number", when=[{"field": "ani", "op": "not_empty"}], url="https://crm.example.com/search?phone={ani}"),
        rule(name="Withheld", url="https://crm.example.com/new-contact"))
    assert pop(ruleset, {**CALL, "ani": ""})["url"] == "https://crm.example.com/new-contact"
    assert pop(ruleset)["url"] == "https://crm.example.com/search?phone=4155550100"


def test_first_matching_rule_for_the_trigger_wins() -> None:
    ruleset = rules(rule(name="answered", on="answered", url="https://a.example/1"),
                    rule(name="first", url="https://a.example/2"), rule(name="second", url="https://a.example/3"))
    assert pop(ruleset)["url"] == "https://a.example/2"
    assert pop(ruleset, on="answered")["url"] == "https://a.example/1"
    assert pop(ruleset, on="ended") is None


# -- URLs and forms --------------------------------------------------------------------------------

def test_values_are_encoded_for_their_position() -> None:
    call = {**CALL, "ani": HOSTILE}
    url = pop(rules(rule(url="https://crm.example.com/c/{ani}/x?q={ani}&n=1#/r?v={ani}")), call)["url"]
    assert url == ("https://crm.example.com/c/a%26b%23c%3Fd%2Fe%25f%20g%20%C3%BC%3D%2B%3B/x"
                   "?q=a%26b%23c?d/e%25f%20g%20%C3%BC%3D%2B%3B&n=1"
                   "#/r?v=a%26b%23c?d/e%25f%20g%20%C3%BC%3D%2B%3B")
    parts = urlsplit(url)
    assert unquote(parts.path.split("/")[2]) == HOSTILE and len(parts.path.split("/")) == 4  # one segment
    assert parse_qs(parts.query) == {"q": [HOSTILE], "n": ["1"]}
    assert unquote(parts.fragment.partition("v=")[2]) == HOSTILE


def test_literal_question_mark_and_hash_move_the_position_values_never_do() -> None:
    ruleset = rules(rule(url="https://crm.example.com/{ani}{dnis}?{ani}#{ani}"))
    url = pop(ruleset, {**CALL, "ani": "?#", "dnis": "/"})["url"]
    assert url == "https://crm.example.com/%3F%23%2F??%23#?%23"  # ? stays data after the query starts


def test_literal_braces_and_dot_segments() -> None:
    assert pop(rules(rule(url="https://crm.example.com/x?json={{%22a%22}}&n={ani}")))["url"] == \
        "https://crm.example.com/x?json={%22a%22}&n=4155550100"
    ruleset = rules(rule(name="path", url="https://crm.example.com/c/{ani}/edit"),
                    rule(name="query", url="https://crm.example.com/c?id={ani}"))
    for dots in (".", ".."):  # a browser would resolve /c/../edit to /edit: skip to the next rule
        assert pop(ruleset, {**CALL, "ani": dots})["url"] == f"https://crm.example.com/c?id={dots}"
    assert rules(rule(url="https://crm.example.com/c/{ani}")).explain("ringing", {**CALL, "ani": ".."}, AGENT)[
        "rules"][0]["reason"] == "url: {ani} is '..', which cannot be a path segment"


def test_post_sends_templated_form_fields_unencoded() -> None:
    ruleset = rules(rule(method="POST", target="window:crm", url="https://crm.example.com/pop?src={dnis}",
                         form={"phone": "{ani}", "case": "{variables.user.crm.caseid}", "note": "{{agent}} {agent.id}",
                               "fixed": "cti"}))
    assert pop(ruleset, {**CALL, "ani": HOSTILE}) == {
        "callId": "D1", "url": "https://crm.example.com/pop?src=8001", "method": "POST", "target": "window:crm",
        "form": {"phone": HOSTILE, "case": "C-9", "note": "{agent} 1001", "fixed": "cti"}}
    assert pop(rules(rule(method="post")))["form"] == {}


@pytest.mark.parametrize("target", ["tab", "iframe", "callback", "window:crm", "window:CRM_2.main-x"])
def test_targets(target: str) -> None:
    assert pop(rules(rule(target=target)))["target"] == target


@pytest.mark.parametrize("url, message", [
    ("javascript:alert(1)", "only http and https URLs can be popped, written out, not javascript:"),
    ("JavaScript:alert(document.cookie)//https://crm", "not JavaScript:"),
    ("data:text/html,<script>alert(1)</script>", "not data:"),
    ("file:///etc/passwd", "not file:"),
    ("{ani}", "not a placeholder"),
    ("{variables.url}/x", "not a placeholder"),
    ("https{ani}//crm.example.com/", "only http and https"),
    ("//crm.example.com/x", "only http and https"),
    ("https://{ani}.example.com/", "a placeholder in the host"),
    ("https://crm.example.com{ani}", "a placeholder in the host"),
    ("https://user:pw@crm.example.com/", "no user or password"),
    ("https:///path", "expected https://host/"),
    ("https://crm.example.com:port/", "bad host"),
    ("https://crm.example.com/a b", "spaces, control and non-ASCII"),
    (" javascript:alert(1)", "spaces, control and non-ASCII"),
    ("https://crm.example.com/ü", "spaces, control and non-ASCII"),
    ("https://crm.example.com/{ani", "unmatched '{'"),
    ("https://crm.example.com/}", "unmatched '}'"),
    ("", "required"),
])
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        rules(rule(url=url))
    assert str(refused.value).startswith("SCREENPOP.rules[0].url: ") and message in str(refused.value)


# -- config errors name the rule and key ----------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({"rules": [rule(), rule(name="VIP", when=[{"field": "ani", "op": "not_empty"},
                                               {"field": "ani", "op": "equal", "value": "1"}])]},
     "SCREENPOP.rules[1].when[1].op: unknown op 'equal' (expected one of equals, not_equals, contains, "
     "starts_with, ends_with, empty, not_empty, in) (rule 'VIP')"),
    ({"rules": [rule(when=[{"field": "caller", "op": "empty"}])]}, "SCREENPOP.rules[0].when[0].field: unknown field 'caller'"),
    ({"rules": [rule(when=[{"field": "variables.", "op": "empty"}])]}, "SCREENPOP.rules[0].when[0].field: unknown field"),
    ({"rules": [rule(when=[{"op": "empty"}])]}, "SCREENPOP.rules[0].when[0].field: required"),
    ({"rules": [rule(when=[{"field": "ani", "op": "equals"}])]}, "SCREENPOP.rules[0].when[0].value: required for equals"),
    ({"rules": [rule(when=[{"field": "ani", "op": "empty", "value": ""}])]}, "SCREENPOP.rules[0].when[0].value: empty takes no value"),
    ({"rules": [rule(when=[{"field": "ani", "op": "in", "value": "VIP"}])]}, "SCREENPOP.rules[0].when[0].value: in takes a non-empty list"),
    ({"rules": [rule(when=[{"field": "ani", "op": "in", "value": ["a", 1.5]}])]}, "SCREENPOP.rules[0].when[0].value[1]: expected a string"),
    ({"rules": [rule(when=[{"field": "ani", "op": "contains", "value": ""}])]}, "SCREENPOP.rules[0].when[0].value: contains needs a non-empty value"),
    ({"rules": [rule(when=[{"field": "ani", "op": "equals", "value": True}])]}, "SCREENPOP.rules[0].when[0].value: expected a string"),
    ({"rules": [rule(when=[{"field": "ani", "op": "empty", "ignore_case": "yes"}])]}, "SCREENPOP.rules[0].when[0].ignore_case"),
    ({"rules": [rule(when=[{"field": "ani", "op": "empty", "valeu": 1}])]}, "SCREENPOP.rules[0].when[0].valeu: unknown key"),
    ({"rules": [rule(when=["ani"])]}, "SCREENPOP.rules[0].when[0]: expected a table"),
    ({"rules": [rule(when={"field": "ani"})]}, "SCREENPOP.rules[0].when: expected a list"),
    ({"rules": [rule(on="ring")]}, "SCREENPOP.rules[0].on: expected one of ringing, answered, dialing, ended, got 'ring'"),
    ({"rules": [rule(match="most")]}, "SCREENPOP.rules[0].match: expected all or any"),
    ({"rules": [rule(method="PUT")]}, "SCREENPOP.rules[0].method: expected GET or POST"),
    ({"rules": [rule(target="popup")]}, "SCREENPOP.rules[0].target: expected tab, iframe, callback or window:<name>"),
    ({"rules": [rule(target="window:")]}, "SCREENPOP.rules[0].target"),
    ({"rules": [rule(target="window:_blank")]}, "SCREENPOP.rules[0].target"),
    ({"rules": [rule(form={"a": "{ani}"})]}, "SCREENPOP.rules[0].form: only a POST sends form fields"),
    ({"rules": [rule(method="POST", form={"a": "{nope}"})]}, "SCREENPOP.rules[0].form.a: unknown field 'nope'"),
    ({"rules": [rule(method="POST", form={"a": 1.5})]}, "SCREENPOP.rules[0].form.a: expected a string"),
    ({"rules": [rule(name="")]}, "SCREENPOP.rules[0].name: required"),
    ({"rules": [rule(name="A"), rule(name="A")]}, "SCREENPOP.rules[1].name: 'A' is also rules[0]'s name"),
    ({"rules": [rule(nmae="x")]}, "SCREENPOP.rules[0].nmae: unknown key"),
    ({"rules": ["x"]}, "SCREENPOP.rules[0]: expected a table"),
    ({"rules": {"name": "x"}}, "SCREENPOP.rules: expected a list"),
    ({"rule": []}, "SCREENPOP.rule: unknown key (expected rules)"),
])
def test_config_errors_name_the_rule_and_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(table)
    assert str(refused.value).startswith(message)


def test_settings_from_the_toml_file_environment_and_create_app(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('finesse_nodes = [{url = "http://127.0.0.1:8082"}]\nscreenpop_reload_seconds = 0.5\n'
                    '[[screenpop.rules]]\nname = "Search"\non = "ringing"\nurl = "https://crm.example.com/s?q={ani}"\n')
    settings = config.load(file=str(path), environ={})
    assert settings["SCREENPOP"]["rules"][0]["name"] == "Search" and settings["SCREENPOP_RELOAD_SECONDS"] == 0.5
    assert settings["SCREENPOP_FILE"] == str(path)  # watched for changes
    assert [r.name for r in ScreenPop.from_config(settings).rules().rules] == ["Search"]

    env = {"CTI_SCREENPOP": json.dumps({"rules": [rule(name="Env")]})}
    settings = config.load(file=str(path), environ=env)
    assert settings["SCREENPOP_FILE"] is None  # the environment's rules win: nothing to watch
    assert [r.name for r in ScreenPop.from_config(settings).rules().rules] == ["Env"]
    settings = config.load({"SCREENPOP": {"rules": [rule(name="App")]}}, file=str(path), environ={})
    assert settings["SCREENPOP_FILE"] is None
    assert [r.name for r in ScreenPop.from_config(settings).rules().rules] == ["App"]
    assert config.load({"FINESSE_NODES": NODES}, file="/dev/null", environ={})["SCREENPOP_FILE"] is None

    with pytest.raises(ConfigError, match="^SCREENPOP: expected a table"):
        config.load({"FINESSE_NODES": NODES, "SCREENPOP": []}, file="/dev/null", environ={})
    path.write_text('finesse_nodes = [{url = "http://127.0.0.1:8082"}]\n'
                    '[[screenpop.rules]]\nname = "Bad"\non = "ringing"\nurl = "javascript:alert(1)"\n')
    with pytest.raises(ConfigError) as refused:
        ScreenPop.from_config(config.load(file=str(path), environ={}))
    assert str(refused.value) == (f"SCREENPOP.rules[0].url: only http and https URLs can be popped, written out, "
                                  f"not javascript: (rule 'Bad') (file {path})")


# -- reload ----------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_rules(path: Path, *names: str, url: str = "https://crm.example.com/{ani}", mtime: int = 0) -> None:
    path.write_text("".join(f'[[screenpop.rules]]\nname = "{n}"\non = "ringing"\nurl = "{url}"\n' for n in names))
    if mtime:
        os.utime(path, ns=(mtime, mtime))  # file systems may keep a coarse mtime: make each write distinct


def test_rules_reload_when_the_file_changes_and_a_bad_file_keeps_the_old(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "bridge.toml", Clock()
    write_rules(path, "One", mtime=1_000_000_000)
    screenpop = ScreenPop(read_file(str(path))[0], str(path), reload_seconds=2.0, clock=clock)
    names = lambda: [r.name for r in screenpop.rules().rules]  # noqa: E731
    assert names() == ["One"]

    write_rules(path, "One", "Two", mtime=2_000_000_000)
    clock.now += 1.9
    assert names() == ["One"]  # not checked yet: at most every SCREENPOP_RELOAD_SECONDS
    clock.now += 0.1
    assert names() == ["One", "Two"]

    caplog.set_level(logging.ERROR, "bridge.screenpop")
    write_rules(path, "Three", url="javascript:alert(1)", mtime=3_000_000_000)
    clock.now += 2
    assert names() == ["One", "Two"]
    assert "rules[0].url: only http and https" in caplog.text and "keeping the 2 in use" in caplog.text
    caplog.clear()
    clock.now += 2
    assert names() == ["One", "Two"] and caplog.text == ""  # reported once, not at every check
    with pytest.raises(ConfigError, match=r"^SCREENPOP.rules\[0\].url"):
        screenpop.reload()  # the admin request says why
    assert names() == ["One", "Two"]

    path.write_text("[[screenpop.rules]\n")  # not even TOML
    os.utime(path, ns=(4_000_000_000, 4_000_000_000))
    clock.now += 2
    assert names() == ["One", "Two"] and f"config file {path}" in caplog.text

    path.unlink()
    clock.now += 2
    assert names() == ["One", "Two"]

    write_rules(path, "Four", mtime=5_000_000_000)
    clock.now += 2
    assert names() == ["Four"]
    write_rules(path, "Five")
    assert [r.name for r in screenpop.reload().rules] == ["Five"] and names() == ["Five"]


def test_rules_from_the_environment_or_create_app_do_not_reload() -> None:
    screenpop = ScreenPop(rules(rule(name="Fixed")), None, reload_seconds=0.0)
    assert [r.name for r in screenpop.rules().rules] == ["Fixed"]
    with pytest.raises(ConfigError, match="not a file"):
        screenpop.reload()


# -- once per call and trigger (the session's memory) ---------------------------------------------

class FakeSocket:
    id = "s1"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, text: str) -> bool:
        self.sent.append(json.loads(text))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def _session(agent: Agent, screenpop: Any) -> tuple[AgentSession, FakeSocket]:
    """A session with these screen-pop rules and one socket attached."""
    session = AgentSession(agent, password_check=lambda _: True, replay_events=100, replay_seconds=60.0,
                           grace_seconds=5.0, on_expire=lambda _: None, screenpop=screenpop)
    socket = FakeSocket()
    session.attach(socket)
    return session, socket


def test_a_session_pops_once_per_call_and_trigger() -> None:
    screenpop = ScreenPop(rules(rule(name="Ring", url="https://crm.example.com/c/{ani}?agent={agent.id}"),
                                rule(name="End", on="ended", url="https://crm.example.com/wrap/{id}")))
    agent = Agent(id="1001", extension="71001", state="READY")
    session, socket = _session(agent, screenpop.pop)
    ringing = Call(id="D1", state="ringing", ani="4155550100", from_="4155550100", to="71001",
                   startedAt="2025-03-01T09:59:00.000Z")
    session.resync(agent, [ringing])
    session.resync(agent, [ringing])  # a re-sync after a reconnect: nothing new
    session.resync(agent, [])  # the call ended meanwhile
    session.resync(agent, [ringing])  # the same call rings again (transferred back, same start): no second pop
    session.resync(agent, [])
    methods = [(m["method"], m["params"].get("url")) for m in socket.sent]
    assert methods == [
        ("call.ringing", None), ("call.screenPop", "https://crm.example.com/c/4155550100?agent=1001"),
        ("call.ended", None), ("call.screenPop", "https://crm.example.com/wrap/D1"),
        ("call.ringing", None), ("call.ended", None)]
    assert [m["params"]["seq"] for m in socket.sent] == list(range(1, 7))


def test_a_reused_call_id_with_another_start_pops_again() -> None:
    # Finesse's dialog ids are CTI call ids: after a CTI server restart a new call may get the id
    # of one this session popped already. It is another call and gets its own pops.
    screenpop = ScreenPop(rules(rule(name="Ring", url="https://crm.example.com/c/{ani}")))
    agent = Agent(id="1001", extension="71001", state="READY")
    session, socket = _session(agent, screenpop.pop)
    first = Call(id="16777217", state="ringing", ani="4155550100", from_="4155550100", to="71001",
                 startedAt="2025-03-01T09:00:00.000Z")
    session.resync(agent, [first])
    session.resync(agent, [])
    reused = Call(id="16777217", state="ringing", ani="4155550199", from_="4155550199", to="71001",
                  startedAt="2025-03-01T11:00:00.000Z")
    session.resync(agent, [reused])
    session.resync(agent, [reused])  # and a re-sync of that live call: still one pop for it
    pops = [m["params"]["url"] for m in socket.sent if m["method"] == "call.screenPop"]
    assert pops == ["https://crm.example.com/c/4155550100", "https://crm.example.com/c/4155550199"]


def test_a_failing_rule_never_costs_the_call_event(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> dict[str, Any] | None:
        raise RuntimeError("boom")
    agent = Agent(id="1001", extension="71001")
    session, socket = _session(agent, broken)
    caplog.set_level(logging.ERROR, "bridge.sessions")
    session.resync(agent, [Call(id="D1", state="ringing")])
    assert [m["method"] for m in socket.sent] == ["call.ringing"] and "screen-pop rules failed" in caplog.text


# -- dry run ---------------------------------------------------------------------------------------

SAMPLE_RULES = '''
[[screenpop.rules]]
name = "VIP caller"
on = "ringing"
when = [ { field = "variables.callVariable3", op = "equals", value = "VIP" },
         { field = "callType", op = "in", value = ["ACD_IN", "PREROUTE_ACD_IN"] } ]
url = "https://crm.example.com/vip/{ani}?agent={agent.id}"
target = "window:crm"

[[screenpop.rules]]
name = "Log the call"
on = "answered"
method = "POST"
url = "https://crm.example.com/calls"
form = { phone = "{ani}", extension = "{agent.extension}" }
'''


def dry_run(tmp_path: Path, call: Any, *args: str, rules_text: str = SAMPLE_RULES,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bridge.toml").write_text(rules_text)
    (tmp_path / "call.json").write_text(call if isinstance(call, str) else json.dumps(call))
    call_arg = "-" if stdin is not None else str(tmp_path / "call.json")
    return subprocess.run([sys.executable, "-W", "error", "-m", "bridge.screenpop", "--config",
                           str(tmp_path / "bridge.toml"), "--call", call_arg, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, input=stdin)


def test_dry_run_match_prints_the_rule_and_url(tmp_path: Path) -> None:
    done = dry_run(tmp_path, CALL, "--agent-id", "1001", "--extension", "71001")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Rules on ringing:", "  [0] VIP caller: MATCH",
        "  [1] Log the call: not_evaluated: rule 'VIP caller' matched first",
        "Match: [0] VIP caller", "  GET https://crm.example.com/vip/4155550100?agent=1001", "  target: window:crm"]

    done = dry_run(tmp_path, {"jsonrpc": "2.0", "method": "call.answered", "params": {"seq": 3, "call": CALL}},
                   "--on", "answered", "--extension", "71001")
    assert done.returncode == 0, done.stderr
    assert "  POST https://crm.example.com/calls" in done.stdout
    assert "  form: phone = 4155550100" in done.stdout and "  form: extension = 71001" in done.stdout


def test_dry_run_no_match_says_why_each_rule_failed(tmp_path: Path) -> None:
    done = dry_run(tmp_path, {**CALL, "variables": {}})
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "Rules on ringing:", "  [0] VIP caller: failed: variables.callVariable3 equals 'VIP': got ''",
        "  [1] Log the call: other_trigger: on answered, not ringing", "No rule matches on ringing."]
    done = dry_run(tmp_path, "", "--json", stdin=json.dumps({"call": CALL | {"callType": "X"}}))  # --call -
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["pop"] is None and result["matched"] is None
    assert result["rules"][0] == {"index": 0, "name": "VIP caller", "on": "ringing", "result": "failed",
                                  "reason": "callType in ['ACD_IN', 'PREROUTE_ACD_IN']: got 'X'"}


def test_dry_run_json_is_what_the_api_returns(tmp_path: Path) -> None:
    done = dry_run(tmp_path, CALL, "--json", "--agent-id", "1001")
    assert done.returncode == 0
    assert json.loads(done.stdout) == read_file(str(tmp_path / "bridge.toml"))[0].explain(
        "ringing", CALL, {"id": "1001", "extension": "", "teamId": "", "teamName": ""})


@pytest.mark.parametrize("call, rules_text, message", [
    ("{not json", SAMPLE_RULES, "error: Expecting property name"),
    ("[1, 2]", SAMPLE_RULES, "error: call: expected a JSON object"),
    (json.dumps({"id": "D1", "variables": ["x"]}), SAMPLE_RULES, "error: call.variables: expected an object"),
    (json.dumps(CALL), '[[screenpop.rules]]\nname = "x"\non = "ringing"\nurl = "data:,x"\n',
     "error: SCREENPOP.rules[0].url: only http and https URLs can be popped, written out, not data: (rule 'x')"),
    (json.dumps(CALL), "[[screenpop.rules]\n", "error: config file"),
])
def test_dry_run_bad_input_exits_2(tmp_path: Path, call: str, rules_text: str, message: str) -> None:
    done = dry_run(tmp_path, call, rules_text=rules_text)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
    assert done.stdout == ""


def test_dry_run_argument_errors_exit_2(tmp_path: Path) -> None:
    assert dry_run(tmp_path, CALL, "--on", "ring").returncode == 2
    missing = subprocess.run([sys.executable, "-m", "bridge.screenpop", "--config", str(tmp_path / "none.toml"),
                              "--call", str(tmp_path / "none.json")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_call_from_accepts_a_call_notification_params_or_a_message() -> None:
    assert call_from(CALL) == call_from({"call": CALL}) == call_from({"method": "call.ringing", "params": {"call": CALL}})
    with pytest.raises(ValueError):
        call_from("D1")
