"""The demo CRM at ``/demo``: a small fake CRM that embeds the toolbar as a partner would.

It is the first thing a CRM developer sees (``make demo``), so the page keeps to what a partner
writes: one ``<script src>`` for ``cti-toolbar.js`` and ``CtiToolbar.init({...})`` in a plain
``<script>``. URLs come from the server (``url_for``, the request's host), never hard-coded.

- ``GET /demo``: contacts (click a number to dial), the contact panel a screen pop opens, the
  pops and the call log (``onCallLog``). ``?layout=panel`` shows the toolbar's panel layout.
- ``GET /demo/contact?number=...``: the same page with that caller's contact open; the demo
  screen-pop rule (``python app.py --simulator``) points here.
"""
from __future__ import annotations

import re
from typing import Any

from flask import Flask, abort, current_app, render_template, request, url_for
from werkzeug.routing import BuildError

# Fictional people and numbers (555-01xx is reserved for fiction). Noah Brown is the simulator's
# agent 1002 on extension 71002, so the demo can call agent to agent.
CONTACTS: list[dict[str, Any]] = [
    {"id": "c-1001", "name": "Dana Whitfield", "title": "Procurement lead", "company": "Northwind Traders",
     "phone": "+15550102030", "display": "+1 555-010-2030", "email": "dana.whitfield@northwind.example",
     "tier": "Gold", "city": "Seattle, WA",
     "cases": [{"id": "CS-4821", "subject": "Delivery delayed, order 77310", "status": "Open"},
               {"id": "CS-4610", "subject": "Invoice copy requested", "status": "Closed"}]},
    {"id": "c-1002", "name": "Marcus Lee", "title": "IT manager", "company": "Contoso Health",
     "phone": "+15550104477", "display": "+1 555-010-4477", "email": "m.lee@contoso-health.example",
     "tier": "Silver", "city": "Denver, CO",
     "cases": [{"id": "CS-4799", "subject": "Single sign-on fails for new staff", "status": "Waiting"}]},
    {"id": "c-1003", "name": "Priya Raman", "title": "Claims supervisor", "company": "Fabrikam Insurance",
     "phone": "+15550107812", "display": "+1 555-010-7812", "email": "priya.raman@fabrikam.example",
     "tier": "Platinum", "city": "Austin, TX",
     "cases": [{"id": "CS-4830", "subject": "Renewal quote for 2027", "status": "Open"}]},
    {"id": "c-1004", "name": "Jonas Becker", "title": "Owner", "company": "Becker Bikes",
     "phone": "+15550109264", "display": "+1 555-010-9264", "email": "jonas@beckerbikes.example",
     "tier": "Bronze", "city": "Portland, OR", "cases": []},
    {"id": "c-1005", "name": "Elena Petrova", "title": "Office manager", "company": "Tailspin Toys",
     "phone": "+15550105550", "display": "+1 555-010-5550", "email": "elena.petrova@tailspin.example",
     "tier": "Silver", "city": "Chicago, IL",
     "cases": [{"id": "CS-4777", "subject": "Damaged shipment, credit note", "status": "Closed"}]},
    {"id": "c-1006", "name": "Noah Brown", "title": "Support desk (agent 1002)", "company": "Our contact centre",
     "phone": "71002", "display": "ext. 71002", "email": "noah.brown@contact-centre.example",
     "tier": "Internal", "city": "Second floor", "cases": []},
]


def digits(number: str) -> str:
    """Only the digits: ``+1 (555) 010-2030`` -> ``15550102030``."""
    return re.sub(r"\D", "", number or "")


def find_contact(number: str) -> dict[str, Any] | None:
    """The contact with this number; national and E.164 forms match (last ten digits)."""
    wanted = digits(number)
    if not wanted:
        return None  # caller ID withheld
    for contact in CONTACTS:
        have = digits(contact["phone"])
        if have == wanted or (len(wanted) >= 10 and have[-10:] == wanted[-10:]):
            return contact
    return None


def _websocket_url() -> str:
    """``ws(s)://<the host the browser used>/rpc``, so the page works behind any host name."""
    try:  # a WebSocket rule builds as ws:// or wss:// on the request's host (werkzeug)
        return url_for("rpc_socket", _external=True)
    except BuildError:  # the WebSocket route is registered by bridge.ws
        scheme = "wss" if request.scheme == "https" else "ws"
        return f"{scheme}://{request.host}/rpc"


def init_app(app: Flask, bridge: Any) -> None:
    """Serve the demo CRM at ``/demo`` and ``/demo/contact``."""

    def page(number: str | None = None) -> str:
        layout = request.args.get("layout", "bar")
        if layout not in ("bar", "panel"):
            abort(400, "layout must be bar or panel")
        return render_template(
            "demo_crm.html", contacts=CONTACTS, layout=layout, websocket_url=_websocket_url(),
            simulator_console=current_app.config.get("DEMO_SIMULATOR_CONSOLE"),
            number=number, contact=find_contact(number) if number is not None else None)

    @app.get("/demo")
    def demo_crm() -> str:
        return page()

    @app.get("/demo/contact")
    def demo_contact() -> str:
        return page(request.args.get("number", ""))
