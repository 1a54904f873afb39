"""Finesse gadgets (docs/gadgets.md): OpenSocial XML rendered through Jinja.

Each gadget (``gadgets/<name>.xml``) is a thin shell: it loads Finesse's JS library from the
Finesse host (``/desktop/assets/js/...``, relative: the Finesse container serves the gadget), reads
the agent's identity from ``finesse.gadget.Config`` and starts ``cti-toolbar.js`` from this server
in gadget mode, which signs in over the same WebSocket protocol the CRM toolbar uses.

- ``GET /gadgets/<name>.xml``: the gadget, ``application/xml``. Its absolute URLs (the toolbar,
  its stylesheet, the WebSocket, the thumbnail) start with ``PUBLIC_URL`` when set, else with the
  host the request came to.
- ``GET /gadgets/icon.svg``: the thumbnail.
- ``GET /gadgets/preview/<name>``: the gadget outside Finesse, in a small stand-in container
  (``templates/gadget_preview.html``): a sign-in form fills ``finesse.gadget.Config`` in memory.
- ``GET /gadgets/preview/<name>/frame``: what the container's iframe loads: the stand-ins for
  ``gadgets.*`` and ``finesse.*`` (``templates/gadget_frame.html``), then the gadget's own
  ``<Content>``, taken from the rendered XML (without the Finesse library's script tags).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from defusedxml import ElementTree
from flask import Blueprint, Flask, Response, abort, current_app, render_template, request, send_from_directory, url_for

if TYPE_CHECKING:
    from .service import Bridge

FOLDER = Path(__file__).resolve().parent.parent / "gadgets"

GADGETS: dict[str, dict[str, str]] = {
    "screenpop": {"title": "Screen pop",
                  "description": "Shows the CRM page a screen-pop rule with target iframe picks for the "
                                 "agent's call, and the recent pops (CTI bridge)."},
    "customer": {"title": "Customer",
                 "description": "The caller's profile, the agent's earlier calls with that number and the "
                                "current call's data (CTI bridge)."},
}
"""Every gadget: ``gadgets/<name>.xml``, its title and description (ModulePrefs)."""

# <script src="/desktop/assets/js/..."></script>: the Finesse library, served by the Finesse host.
FINESSE_SCRIPT = re.compile(r'<script\s+src="/desktop/assets/js/[^"]*"\s*>\s*</script>\s*')


def public_url(endpoint: str, **values: Any) -> str:
    """An absolute URL: ``PUBLIC_URL`` + the route's path when set, else the request's own host."""
    base = current_app.config.get("PUBLIC_URL")
    if not base:
        return url_for(endpoint, _external=True, **values)
    path = url_for(endpoint, **values)
    root = request.script_root
    if root and path.startswith(root):
        path = path[len(root):]
    return str(base).rstrip("/") + path


def websocket_url() -> str:
    """``ws(s)://.../rpc`` on the same host and path as the other URLs (wss when they are https)."""
    if "rpc_socket" in current_app.view_functions:  # a WebSocket rule always builds as ws:// or wss:// (werkzeug)
        own = url_for("rpc_socket", _external=True)
    else:
        own = f"{'wss' if request.scheme == 'https' else 'ws'}://{request.host}{request.script_root}/rpc"
    base = current_app.config.get("PUBLIC_URL")
    if not base:
        return own
    path = urlsplit(own).path
    if request.script_root and path.startswith(request.script_root):
        path = path[len(request.script_root):]
    return re.sub(r"^http", "ws", str(base).rstrip("/")) + path


def pops_option() -> str:
    """The screen-pop gadget's ``?pops=``: ``iframe`` (default) or ``all`` (also tab and window pops)."""
    pops = request.args.get("pops", "iframe")
    if pops not in ("iframe", "all"):
        abort(400, "pops must be iframe or all")
    return pops


def render_gadget(name: str) -> str:
    """``gadgets/<name>.xml`` rendered for this request (404 for a gadget that does not exist)."""
    if name not in GADGETS:
        abort(404)
    pops = pops_option() if name == "screenpop" else "iframe"
    return render_template(
        f"{name}.xml", name=name, gadget=GADGETS[name], pops=pops,
        self_url=public_url("gadgets.gadget", name=name, **({"pops": pops} if pops != "iframe" else {})),
        toolbar_js=public_url("static", filename="cti-toolbar.js"),
        stylesheet=public_url("static", filename="cti-toolbar.css"),
        websocket_url=websocket_url(),
        thumbnail=public_url("gadgets.icon"))


def gadget_content(xml: str) -> str:
    """The HTML inside ``<Content type="html">`` of a gadget's XML (parsed with defusedxml)."""
    root = ElementTree.fromstring(xml.encode("utf-8"))
    content = root.find("Content")
    if content is None or content.get("type") != "html":
        raise ValueError('the gadget has no <Content type="html">')
    return content.text or ""


def init_app(app: Flask, bridge: Bridge) -> None:
    """Serve the gadgets at ``/gadgets/<name>.xml`` and their previews at ``/gadgets/preview/<name>``."""
    gadgets = Blueprint("gadgets", __name__, url_prefix="/gadgets", template_folder=str(FOLDER))

    @gadgets.get("/<name>.xml")
    def gadget(name: str) -> Response:
        response = Response(render_gadget(name), mimetype="application/xml")
        response.headers["Cache-Control"] = "no-cache"  # Finesse's Shindig caches anyway (docs/gadgets.md)
        return response

    @gadgets.get("/icon.svg")
    def icon() -> Response:
        return send_from_directory(FOLDER, "icon.svg", mimetype="image/svg+xml", max_age=3600)

    @gadgets.get("/preview/<name>")
    def preview(name: str) -> Response:
        if name not in GADGETS:
            abort(404)
        pops = pops_option() if name == "screenpop" else "iframe"
        extra: dict[str, Any] = {"pops": pops} if pops != "iframe" else {}
        page = render_template("gadget_preview.html", name=name, gadget=GADGETS[name], gadgets=GADGETS, pops=pops,
                               frame_url=url_for("gadgets.preview_frame", name=name, **extra),
                               gadget_xml=url_for("gadgets.gadget", name=name, **extra),
                               simulator=bool(current_app.config.get("DEMO_SIMULATOR_CONSOLE")))
        return _private(Response(page, mimetype="text/html"))

    @gadgets.get("/preview/<name>/frame")
    def preview_frame(name: str) -> Response:
        content = FINESSE_SCRIPT.sub("", gadget_content(render_gadget(name)))
        page = render_template("gadget_frame.html", name=name, gadget=GADGETS[name], content=content)
        response = _private(Response(page, mimetype="text/html"))
        response.headers["X-Frame-Options"] = "SAMEORIGIN"  # only inside its own preview container
        return response

    app.register_blueprint(gadgets)


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
