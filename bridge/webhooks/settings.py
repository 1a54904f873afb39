"""The ``WEBHOOKS`` settings: the TOML ``[webhooks]`` table, checked into ``Settings``.

Everything is checked when the bridge starts, so a bad endpoint stops the start with a
``ConfigError`` naming its key (``WEBHOOKS.endpoints[0].url``), never a failed delivery hours
later. The keys and their meaning are in docs/webhooks.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..config import ConfigError
from ..templating import Template, call_field, form_template, url_template
from .signing import secret_key

EVENTS = ("ringing", "answered", "ended", "record")
RECORD_FIELDS = ("id", "agentId", "callId", "direction", "from", "to", "startedAt", "answeredAt", "endedAt",
                 "durationSeconds", "talkSeconds", "outcome", "wrapUpReason")
_ENDPOINT_KEYS = ("name", "url", "events", "method", "body", "template", "secret", "timeout")
# Every [webhooks] key and its default (the lists' defaults are empty).
_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"endpoints": (), "allow_hosts": (), "max_age_hours": 24.0, "retry_base_seconds": 5.0,
     "retry_max_seconds": 3600.0, "batch": 20, "workers": 4, "lease_seconds": 60.0, "poll_seconds": 5.0,
     "shutdown_seconds": 5.0})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Endpoint:
    """One ``[[webhooks.endpoints]]`` table, checked."""

    name: str
    url: Template
    events: frozenset[str]
    method: str
    body: str  # json | form
    template: tuple[tuple[str, Template], ...] | None
    key: bytes
    timeout: float


@dataclass(frozen=True)
class Settings:
    """The ``WEBHOOKS`` table, checked."""

    endpoints: tuple[Endpoint, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    max_age_seconds: float = 24 * 3600.0
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    batch: int = 20
    workers: int = 4
    lease_seconds: float = 60.0
    poll_seconds: float = 5.0
    shutdown_seconds: float = 5.0

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def _field(name: str, key: str) -> str:
    """A placeholder: the call model's fields (as in screen-pop rules) or ``record.<field>``."""
    head, _, rest = name.partition(".")
    if head != "record":
        return call_field(name, key)
    sub, _, var = rest.partition(".")
    if rest in RECORD_FIELDS or (sub == "variables" and var):
        return name
    raise ConfigError(f"{key}: unknown field {name!r} (record fields: {', '.join(RECORD_FIELDS)}, "
                      "record.variables.<name>)")


def _template(text: Any, key: str, url: bool) -> Template:
    """A URL or form template (bridge/templating.py) whose fields may also be ``record.*``."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: expected a string, got {text!r}")
    if url:
        return url_template(text, key, _field, verb="called", noun="webhook URL")
    return form_template(text, key, _field)


def _number(raw: Mapping[str, Any], name: str, key: str, default: float, minimum: float = 0.0) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= minimum:
        raise ConfigError(f"{key}.{name}: expected a number above {minimum:g}, got {value!r}")
    return float(value)


def _endpoint(raw: Any, index: int, allow_hosts: frozenset[str]) -> Endpoint:
    key = f"WEBHOOKS.endpoints[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - set(_ENDPOINT_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected {', '.join(_ENDPOINT_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{key}.name: required: letters, digits, _ . - (at most 64), got {name!r}")
    url = _template(raw.get("url"), f"{key}.url", url=True)
    host = (urlsplit(url.text).hostname or "").rstrip(".")
    if urlsplit(url.text).scheme.lower() != "https" and host not in allow_hosts:
        raise ConfigError(f"{key}.url: https is required, except for hosts in WEBHOOKS.allow_hosts ({host!r} is not)")
    events = raw.get("events")
    if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
        raise ConfigError(f"{key}.events: expected a non-empty list of {', '.join(EVENTS)}, got {events!r}")
    method = raw.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
        raise ConfigError(f"{key}.method: expected POST or PUT, got {method!r}")
    body = raw.get("body", "json")
    if body not in ("json", "form"):
        raise ConfigError(f"{key}.body: expected json or form, got {body!r}")
    template = raw.get("template")
    if template is not None and (not isinstance(template, dict) or not template
                                 or not all(isinstance(k, str) and k for k in template)):
        raise ConfigError(f"{key}.template: expected a table of field = \"template\", got {template!r}")
    if template is None and body == "form":
        raise ConfigError(f"{key}.template: a form body needs a template (field = \"template\")")
    secret = raw.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{key}.secret: required, \"whsec_<base64>\" or a string of at least 16 characters")
    try:
        secret_bytes = secret_key(secret)
    except ValueError:
        raise ConfigError(f"{key}.secret: the part after whsec_ is not base64") from None
    if len(secret_bytes) < 16:
        raise ConfigError(f"{key}.secret: too short; at least 16 bytes (Standard Webhooks uses 24 to 64)")
    return Endpoint(
        name, url, frozenset(events), method.upper(), body,
        None if template is None else tuple((k, _template(v, f"{key}.template.{k}", url=False))
                                            for k, v in template.items()),
        secret_bytes, _number(raw, "timeout", key, 10.0))


def parse(table: Any) -> Settings:
    """``WEBHOOKS`` (the TOML ``[webhooks]`` table) -> settings; ``ConfigError`` naming the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"WEBHOOKS: expected a table, got {table!r}")
    unknown = sorted(set(table) - set(_SETTINGS))
    if unknown:
        raise ConfigError(f"WEBHOOKS.{unknown[0]}: unknown key (expected {', '.join(_SETTINGS)})")
    hosts = table.get("allow_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(f"WEBHOOKS.allow_hosts: expected a list of host names or addresses, got {hosts!r}")
    allow = frozenset(h.lower().strip("[]").rstrip(".") for h in hosts)
    numbers = {name: _number(table, name, "WEBHOOKS", float(default)) for name, default in _SETTINGS.items()
               if isinstance(default, (int, float))}
    for name in ("batch", "workers"):
        if numbers[name] != int(numbers[name]) or numbers[name] < 1:
            raise ConfigError(f"WEBHOOKS.{name}: expected a whole number of at least 1, got {table.get(name)!r}")
    if numbers["retry_base_seconds"] > numbers["retry_max_seconds"]:
        raise ConfigError("WEBHOOKS.retry_base_seconds: must not exceed retry_max_seconds")
    raw_endpoints = table.get("endpoints", [])
    if not isinstance(raw_endpoints, list):
        raise ConfigError(f"WEBHOOKS.endpoints: expected a list of endpoints, got {raw_endpoints!r}")
    endpoints: list[Endpoint] = []
    for index, raw in enumerate(raw_endpoints):
        endpoint = _endpoint(raw, index, allow)
        if any(e.name == endpoint.name for e in endpoints):
            raise ConfigError(f"WEBHOOKS.endpoints[{index}].name: {endpoint.name!r} is used twice")
        if numbers["lease_seconds"] <= 2 * endpoint.timeout:
            raise ConfigError(f"WEBHOOKS.lease_seconds: must be more than twice endpoints[{index}].timeout "
                              f"(connect + read), got {numbers['lease_seconds']:g}")
        endpoints.append(endpoint)
    return Settings(tuple(endpoints), allow, numbers["max_age_hours"] * 3600.0, numbers["retry_base_seconds"],
                    numbers["retry_max_seconds"], int(numbers["batch"]), int(numbers["workers"]),
                    numbers["lease_seconds"], numbers["poll_seconds"], numbers["shutdown_seconds"])
