"""Request bodies from Finesse clients: XML in, plain dicts out, through defusedxml."""
from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET

MAX_BODY = 64 * 1024


class BodyError(ValueError):
    """The body is not XML we accept; the message says why."""


def parse(body: bytes, root: str) -> dict[str, Any]:
    """Parse ``<root>...</root>`` into {child tag: text}; nested Finesse lists become dicts.

    ``actionParams`` becomes {name: value}; ``mediaProperties`` becomes {"wrapUpReason": ...,
    "callvariables": {name: value}}. DTDs, entities and external references are refused.
    """
    if len(body) > MAX_BODY:
        raise BodyError(f"body larger than {MAX_BODY} bytes")
    if not body.strip():
        raise BodyError(f"a <{root}> body is required")
    try:
        doc = SafeET.fromstring(body)
    except Exception as exc:  # ParseError and defusedxml's refusals alike
        raise BodyError(f"malformed XML: {exc}") from None
    if doc.tag != root:
        raise BodyError(f"expected <{root}>, got <{doc.tag}>")
    out: dict[str, Any] = {}
    for child in doc:
        if child.tag == "actionParams":
            out["actionParams"] = _pairs(child, "ActionParam")
        elif child.tag == "mediaProperties":
            media: dict[str, Any] = {}
            for item in child:
                if item.tag == "callvariables":
                    media["callvariables"] = _pairs(item, "CallVariable")
                else:
                    media[item.tag] = (item.text or "").strip()
            out["mediaProperties"] = media
        else:
            out[child.tag] = (child.text or "").strip()
    return out


def _pairs(parent: Element, tag: str) -> dict[str, str]:
    pairs = {}
    for item in parent.findall(tag):
        name = (item.findtext("name") or "").strip()
        if not name:
            raise BodyError(f"<{tag}> without a name")
        if name in pairs:  # docs/finesse.md 6.9: duplicate names are Invalid Input
            raise BodyError(f"<{tag}> {name} given twice")
        pairs[name] = item.findtext("value") or ""
    return pairs
