"""URL and form templates with ``{field}`` placeholders, filled in from a call, its agent or a record.

Screen-pop rules (docs/screenpop.md) and webhooks (docs/webhooks.md) both build URLs and form
fields from call values; one engine keeps the syntax, the field names and the encoding rules the
same for both, and keeps them safe: a value never changes which host a URL goes to, and never adds
a path segment, query parameter or fragment of its own (docs/screenpop.md, "URL templates and
encoding").

The public API:

* ``url_template(text, key, ...)`` checks an http(s) URL template and returns a ``Template`` whose
  placeholders are tagged with where they sit (path, query or fragment); ``form_template`` does
  the same for a form value, filled in as it is.
* ``Template.render(value)`` fills a template in; it raises ``Unbuildable`` when a value cannot be
  placed safely (``.`` or ``..`` as a path segment).
* ``lookup(call, agent)`` is the ``value`` to render with: field name -> text, "" when missing.
* ``call_field(name, key)`` checks a placeholder's field name against the call model; callers with
  more fields (webhooks' ``record.*``) pass their own checker as ``field``.
* ``text_of(value, key)`` reads a config value as text (a TOML integer means its digits).

Errors in a template are ``ConfigError`` naming ``key``. What the URL is for is worded by the
caller (``verb`` and ``noun``), so each feature's messages speak of its own URLs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlsplit

from .config import ConfigError

CALL_FIELDS = ("id", "ani", "dnis", "from", "to", "direction", "callType", "state", "wrapUpReason",
               "associatedCallId")
NESTED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"queue": ("name", "number"), "agent": ("id", "extension", "teamId", "teamName")})
# What a value may keep unencoded, by where its placeholder sits: RFC 3986 pchar, query and fragment
# characters minus the sub-delims (& = + ; , ...) that servers and hash routers read as separators.
# "/" is encoded in the path, so a value is always exactly one segment.
SAFE: Mapping[str, str] = MappingProxyType({"path": ":@", "query": "/?:@", "fragment": "/?:@"})
# A placeholder {name}, a literal brace written twice, or a lone brace (an error).
TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

Lookup = Callable[[str], str]
FieldCheck = Callable[[str, str], str]


class Unbuildable(ValueError):
    """A template cannot be filled in safely with these values (the caller skips or records it)."""


def lookup(call: Mapping[str, Any], agent: Mapping[str, Any]) -> Lookup:
    """Field name -> its value as text; anything missing is "" (like Finesse's workflow engine)."""
    def value(name: str) -> str:
        head, _, rest = name.partition(".")
        if not rest:
            got = call.get(name)
        else:
            source = agent if head == "agent" else call.get(head)
            got = source.get(rest) if isinstance(source, Mapping) else None
        return "" if got is None else str(got)
    return value


def call_field(name: str, key: str) -> str:
    """A field of the call model (docs/screenpop.md) as written, or ``ConfigError`` naming ``key``."""
    head, _, rest = name.partition(".")
    if name in CALL_FIELDS or (head == "variables" and rest) or rest in NESTED.get(head, ()):
        return name
    raise ConfigError(f"{key}: unknown field {name!r} (fields: {', '.join(CALL_FIELDS)}, queue.name, "
                      "queue.number, variables.<name>, agent.id, agent.extension, agent.teamId, agent.teamName)")


def text_of(value: Any, key: str) -> str:
    """A config value as text: a string, or an integer's digits; anything else is a ``ConfigError``."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # value = 8001 in TOML means the digits
    raise ConfigError(f"{key}: expected a string, got {value!r}")


@dataclass(frozen=True)
class Template:
    """A URL or form value with ``{field}`` placeholders, each tagged with how its value is encoded."""

    text: str
    parts: tuple[tuple[str, str], ...]  # ("", literal) or (path | query | fragment | raw, field)

    def render(self, value: Lookup) -> str:
        """The text with every placeholder replaced by ``value(field)``, encoded for where it sits."""
        out = []
        for where, text in self.parts:
            if not where:
                out.append(text)
            elif where == "raw":  # a form field: the browser encodes the form
                out.append(value(text))
            else:
                got = value(text)
                if where == "path" and got in (".", ".."):  # browsers would resolve it as a directory step
                    raise Unbuildable(f"{{{text}}} is {got!r}, which cannot be a path segment")
                out.append(quote(got, safe=SAFE[where], errors="replace"))
        return "".join(out)


def _tokens(text: str, key: str, field: FieldCheck = call_field) -> list[tuple[bool, str]]:
    """(is_field, text) pieces; ``{{`` and ``}}`` are literal braces; each field is checked by ``field``."""
    pieces, pos = [], 0
    for m in TOKEN.finditer(text):
        if m.start() > pos:
            pieces.append((False, text[pos:m.start()]))
        if m.group(0) in ("{{", "}}"):
            pieces.append((False, m.group(0)[0]))
        elif m.group(1) is None:
            raise ConfigError(f"{key}: unmatched {m.group(0)!r}; write {m.group(0) * 2} for a literal brace")
        else:
            pieces.append((True, field(m.group(1).strip(), key)))
        pos = m.end()
    if pos < len(text):
        pieces.append((False, text[pos:]))
    return pieces


def url_template(text: Any, key: str, field: FieldCheck = call_field, *, verb: str = "popped",
                 noun: str = "pop URL") -> Template:
    """Check a URL template: http(s), scheme and host written out, placeholders after the host.

    ``verb`` and ``noun`` word the errors ("only http and https URLs can be <verb>", "no user or
    password in a <noun>").
    """
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{key}: required, an http or https URL template")
    pieces = _tokens(text, key, field)
    if not re.fullmatch(r"[!-~]*", "".join(t for is_field, t in pieces if not is_field)):
        raise ConfigError(f"{key}: spaces, control and non-ASCII characters must be written percent-encoded")
    prefix = ""
    for is_field, piece in pieces:
        if is_field:
            break
        prefix += piece
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", prefix)
    if scheme is None or scheme.group(1).lower() not in ("http", "https"):
        got = f"{scheme.group(1)}:" if scheme else "a placeholder" if pieces[0][0] else repr(text[:20])
        raise ConfigError(f"{key}: only http and https URLs can be {verb}, written out, not {got}")
    authority = re.match(r"https?://([^/?#]*)([/?#]?)", prefix, re.IGNORECASE)
    if authority is not None and not authority.group(2) and any(is_field for is_field, _ in pieces):
        raise ConfigError(f"{key}: a placeholder in the host; placeholders go in the path, query or fragment")
    if authority is None or not authority.group(1):
        raise ConfigError(f"{key}: expected {scheme.group(1)}://host/..., got {text!r}")
    if "@" in authority.group(1):
        raise ConfigError(f"{key}: no user or password in a {noun}")
    try:
        if urlsplit(f"http://{authority.group(1)}").hostname is None:
            raise ValueError("no host")
        urlsplit(f"http://{authority.group(1)}").port
    except ValueError as exc:
        raise ConfigError(f"{key}: bad host {authority.group(1)!r}: {exc}") from None
    parts, where = [], "path"
    for is_field, piece in pieces:
        parts.append((where if is_field else "", piece))
        if not is_field and "#" in piece:  # only literal ? and # move on: values are encoded
            where = "fragment"
        elif not is_field and "?" in piece and where == "path":
            where = "query"
    return Template(text, tuple(parts))


def form_template(text: Any, key: str, field: FieldCheck = call_field) -> Template:
    """A form value: placeholders are filled in as they are (the browser or the form encoding encodes them)."""
    value = text_of(text, key)
    return Template(value, tuple(("raw" if f else "", t) for f, t in _tokens(value, key, field)))
