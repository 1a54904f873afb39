"""The simulator's own control plane (docs/simulator.md): JSON under /sim/api and the console at /sim.

It answers whatever the emulated nodes' status: it is not part of the emulated Finesse.
"""
from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import flood as floods
from .calls import ControlError
from .rest import read_body

if TYPE_CHECKING:
    from .server import Simulator

NODE_STATUS = ("IN_SERVICE", "OUT_OF_SERVICE")
UP_DOWN = ("up", "down")


def problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await read_body(request)
    if raw is None:
        raise ControlError(400, "body is larger than 64 KiB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ControlError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ControlError(400, "body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, (str, int)):
        raise ControlError(400, f"{key}: must be a string")
    return str(value)


def _count(data: dict[str, Any], key: str, most: int) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ControlError(400, f"{key}: must be a whole number from 0 to {most}")
    return value


def control_routes(app: web.Application, simulator: "Simulator") -> None:
    def sim() -> Any:
        assert simulator.sim is not None
        return simulator.sim

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ControlError as exc:
            return problem(exc.status, str(exc))

    async def ring(request: web.Request) -> web.Response:
        data = await _json(request)
        variables = data.get("variables") or {}
        if not isinstance(variables, dict):
            raise ControlError(400, "variables: must be an object of name: value")
        dialog = sim().ring(to=_text(data, "to"), ani=_text(data, "from"), dnis=_text(data, "dnis"),
                            queue=_text(data, "queue"), variables=variables, call_type=_text(data, "callType"))
        return web.json_response({"dialogId": dialog.id, "queued": dialog.queued}, status=201)

    async def hangup(request: web.Request) -> web.Response:
        return web.json_response(sim().hangup(request.match_info["id"]).as_json())

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(sim().far_end_answer(request.match_info["id"]).as_json())

    async def dialog_ids(request: web.Request) -> web.Response:
        data = await _json(request)
        value = data.get("next")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ControlError(400, "next: must be a whole number, the id of the next dialog")
        sim().set_next_dialog_id(value)
        return web.json_response({"next": str(value)})

    async def node(request: web.Request) -> web.Response:
        target = simulator.node(request.match_info["name"])
        if target is None:
            raise ControlError(404, "node must be primary or secondary")
        data = await _json(request)
        status, xmpp, webapp = data.get("status"), data.get("xmpp"), data.get("webapp")
        if status is not None and status not in NODE_STATUS:
            raise ControlError(400, f"status: must be one of {NODE_STATUS}")
        for key, value in (("xmpp", xmpp), ("webapp", webapp)):
            if value is not None and value not in UP_DOWN:
                raise ControlError(400, f"{key}: must be up or down")
        await simulator.set_node(target, status, xmpp, webapp)
        return web.json_response(target.as_json())

    async def flood(request: web.Request) -> web.Response:
        data = await _json(request)
        user = _text(data, "to")
        size, depth = _count(data, "bytes", floods.MAX_BYTES), _count(data, "depth", floods.MAX_ELEMENTS)
        elements = _count(data, "elements", floods.MAX_ELEMENTS)
        timeout = _count(data, "timeout", 600) or 30
        if not user or [size > 0, depth > 0, elements > 0].count(True) != 1:
            raise ControlError(400, "give to and one of bytes, depth or elements")
        done = await asyncio.gather(*(floods.flood(n.xmpp, user, size=size, depth=depth, elements=elements,
                                                   timeout=timeout)
                                      for n in simulator.nodes if n.xmpp is not None and n.xmpp.listening))
        return web.json_response({"sessions": [s for node in done for s in node]})

    async def state(request: web.Request) -> web.Response:
        body = sim().snapshot()
        body["nodes"] = [n.as_json() for n in simulator.nodes]
        return web.json_response(body)

    async def certificate(request: web.Request) -> web.Response:
        if not simulator.cert_path:
            raise ControlError(404, "XMPP TLS is off (start with --tls)")
        with open(simulator.cert_path, encoding="ascii") as handle:
            return web.Response(text=handle.read(), content_type="application/x-pem-file")

    async def console(request: web.Request) -> web.Response:
        page = resources.files("simulator").joinpath("console.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    sub = web.Application(middlewares=[errors])
    sub.router.add_get("", console)
    sub.router.add_get("/", console)
    sub.router.add_post("/api/calls", ring)
    sub.router.add_post("/api/calls/{id}/hangup", hangup)
    sub.router.add_post("/api/calls/{id}/answer", answer)
    sub.router.add_post("/api/dialog-ids", dialog_ids)
    sub.router.add_post("/api/nodes/{name}", node)
    sub.router.add_post("/api/xmpp/flood", flood)
    sub.router.add_get("/api/state", state)
    sub.router.add_get("/api/tls", certificate)
    app.add_subapp("/sim", sub)
