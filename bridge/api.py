"""The REST API under ``/api/`` (docs/records.md): JSON in and out, for admins and servers.

Every request needs ``Authorization: Bearer <key>`` with a key from ``API_KEYS``, compared in
constant time. No key configured means the API is off: 403 ``api_disabled``, so a forgotten
setting reads differently from a wrong key (401 ``unauthorized``, with ``WWW-Authenticate``).
Errors are ``{"error": {"code", "message"}}``.

- ``POST /api/screenpop/dryrun`` ``{"call": {...}, "on": "ringing", "agent": {"id", "extension"}}``:
  which rule matches and the pop it builds, as ``python -m bridge.screenpop --json`` prints it.
- ``POST /api/screenpop/reload``: re-read the rules from the config file now (they also reload by
  themselves when the file changes); 422 if the file is bad (the old rules stay in use), 409 if
  the rules come from the environment or ``create_app`` rather than a file.
- ``GET /api/records?agentId=&number=&since=&limit=&cursor=``: call records, newest first, paged:
  ``{"items": [...], "next": cursor or null}`` (records.py).
- ``POST /api/contacts``; ``GET``, ``PUT``, ``PATCH``, ``DELETE /api/contacts/<id>`` (``If-Match:
  <version>``, 409 when the contact moved on); ``GET /api/contacts?number=``; ``GET
  /api/contacts/changes?since=<cursor>&limit=`` (profiles.py). The manual is docs/records.md.

A bad parameter or field is 400 with ``error.field`` naming it; a database that fails is 503.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request

from . import logs
from .config import ConfigError
from .profiles import ContactNotFound, FieldError, VersionConflict
from .records import list_records
from .screenpop import TRIGGERS, call_from
from .store import StoreError

if TYPE_CHECKING:
    from .service import Bridge

log = logs.get("bridge.api")

MAX_BODY_BYTES = 256 * 1024


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


def _digest(key: str) -> bytes:
    # Equal-length digests, so compare_digest's time says nothing about a key's length either.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise FieldError(name, f"expected a whole number, got {raw!r}")
    return int(raw)


def _if_match() -> int | None:
    """``If-Match: 3`` (or ``"3"``, ``W/"3"``): the version the writer read; ``*`` or none: any."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()):
        raise FieldError("If-Match", f"expected the contact's version, such as 3, got {raw!r}")
    return int(value)


def _contact_response(contact: dict[str, Any], status: int = 200) -> tuple[Response, int]:
    response = jsonify(contact)
    response.headers["ETag"] = f'"{contact["version"]}"'
    return response, status


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

    # -- records and contacts (records.py, profiles.py) -------------------------------------------

    @api.errorhandler(FieldError)
    def bad_field(exc: FieldError) -> Any:
        return jsonify(error={"code": "bad_request", "message": str(exc), "field": exc.field}), 400

    @api.errorhandler(ContactNotFound)
    def no_contact(exc: ContactNotFound) -> Any:
        return _error(404, "not_found", str(exc.args[0]))

    @api.errorhandler(VersionConflict)
    def conflict(exc: VersionConflict) -> Any:
        return jsonify(error={"code": "version_conflict", "message": str(exc), "currentVersion": exc.current}), 409

    @api.errorhandler(StoreError)
    def database_failed(exc: StoreError) -> Any:
        log.error("REST API %s %s: the database failed: %s", request.method, request.path, exc)
        return _error(503, "database_unavailable", "The database is not available; try again")

    def body() -> Any:
        data = request.get_json(silent=True)
        if data is None:
            raise FieldError("body", "expected a JSON object (Content-Type: application/json)")
        return data

    @api.get("/records")
    def records() -> Any:
        args = request.args
        items, following = list_records(bridge.store, agent_id=args.get("agentId"), number=args.get("number"),
                                         since=args.get("since"), limit=_int_arg("limit", 50),
                                         cursor=args.get("cursor"))
        return jsonify(items=items, next=following)

    @api.post("/contacts")
    def contact_create() -> Any:
        contact = bridge.profiles.create(body())
        response, status = _contact_response(contact, 201)
        response.headers["Location"] = f"{request.path}/{contact['id']}"
        return response, status

    @api.get("/contacts")
    def contact_find() -> Any:
        number = request.args.get("number")
        if number is None:
            raise FieldError("number", "required, e.g. ?number=%2B14155550100 (every contact: /api/contacts/changes)")
        return jsonify(items=bridge.profiles.find(number, limit=_int_arg("limit", 20)))

    @api.get("/contacts/changes")
    def contact_changes() -> Any:
        items, following, more = bridge.profiles.changes(request.args.get("since"), limit=_int_arg("limit", 100))
        return jsonify(items=items, next=following, more=more)

    @api.get("/contacts/<contact_id>")
    def contact_get(contact_id: str) -> Any:
        return _contact_response(bridge.profiles.get(contact_id))

    @api.put("/contacts/<contact_id>")
    def contact_replace(contact_id: str) -> Any:
        return _contact_response(bridge.profiles.replace(contact_id, body(), _if_match()))

    @api.patch("/contacts/<contact_id>")
    def contact_patch(contact_id: str) -> Any:
        return _contact_response(bridge.profiles.patch(contact_id, body(), _if_match()))

    @api.delete("/contacts/<contact_id>")
    def contact_delete(contact_id: str) -> Any:
        return jsonify(bridge.profiles.delete(contact_id, _if_match()))

    app.register_blueprint(api)
