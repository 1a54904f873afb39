"""Finesse's REST API on one node (aiohttp): paths, XML bodies, Basic auth, 202s and ApiErrors."""
from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from .agents import FinesseError
from .model import Agent
from .xmlbody import MAX_BODY, BodyError, parse

if TYPE_CHECKING:
    from .server import Node

log = logging.getLogger("simulator.rest")
XML = "application/xml"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def xml(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type=XML)


def accepted() -> web.Response:
    """PUT and POST answer 202 with an empty body; the outcome arrives as a notification."""
    return web.Response(status=202)


def error(exc: FinesseError) -> web.Response:
    return xml(exc.xml(), exc.status)


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes | None:
    """The whole request body, or None when it is larger than ``limit`` bytes.

    ``StreamReader.read(n)`` returns whatever has arrived (up to n), so read until EOF.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    raw = bytearray()
    while len(raw) <= limit:
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            return bytes(raw)
        raw += chunk
    return None


def finesse_app(node: "Node") -> web.Application:
    """The REST routes of one node; every node shares ``node.sim``, the one call state."""
    sim = node.sim

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get("requestId", "")
        try:
            if request.path.startswith("/finesse/api/") and request.path != "/finesse/api/SystemInfo":
                if not node.serving:
                    raise FinesseError(503, "Service Unavailable", f"Finesse is {node.status}")
            response = await handler(request)
        except FinesseError as exc:
            response = error(exc)
        except BodyError as exc:
            response = error(FinesseError(400, "Invalid Input", str(exc)))
        except web.HTTPException as exc:  # no such route or method: still an ApiErrors body
            if exc.status < 400 or not request.path.startswith("/finesse/"):
                raise
            response = error(FinesseError(exc.status, exc.reason, f"{request.method} {request.path}: {exc.reason}"))
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
        except Exception:  # a simulator bug: answer as Finesse does, keep serving
            log.exception("%s %s failed", request.method, request.path)
            response = error(FinesseError(500, "Internal Server Error", "RUNTIME_EXCEPTION"))
        if request_id:
            response.headers["requestId"] = request_id
        return response

    def actor(request: web.Request) -> Agent:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise FinesseError(401, "Authorization Failure", "Basic authentication is required")
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise FinesseError(401, "Authorization Failure", "Malformed Authorization header") from None
        return sim.authenticate(user, password)

    async def body(request: web.Request, root: str) -> dict[str, object]:
        raw = await read_body(request)
        if raw is None:
            raise BodyError(f"body larger than {MAX_BODY} bytes")
        return parse(raw, root)

    async def system_info(request: web.Request) -> web.Response:
        return xml(node.system_info_xml())

    async def get_user(request: web.Request) -> web.Response:
        return xml(sim.user_xml(sim.visible_user(actor(request), request.match_info["id"])))

    async def put_user(request: web.Request) -> web.Response:
        who = actor(request)
        fields = await body(request, "User")
        sim.put_user(who, request.match_info["id"], {k: str(v) for k, v in fields.items()},
                     request.headers.get("requestId", ""))
        return accepted()

    async def reason_codes(request: web.Request) -> web.Response:
        sim.visible_user(actor(request), request.match_info["id"])
        category = request.query.get("category", "")
        if not category:
            raise FinesseError(400, "Parameter Missing", "category is required", "category")
        return xml(sim.reason_codes_xml(category))

    async def wrap_up_reasons(request: web.Request) -> web.Response:
        sim.visible_user(actor(request), request.match_info["id"])
        return xml(sim.wrap_up_reasons_xml())

    async def get_dialogs(request: web.Request) -> web.Response:
        return xml(sim.dialogs_xml(sim.visible_user(actor(request), request.match_info["id"])))

    async def post_dialog(request: web.Request) -> web.Response:
        who = actor(request)
        fields = await body(request, "Dialog")
        action = str(fields.get("requestedAction", "")).upper()
        if action != "MAKE_CALL":
            raise FinesseError(400, "Invalid Input", f"Unsupported requestedAction {action or '(none)'}",
                               "requestedAction")
        media = fields.get("mediaProperties")
        variables = media.get("callvariables") if isinstance(media, dict) else None
        if isinstance(media, dict) and sim.uccx:
            raise FinesseError(400, "Invalid Input", "mediaProperties are not supported on UCCX", "mediaProperties")
        sim.make_call(who, request.match_info["id"], str(fields.get("fromAddress", "")),
                      str(fields.get("toAddress", "")), variables, request.headers.get("requestId", ""))
        return accepted()

    async def get_dialog(request: web.Request) -> web.Response:
        dialog, _ = sim.dialog_for(actor(request), request.match_info["id"])
        return xml(sim.dialog_xml(dialog))

    async def put_dialog(request: web.Request) -> web.Response:
        who = actor(request)
        fields = await body(request, "Dialog")
        sim.dialog_action(who, request.match_info["id"], fields, request.headers.get("requestId", ""))
        return accepted()

    async def team_users(request: web.Request) -> web.Response:
        return xml(sim.team_users_xml(actor(request), request.match_info["id"]))

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/finesse/api/SystemInfo", system_info)
    app.router.add_get("/finesse/api/User/{id}", get_user)
    app.router.add_put("/finesse/api/User/{id}", put_user)
    app.router.add_get("/finesse/api/User/{id}/ReasonCodes", reason_codes)
    app.router.add_get("/finesse/api/User/{id}/WrapUpReasons", wrap_up_reasons)
    app.router.add_get("/finesse/api/User/{id}/Dialogs", get_dialogs)
    app.router.add_post("/finesse/api/User/{id}/Dialogs", post_dialog)
    app.router.add_get("/finesse/api/Dialog/{id}", get_dialog)
    app.router.add_put("/finesse/api/Dialog/{id}", put_dialog)
    app.router.add_get("/finesse/api/Team/{id}/Users", team_users)
    return app
