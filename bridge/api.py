"""The REST API under ``/api/`` (design.md section 6b): JSON in and out, for admins and servers.

Every request needs ``Authorization: Bearer <key>`` with a key from ``API_KEYS``, compared in
constant time. No key configured means the API is off: 403 ``api_disabled``, so a forgotten
setting reads differently from a wrong key (401 ``unauthorized``, with ``WWW-Authenticate``).
Errors are ``{"error": {"code", "message"}}``.

- ``POST /api/screenpop/dryrun`` ``{"call": {...}, "on": "ringing", "agent": {"id", "extension"}}``:
  which rule matches and the pop it builds, as ``python -m bridge.screenpop --json`` prints it.
- ``POST /api/screenpop/reload``: re-read the rules from the config file now (they also reload by
  themselves when the file changes); 422 if the file is bad (the old rules stay in use), 409 if
  the rules come from the environment or ``create_app`` rather than a file.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request

from .config import ConfigError
from .screenpop import TRIGGERS, call_from

if TYPE_CHECKING:
    from .service import Bridge

log = logging.getLogger("bridge.api")

MAX_BODY_BYTES = 256 * 1024


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


def _digest(key: str) -> bytes:
    # Equal-length digests, so compare_digest's time says nothing about a key's length either.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def init_app(app: Flask, bridge: Bridge) -> None:
    """Register the ``/api`` blueprint for this app's bridge."""
    api = Blueprint("api", __name__, url_prefix="/api")
    keys = [_digest(key) for key in bridge.config["API_KEYS"]]

    @api.before_request
    def authenticate() -> Any:
        if not keys:
            return _error(403, "api_disabled", "The REST API is off: no API_KEYS are configured")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        digest = _digest(given.strip())
        matched = False
        for key in keys:  # every key, whatever matched: the time does not say which
            matched |= hmac.compare_digest(digest, key)
        if scheme.lower() != "bearer" or not given.strip() or not matched:
            response, status = _error(401, "unauthorized", "Send Authorization: Bearer <one of API_KEYS>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="cti-bridge"'
            return response, status
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _error(413, "too_large", f"Bodies are limited to {MAX_BODY_BYTES} bytes")
        return None

    @api.post("/screenpop/dryrun")
    def screenpop_dryrun() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "bad_request", 'Expected a JSON object {"call": {...}, "on": "ringing", "agent": {...}}')
        trigger, agent = body.get("on", "ringing"), body.get("agent") or {}
        if trigger not in TRIGGERS:
            return _error(400, "bad_request", f"on: expected one of {', '.join(TRIGGERS)}, got {trigger!r}")
        if not isinstance(agent, dict) or not all(isinstance(v, str) for v in agent.values()):
            return _error(400, "bad_request", 'agent: expected an object of strings {"id", "extension", ...}')
        if "call" not in body:
            return _error(400, "bad_request", "call: required, a call as the bridge sends it")
        try:
            call = call_from(body["call"])
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        return jsonify(bridge.screenpop.rules().explain(trigger, call, agent))

    @api.post("/screenpop/reload")
    def screenpop_reload() -> Any:
        if bridge.screenpop.file is None:
            return _error(409, "no_rules_file",
                          "The screen-pop rules come from the environment or create_app, not a file; restart to change them")
        try:
            rules = bridge.screenpop.reload()
        except ConfigError as exc:
            log.error("screen-pop rules not reloaded (admin request): %s", exc)
            return _error(422, "bad_rules", f"{exc}; the rules in use are unchanged")
        return jsonify(file=bridge.screenpop.file, rules=[rule.name for rule in rules.rules])

    app.register_blueprint(api)
