"""REST robustness: hostile or malformed XML bodies, unknown actions, dialog access, requestId."""
from __future__ import annotations

import base64
import socket

import pytest
import requests
from defusedxml import ElementTree as SafeET

from .conftest import PASSWORD
from .harness import WAIT

USER = "/finesse/api/User/1001"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<User><state>&lol9;</state></User>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE User [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<User><state>&xxe;</state></User>"""

PADDED = b"<User><state>READY</state><note>" + b"x" * (64 * 1024) + b"</note></User>"

BAD_BODIES = {
    "malformed": b"<User><state>READY</state>",
    "not xml": b"state=READY",
    "billion laughs": BILLION_LAUGHS,
    "external entity": EXTERNAL_ENTITY,
    "wrong root": b"<Dialog><state>READY</state></Dialog>",
    "oversized": PADDED,
    "empty": b"",
    "bad encoding": b"<User><state>\xff\xfe</state></User>",
}


def api_error(response: requests.Response, status: int, error_type: str) -> SafeET.Element:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/xml")
    doc = SafeET.fromstring(response.content)
    assert doc.tag == "ApiErrors"
    assert doc.findtext("ApiError/ErrorType") == error_type, response.text
    return doc.find("ApiError")


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_xml_bodies_are_400_and_the_simulator_keeps_serving(h, name):
    rest, xmpp = h.agent("1001")
    response = rest.request("PUT", USER, BAD_BODIES[name])
    error = api_error(response, 400, "Invalid Input")
    assert "root:" not in (error.findtext("ErrorMessage") or "")  # no file contents leak back
    # Nothing changed and the node still serves, on the same session too.
    assert rest.me().findtext("state") == "NOT_READY"
    assert rest.state("READY").status_code == 202
    assert xmpp.next().data.findtext("state") == "READY"


def test_bad_dialog_bodies_are_400(h):
    rest, _ = h.agent("1001")
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    for raw in (BILLION_LAUGHS.replace(b"User", b"Dialog"), b"<Dialog><requestedAction>", PADDED):
        response = rest.request("PUT", f"/finesse/api/Dialog/{dialog_id}", raw)
        api_error(response, 400, "Invalid Input")
    response = rest.request("POST", f"{USER}/Dialogs", EXTERNAL_ENTITY)
    api_error(response, 400, "Invalid Input")
    assert rest.action(dialog_id, "ANSWER", "71001").status_code == 202


def test_a_body_arriving_in_pieces_is_read_whole(h):
    """A body split across TCP segments must not be cut at the first segment."""
    h.agent("1001")
    body = b"<User><state>READY</state></User>"
    credentials = base64.b64encode(f"1001:{PASSWORD}".encode()).decode()
    head = (f"PUT {USER} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    port = h.simulator.primary.rest_port
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(head + body[:10])
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # the server is still waiting for the rest
            sock.recv(1024)
        sock.settimeout(WAIT)
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 202"), reply
    assert h.control.agent("1001")["state"] == "READY"


def test_a_large_valid_body_under_the_limit_is_accepted(h):
    rest, xmpp = h.agent("1001")
    body = "<User><state>READY</state><note>" + "x" * (60 * 1024) + "</note></User>"
    assert rest.request("PUT", USER, body).status_code == 202
    assert xmpp.next().data.findtext("state") == "READY"


@pytest.mark.parametrize("action", ["FLY", "MAKE_CALL", "__init__", ""])
def test_unknown_requested_action_is_400(h, action):
    rest, _ = h.agent("1001")
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    response = rest.action(dialog_id, action, "71001")
    expected = "Parameter Missing" if action == "" else "Invalid Input"
    api_error(response, 400, expected)
    assert rest.action(dialog_id, "ANSWER", "71001").status_code == 202


def test_post_dialog_needs_make_call(h):
    rest, _ = h.agent("1001")
    body = "<Dialog><requestedAction>ANSWER</requestedAction><toAddress>5000</toAddress></Dialog>"
    error = api_error(rest.request("POST", f"{USER}/Dialogs", body), 400, "Invalid Input")
    assert error.findtext("ErrorData") == "requestedAction"


def test_dialog_access(h):
    rest, _ = h.agent("1001")
    stranger, _ = h.agent("1002")
    dialog_id = h.control.ring(to="1001", ani="4155550100")
    assert rest.xml(f"/finesse/api/Dialog/{dialog_id}").findtext("id") == dialog_id

    error = api_error(stranger.request("GET", f"/finesse/api/Dialog/{dialog_id}"), 401,
                      "Invalid Authorization User Specified")
    assert error.findtext("ErrorData") == "1002"
    api_error(stranger.action(dialog_id, "ANSWER", "71002"), 401, "Invalid Authorization User Specified")

    error = api_error(rest.request("GET", "/finesse/api/Dialog/99999999"), 404, "Dialog Not Found")
    assert error.findtext("ErrorData") == "99999999"
    api_error(rest.action("99999999", "ANSWER", "71001"), 404, "Dialog Not Found")


def test_request_id_is_echoed_on_every_kind_of_response(h):
    rest, _ = h.agent("1001")
    cases = [
        ("GET", USER, None, 200),
        ("PUT", USER, "<User><state>READY</state></User>", 202),
        ("PUT", USER, "<User><state>NOPE</state></User>", 400),
        ("PUT", USER, "<User>", 400),
        ("GET", "/finesse/api/User/1002", None, 401),
        ("GET", "/finesse/api/Dialog/1", None, 404),
    ]
    for n, (method, path, body, status) in enumerate(cases):
        response = rest.request(method, path, body, headers={"requestId": f"rq-{n}"})
        assert response.status_code == status, (path, response.text)
        assert response.headers.get("requestId") == f"rq-{n}"
    response = rest.request("GET", USER)
    assert "requestId" not in response.headers

    h.control.node("primary", status="OUT_OF_SERVICE")
    response = rest.request("GET", USER, headers={"requestId": "rq-down"})
    assert response.status_code == 503 and response.headers.get("requestId") == "rq-down"


def test_unknown_paths_and_methods_answer_api_errors(h):
    rest = h.rest("1001")
    response = rest.request("GET", "/finesse/api/Nothing/here", headers={"requestId": "rq-404"})
    api_error(response, 404, "Not Found")
    assert response.headers.get("requestId") == "rq-404"
    api_error(rest.request("DELETE", USER), 405, "Method Not Allowed")
