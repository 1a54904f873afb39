"""Screen-pop rules: which page to open for a call, decided on the server.

A rule names a trigger (``on``: ringing, answered, dialing, ended), conditions on the call, its
variables and the agent (``when``, combined by ``match``: all or any), and what to open: a URL
template, GET or POST (``form`` fields), and a target (tab, ``window:<name>``, iframe, callback).
The first matching rule wins, once per call and trigger (``sessions.AgentSession`` remembers what
popped). Rules are checked when loaded, so a bad rule stops the start with a ``ConfigError``
naming it, never a wrong pop at the first call. The URL and form templates are bridge/templating.py,
shared with the webhooks. The manual is docs/screenpop.md. Dry run::

    python -m bridge.screenpop --config bridge.toml --call call.json [--on ringing]
        [--agent-id 1001 --extension 71001] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import logs
from .config import ConfigError
from .templating import Lookup, Template, Unbuildable, call_field, form_template, lookup, text_of, url_template

log = logs.get("bridge.screenpop")

TRIGGERS = ("ringing", "answered", "dialing", "ended")
OPS = ("equals", "not_equals", "contains", "starts_with", "ends_with", "empty", "not_empty", "in")
_RULE_KEYS = ("name", "on", "match", "when", "url", "method", "target", "form")
_CONDITION_KEYS = ("field", "op", "value", "ignore_case")
_WINDOW = re.compile(r"window:[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


def _known_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected {', '.join(allowed)})")


@dataclass(frozen=True)
class Condition:
    """One ``when`` entry: ``field op value``."""

    field: str
    op: str
    values: tuple[str, ...] = ()
    ignore_case: bool = False

    def holds(self, value: str) -> bool:
        wanted = self.values
        if self.ignore_case:
            value, wanted = value.casefold(), tuple(v.casefold() for v in wanted)
        if self.op in ("empty", "not_empty"):
            return (value == "") == (self.op == "empty")
        if self.op == "in":
            return value in wanted
        tests: dict[str, Callable[[str, str], bool]] = {
            "equals": str.__eq__, "not_equals": str.__ne__, "contains": str.__contains__,
            "starts_with": str.startswith, "ends_with": str.endswith}
        return tests[self.op](value, wanted[0])

    def describe(self) -> str:
        if self.op in ("empty", "not_empty"):
            return f"{self.field} {self.op}"
        shown: Any = list(self.values) if self.op == "in" else self.values[0]
        return f"{self.field} {self.op} {shown!r}" + (" (ignoring case)" if self.ignore_case else "")


def _condition(raw: Any, key: str) -> Condition:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table {{field, op, value}}, got {raw!r}")
    _known_keys(raw, _CONDITION_KEYS, key)
    if not isinstance(raw.get("field"), str):
        raise ConfigError(f"{key}.field: required, e.g. \"ani\" or \"variables.callVariable1\"")
    field, op = call_field(raw["field"], f"{key}.field"), raw.get("op")
    if op not in OPS:
        raise ConfigError(f"{key}.op: unknown op {op!r} (expected one of {', '.join(OPS)})")
    ignore_case = raw.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise ConfigError(f"{key}.ignore_case: expected true or false, got {ignore_case!r}")
    if op in ("empty", "not_empty"):
        if "value" in raw:
            raise ConfigError(f"{key}.value: {op} takes no value")
        return Condition(field, op, (), ignore_case)
    if "value" not in raw:
        raise ConfigError(f"{key}.value: required for {op}")
    if op == "in":
        if not isinstance(raw["value"], list) or not raw["value"]:
            raise ConfigError(f"{key}.value: in takes a non-empty list of strings, got {raw['value']!r}")
        return Condition(field, op, tuple(text_of(v, f"{key}.value[{i}]") for i, v in enumerate(raw["value"])),
                         ignore_case)
    value = text_of(raw["value"], f"{key}.value")
    if not value and op in ("contains", "starts_with", "ends_with"):
        raise ConfigError(f"{key}.value: {op} needs a non-empty value (use empty or not_empty)")
    return Condition(field, op, (value,), ignore_case)


@dataclass(frozen=True)
class Rule:
    """One ``[[screenpop.rules]]`` table, checked."""

    index: int
    name: str
    on: str
    match: str
    when: tuple[Condition, ...]
    url: Template
    method: str = "GET"
    target: str = "tab"
    form: tuple[tuple[str, Template], ...] = ()

    def failure(self, value: Lookup) -> str | None:
        """Why this rule does not match (its first failing condition), or None if it matches."""
        failed = [c for c in self.when if not c.holds(value(c.field))]
        if not failed or (self.match == "any" and len(failed) < len(self.when)):
            return None
        first = f"{failed[0].describe()}: got {value(failed[0].field)!r}"
        return first if self.match == "all" else f"none of the {len(failed)} conditions holds; first: {first}"

    def build(self, call_id: str, value: Lookup) -> dict[str, Any]:
        """The ``call.screenPop`` params."""
        pop: dict[str, Any] = {"callId": call_id, "url": self.url.render(value), "method": self.method,
                               "target": self.target}
        if self.method == "POST":
            pop["form"] = {name: template.render(value) for name, template in self.form}
        return pop


def _rule(raw: Any, index: int) -> Rule:
    key = f"SCREENPOP.rules[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table, got {raw!r}")
    _known_keys(raw, _RULE_KEYS, key)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}.name: required, a non-empty string")
    if raw.get("on") not in TRIGGERS:
        raise ConfigError(f"{key}.on: expected one of {', '.join(TRIGGERS)}, got {raw.get('on')!r}")
    match = raw.get("match", "all")
    if match not in ("all", "any"):
        raise ConfigError(f"{key}.match: expected all or any, got {match!r}")
    when = raw.get("when", [])
    if not isinstance(when, list):
        raise ConfigError(f"{key}.when: expected a list of conditions, got {when!r}")
    method = raw.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in ("GET", "POST"):
        raise ConfigError(f"{key}.method: expected GET or POST, got {method!r}")
    target = raw.get("target", "tab")
    if target not in ("tab", "iframe", "callback") and not (isinstance(target, str) and _WINDOW.fullmatch(target)):
        raise ConfigError(f"{key}.target: expected tab, iframe, callback or window:<name> (letters, digits, "
                          f"_ . -, at most 40), got {target!r}")
    form = raw.get("form", {})
    if "form" in raw and method.upper() != "POST":
        raise ConfigError(f"{key}.form: only a POST sends form fields")
    if not isinstance(form, dict) or not all(isinstance(k, str) and k for k in form):
        raise ConfigError(f"{key}.form: expected a table of field = \"template\"")
    return Rule(index, name, raw["on"], match, tuple(_condition(c, f"{key}.when[{i}]") for i, c in enumerate(when)),
                url_template(raw.get("url"), f"{key}.url"), method.upper(), target,
                tuple((k, form_template(v, f"{key}.form.{k}")) for k, v in form.items()))


@dataclass(frozen=True)
class RuleSet:
    """The rules in order, checked; immutable, so a reload swaps the whole set."""

    rules: tuple[Rule, ...] = ()

    def pop(self, trigger: str, call: Mapping[str, Any], agent: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first matching rule's ``call.screenPop`` params, or None."""
        value = lookup(call, agent)
        for rule in self.rules:
            if rule.on == trigger and rule.failure(value) is None:
                try:
                    return rule.build(str(call.get("id") or ""), value)
                except Unbuildable as exc:
                    log.warning("screen-pop rule %r skipped: %s", rule.name, exc)
        return None

    def explain(self, trigger: str, call: Mapping[str, Any], agent: Mapping[str, Any]) -> dict[str, Any]:
        """The dry run: every rule's result and reason, the winner and the pop it builds."""
        value, winner, pop, report = lookup(call, agent), None, None, []
        for rule in self.rules:
            entry: dict[str, Any] = {"index": rule.index, "name": rule.name, "on": rule.on}
            why = None
            if winner is not None:
                entry.update(result="not_evaluated", reason=f"rule {winner.name!r} matched first")
            elif rule.on != trigger:
                entry.update(result="other_trigger", reason=f"on {rule.on}, not {trigger}")
            elif (why := rule.failure(value)) is None:
                try:
                    pop, winner = rule.build(str(call.get("id") or ""), value), rule
                    entry.update(result="matched", reason="")
                except Unbuildable as exc:
                    why = f"url: {exc}"
            if why is not None:
                entry.update(result="failed", reason=why)
            report.append(entry)
        return {"on": trigger, "matched": winner.name if winner else None,
                "index": winner.index if winner else None, "pop": pop, "rules": report}


def parse(table: Any) -> RuleSet:
    """``SCREENPOP`` (the TOML ``[screenpop]`` table) -> rules; ``ConfigError`` naming rule and key."""
    if not isinstance(table, dict):
        raise ConfigError(f"SCREENPOP: expected a table with rules, got {table!r}")
    _known_keys(table, ("rules",), "SCREENPOP")
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"SCREENPOP.rules: expected a list of rules, got {raw_rules!r}")
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        try:
            rule = _rule(raw, index)
        except ConfigError as exc:
            name = raw.get("name") if isinstance(raw, dict) else None
            raise (ConfigError(f"{exc} (rule {name!r})") if isinstance(name, str) and name else exc) from None
        twin = next((r for r in rules if r.name == rule.name), None)
        if twin is not None:
            raise ConfigError(f"SCREENPOP.rules[{index}].name: {rule.name!r} is also rules[{twin.index}]'s name")
        rules.append(rule)
    return RuleSet(tuple(rules))


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def read_file(path: str) -> tuple[RuleSet, tuple[int, int, int]]:
    """The rules in a TOML file's ``[screenpop]`` table (other keys are not read) and its stamp."""
    try:
        stamp = _stamp(path)  # before reading: a write after this shows as a new stamp next time
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    table: Any = next((v for k, v in data.items() if k.upper() == "SCREENPOP"), {})
    try:
        return parse(table), stamp
    except ConfigError as exc:
        raise ConfigError(f"{exc} (file {path})") from None


class ScreenPop:
    """The rules in use; re-read from the config file when it changes. Its own lock."""

    def __init__(self, rules: RuleSet, file: str | None = None, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.file = file
        self._rules, self._stamp = rules, _stamp(file) if file else None
        self._reload_seconds, self._clock = reload_seconds, clock
        self._checked = clock()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], clock: Callable[[], float] = time.monotonic) -> ScreenPop:
        """From the settings (config.load): ``SCREENPOP``, or the file in ``SCREENPOP_FILE`` (watched)."""
        file = config.get("SCREENPOP_FILE")
        if file:
            rules, _ = read_file(file)
        else:
            rules = parse(config.get("SCREENPOP") or {})
        return cls(rules, file, reload_seconds=config.get("SCREENPOP_RELOAD_SECONDS", 2.0), clock=clock)

    def rules(self) -> RuleSet:
        """The current rules; re-reads the file first if its mtime changed (checked at most every
        ``SCREENPOP_RELOAD_SECONDS``). A bad new file keeps the old rules and logs the error."""
        if self.file is not None and self._clock() - self._checked >= self._reload_seconds:
            with self._lock:
                if self._clock() - self._checked >= self._reload_seconds:
                    self._checked = self._clock()
                    self._check(self.file)
        return self._rules

    def _check(self, file: str) -> None:
        try:
            stamp: tuple[int, int, int] | None = _stamp(file)
        except OSError as exc:
            stamp = None
            if self._stamp is not None:
                log.error("screen-pop rules: cannot read %s (%s); keeping the %d rules in use", file, exc,
                          len(self._rules.rules))
        if stamp is None or stamp == self._stamp:
            self._stamp = stamp
            return
        self._stamp = stamp  # a bad file is reported once, not at every check
        try:
            self._rules, self._stamp = read_file(file)
        except ConfigError as exc:
            log.error("screen-pop rules not reloaded, keeping the %d in use: %s", len(self._rules.rules), exc)
            return
        log.info("screen-pop rules reloaded from %s: %d rules", file, len(self._rules.rules))

    def reload(self) -> RuleSet:
        """Re-read the file now (the admin API); ``ConfigError`` if it is bad, and the old rules stay."""
        if self.file is None:
            raise ConfigError("SCREENPOP: the rules come from the environment or create_app, not a file")
        with self._lock:
            self._rules, self._stamp = read_file(self.file)
            self._checked = self._clock()
        log.info("screen-pop rules reloaded from %s: %d rules", self.file, len(self._rules.rules))
        return self._rules

    def pop(self, trigger: str, call: Mapping[str, Any], agent: Mapping[str, Any]) -> dict[str, Any] | None:
        """What ``sessions.AgentSession`` calls for each call notification."""
        return self.rules().pop(trigger, call, agent)


def call_from(data: Any) -> dict[str, Any]:
    """A call from a dry-run input: the call itself, notification params ``{call}``, or a whole notification."""
    if isinstance(data, dict) and isinstance(data.get("params"), dict):
        data = data["params"]
    if isinstance(data, dict) and isinstance(data.get("call"), dict):
        data = data["call"]
    if not isinstance(data, dict):
        raise ValueError("call: expected a JSON object (the call model of docs/client.md)")
    for key in ("variables", "queue"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ValueError(f"call.{key}: expected an object")
    return dict(data)


def render(result: Mapping[str, Any]) -> str:
    """The dry run's report for people."""
    lines = [f"Rules on {result['on']}:"] if result["rules"] else ["No screen-pop rules."]
    for entry in result["rules"]:
        verdict = "MATCH" if entry["result"] == "matched" else f"{entry['result']}: {entry['reason']}"
        lines.append(f"  [{entry['index']}] {entry['name']}: {verdict}")
    pop = result["pop"]
    if pop is None:
        lines.append(f"No rule matches on {result['on']}.")
        return "\n".join(lines)
    lines += [f"Match: [{result['index']}] {result['matched']}", f"  {pop['method']} {pop['url']}",
              f"  target: {pop['target']}"]
    lines += [f"  form: {name} = {value}" for name, value in pop.get("form", {}).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The dry run: exit 0 when a rule matches, 1 when none does, 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m bridge.screenpop",
                                     description="Which screen-pop rule matches a call, and the URL it opens.")
    parser.add_argument("--config", required=True, help="TOML file with [[screenpop.rules]] (bridge.toml)")
    parser.add_argument("--call", required=True, help="JSON file: a call, or a call.* notification; - reads stdin")
    parser.add_argument("--on", choices=TRIGGERS, default="ringing", help="the trigger (default: ringing)")
    parser.add_argument("--agent-id", default="")
    parser.add_argument("--extension", default="")
    parser.add_argument("--team-id", default="")
    parser.add_argument("--team-name", default="")
    parser.add_argument("--json", action="store_true", help="print JSON, as POST /api/screenpop/dryrun does")
    args = parser.parse_args(argv)
    try:
        rules, _ = read_file(args.config)
        if args.call == "-":
            data = json.load(sys.stdin)
        else:
            with open(args.call, encoding="utf-8") as handle:
                data = json.load(handle)
        call = call_from(data)
    except (ConfigError, OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent = {"id": args.agent_id, "extension": args.extension, "teamId": args.team_id, "teamName": args.team_name}
    result = rules.explain(args.on, call, agent)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else render(result))
    return 0 if result["pop"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
