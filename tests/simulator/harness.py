"""Readable verbs for simulator tests: an agent's REST calls, its XMPP notifications, the control API.

Everything goes over loopback to a real simulator: requests for REST, slixmpp for XMPP.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from xml.etree import ElementTree as ET
from xml.etree.ElementTree import Element

import requests
from defusedxml import ElementTree as SafeET
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PUBSUB_EVENT = "{http://jabber.org/protocol/pubsub#event}"
PUBSUB = "{http://jabber.org/protocol/pubsub}"
PING = "{urn:xmpp:ping}"
WAIT = 5.0


class AsyncThread:
    """One asyncio loop in a thread, shared by every XMPP client of a test session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-xmpp", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@dataclass
class Notification:
    node: str
    item_id: str
    update: Element

    @property
    def event(self) -> str:
        return (self.update.findtext("event") or "").upper()

    @property
    def source(self) -> str:
        return self.update.findtext("source") or ""

    @property
    def request_id(self) -> str:
        return self.update.findtext("requestId") or ""

    @property
    def data(self) -> Element | None:
        data = self.update.find("data")
        return data[0] if data is not None and len(data) else None

    @property
    def kind(self) -> str:
        """user, dialog, dialogs, SystemInfo, apiErrors..."""
        return self.data.tag if self.data is not None else ""

    @property
    def dialog(self) -> Element:
        assert self.data is not None
        return self.data if self.data.tag == "dialog" else self.data.find("Dialog")  # type: ignore[return-value]

    def __repr__(self) -> str:
        state = ""
        if self.kind == "user":
            state = self.data.findtext("state") or ""  # type: ignore[union-attr]
        elif self.kind in ("dialog", "dialogs"):
            state = self.dialog.findtext("state") or ""
        return f"<{self.event} {self.kind} {state} {self.source}>"


class XmppAgent:
    """An agent's notification connection; notifications land in a queue to wait on."""

    def __init__(self, loop: AsyncThread, user: str, password: str, port: int, domain: str,
                 resource: str | None = None, ca_file: str | None = None) -> None:
        self.loop, self.user, self.port, self.domain = loop, user, port, domain
        self.disconnected = threading.Event()  # set when the connection goes, whoever closed it
        self.jid = f"{user}@{domain}/{resource or 'test-' + uuid.uuid4().hex[:8]}"
        self.notifications: queue.Queue[Notification] = queue.Queue()
        self.presences: queue.Queue[tuple[str, str]] = queue.Queue()
        self.password = password
        self.ca_file = ca_file  # given: STARTTLS, trusting this certificate
        self.client: ClientXMPP | None = None

    def connect(self, expect_failure: bool = False) -> bool:
        return bool(self.loop.run(self._connect()))

    async def _connect(self) -> bool:
        client = ClientXMPP(self.jid, self.password)
        client.enable_direct_tls = False
        client.enable_starttls = self.ca_file is not None
        client.enable_plaintext = self.ca_file is None
        if self.ca_file is not None:
            client.ca_certs = self.ca_file
        client.register_plugin("feature_mechanisms")
        client.plugin["feature_mechanisms"].unencrypted_plain = True
        client.register_plugin("xep_0199")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def session_start(_: Any) -> None:
            client.send_presence()
            if not done.done():
                done.set_result(True)

        def failed(_: Any) -> None:
            if not done.done():
                done.set_result(False)

        def on_message(msg: Any) -> None:
            items = msg.xml.find(f"{PUBSUB_EVENT}event/{PUBSUB_EVENT}items")
            if items is None:
                return
            for item in items.findall(f"{PUBSUB_EVENT}item"):
                text = item.findtext(f"{PUBSUB}notification") or ""
                self.notifications.put(Notification(items.get("node", ""), item.get("id", ""),
                                                    SafeET.fromstring(text)))

        client.add_event_handler("session_start", session_start)
        client.add_event_handler("failed_auth", failed)
        client.add_event_handler("disconnected", lambda _: self.disconnected.set())
        client.add_event_handler("presence", lambda p: self.presences.put((str(p["from"]), p["type"])))
        client.register_handler(Callback("finesse", MatchXPath(
            f"{{jabber:client}}message/{PUBSUB_EVENT}event"), on_message))
        self.client = client
        self.disconnected.clear()
        client.connect("127.0.0.1", self.port)
        return await asyncio.wait_for(done, WAIT)

    def disconnect(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None

            async def close() -> None:
                if client.transport is None:  # already gone: the server closed it, or sign-in failed
                    client.cancel_connection_attempt()
                    return
                client.disconnect(wait=0)
                await client.disconnected
            try:
                self.loop.run(close())
            except (TimeoutError, asyncio.TimeoutError):
                client.abort()

    def iq(self, kind: str, to: str, payload: Element) -> Element:
        """Send an iq (get/set) carrying ``payload``; return the answer, result or error."""
        client = self.client
        assert client is not None, "not connected"

        async def send() -> Element:
            iq = client.make_iq_get(ito=to) if kind == "get" else client.make_iq_set(ito=to)
            iq.appendxml(payload)
            try:
                answer = await iq.send(timeout=WAIT)
            except IqError as exc:
                return exc.iq.xml  # type: ignore[no-any-return]
            return answer.xml  # type: ignore[no-any-return]
        return self.loop.run(send())  # type: ignore[no-any-return]

    def pubsub(self, op: str, node: str) -> Element:
        """XEP-0060 subscribe/unsubscribe with this connection's full JID; the iq answer."""
        assert self.client is not None, "not connected"
        ps = ET.Element(f"{PUBSUB}pubsub")
        ET.SubElement(ps, f"{PUBSUB}{op}", node=node, jid=str(self.client.boundjid.full))
        return self.iq("set", f"pubsub.{self.domain}", ps)

    def subscribe(self, node: str) -> Element:
        answer = self.pubsub("subscribe", node)
        assert answer.get("type") == "result", ET.tostring(answer, encoding="unicode")
        return answer

    def sync(self) -> None:
        """A ping round trip: whatever the server sent this client before it has been received."""
        answer = self.iq("get", self.domain, ET.Element(f"{PING}ping"))
        assert answer.get("type") == "result", ET.tostring(answer, encoding="unicode")

    def wait_disconnected(self, timeout: float = WAIT) -> None:
        assert self.disconnected.wait(timeout), f"{self.user}: still connected after {timeout} s"

    def next(self, timeout: float = WAIT) -> Notification:
        try:
            return self.notifications.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.user}: no notification within {timeout} s") from None

    def wait(self, match: Callable[[Notification], bool], timeout: float = WAIT) -> Notification:
        """The first notification that matches, skipping others."""
        seen = []
        while True:
            try:
                note = self.notifications.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{self.user}: no matching notification; saw {seen}") from None
            if match(note):
                return note
            seen.append(note)

    def wait_user(self, state: str, timeout: float = WAIT) -> Element:
        note = self.wait(lambda n: n.kind == "user" and n.data.findtext("state") == state, timeout)  # type: ignore[union-attr]
        assert note.data is not None
        return note.data

    def wait_dialog(self, event: str, state: str | None = None, timeout: float = WAIT) -> Element:
        note = self.wait(lambda n: n.event == event and n.kind in ("dialog", "dialogs")
                         and (state is None or n.dialog.findtext("state") == state), timeout)
        return note.dialog

    def drain(self) -> list[Notification]:
        out = []
        while not self.notifications.empty():
            out.append(self.notifications.get_nowait())
        return out


class Rest:
    """One user's Finesse REST calls (Basic auth), returning responses and parsed XML."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base, self.user = base, user
        self.http = requests.Session()
        self.http.auth = (user, password)

    def request(self, method: str, path: str, body: str | None = None, **kw: Any) -> requests.Response:
        headers = {"Content-Type": "application/xml"} if body is not None else {}
        headers.update(kw.pop("headers", {}))
        return self.http.request(method, self.base + path, data=body, headers=headers, timeout=WAIT, **kw)

    def xml(self, path: str) -> Element:
        response = self.request("GET", path)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/xml")
        return SafeET.fromstring(response.content)

    def put_user(self, state: str, **fields: str) -> requests.Response:
        extra = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
        return self.request("PUT", f"/finesse/api/User/{self.user}", f"<User><state>{state}</state>{extra}</User>")

    def login(self, extension: str) -> None:
        response = self.put_user("LOGIN", extension=extension)
        assert response.status_code == 202, response.text

    def state(self, state: str, reason: int | None = None) -> requests.Response:
        return self.put_user(state, **({"reasonCodeId": str(reason)} if reason is not None else {}))

    def user(self) -> Element:
        return self.xml(f"/finesse/api/User/{self.user}")

    def me(self) -> Element:
        """GET of the user's own User document (``user()`` is shadowed by the ``user`` attribute)."""
        return self.xml(f"/finesse/api/User/{self.user}")

    def dialogs(self) -> list[Element]:
        return list(self.xml(f"/finesse/api/User/{self.user}/Dialogs"))

    def make_call(self, from_address: str, to: str, variables: dict[str, str] | None = None) -> requests.Response:
        media = ""
        if variables:
            items = "".join(f"<CallVariable><name>{k}</name><value>{v}</value></CallVariable>" for k, v in variables.items())
            media = f"<mediaProperties><callvariables>{items}</callvariables></mediaProperties>"
        body = (f"<Dialog><requestedAction>MAKE_CALL</requestedAction><fromAddress>{from_address}</fromAddress>"
                f"<toAddress>{to}</toAddress>{media}</Dialog>")
        return self.request("POST", f"/finesse/api/User/{self.user}/Dialogs", body)

    def action(self, dialog_id: str, action: str, target: str | None = None, inner: str = "",
               **headers: str) -> requests.Response:
        target_xml = f"<targetMediaAddress>{target}</targetMediaAddress>" if target else ""
        body = f"<Dialog><requestedAction>{action}</requestedAction>{target_xml}{inner}</Dialog>"
        return self.request("PUT", f"/finesse/api/Dialog/{dialog_id}", body, headers=headers)


class Control:
    """The simulator's control API."""

    def __init__(self, base: str) -> None:
        self.base = base + "/sim/api"

    def ring(self, **body: Any) -> str:
        if "ani" in body:
            body["from"] = body.pop("ani")
        response = requests.post(self.base + "/calls", json=body, timeout=WAIT)
        assert response.status_code == 201, response.text
        return str(response.json()["dialogId"])

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.base + path, json=body, timeout=WAIT)

    def hangup(self, dialog_id: str) -> None:
        response = self.post(f"/calls/{dialog_id}/hangup")
        assert response.status_code == 200, response.text

    def answer(self, dialog_id: str) -> None:
        response = self.post(f"/calls/{dialog_id}/answer")
        assert response.status_code == 200, response.text

    def node(self, name: str, **body: str) -> dict[str, Any]:
        response = self.post(f"/nodes/{name}", body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def state(self) -> dict[str, Any]:
        return dict(requests.get(self.base + "/state", timeout=WAIT).json())

    def agent(self, agent_id: str) -> dict[str, Any]:
        return next(a for a in self.state()["agents"] if a["id"] == agent_id)


def port_refuses(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing accepts TCP connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=WAIT):
            return False
    except ConnectionRefusedError:
        return True


def poll(check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


def participant(dialog: Element, media_address: str) -> Element:
    for party in dialog.iter("Participant"):
        if party.findtext("mediaAddress") == media_address:
            return party
    raise AssertionError(f"no participant {media_address} in dialog {dialog.findtext('id')}")


def actions(dialog: Element, media_address: str) -> list[str]:
    return [a.text or "" for a in participant(dialog, media_address).iter("action")]


def variables(dialog: Element) -> dict[str, str]:
    return {cv.findtext("name") or "": cv.findtext("value") or "" for cv in dialog.iter("CallVariable")}
