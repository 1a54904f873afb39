"""XMPP interoperability: NotifyHub against a real XMPP server (Prosody), not only our simulator.

A throwaway Prosody runs in the foreground from tmp_path on a free loopback port (testing-notes.md).
A publisher, signed in as the ``finesse`` user (a server admin, so it may create nodes and subscribe
others), creates the Finesse-named node, subscribes the agent's full JID and publishes a User
``<Update>`` as escaped text inside ``<notification>`` (docs/finesse.md 9.4, 9.6).

Without ``prosody`` installed the tests skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from xml.etree import ElementTree as ET

import pytest
from slixmpp import ClientXMPP

from bridge.finesse import xmppclient
from bridge.finesse.model import Update
from bridge.finesse.notify import NotifyHub
from simulator.tls import make_certificate

DOMAIN = "finesse.test"
PUBSUB = f"pubsub.{DOMAIN}"
PASSWORD = "prosody-pass"
NODE = "/finesse/api/User/1001"
WAIT = 10.0
USER_UPDATE = ("<Update><data><user><loginId>1001</loginId><extension>71001</extension><state>NOT_READY</state>"
               "<reasonCodeId>-1</reasonCodeId><firstName>Mia</firstName><lastName>Brown</lastName></user></data>"
               "<event>PUT</event><requestId>br-login-1</requestId><source>/finesse/api/User/1001</source></Update>")

CONFIG = """
run_as_root = true
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
admin_socket = "{root}/admin.sock"
certificates = "{root}/certs"
log = {{ info = "{root}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
network_backend = "epoll"
admins = {{ "finesse@{domain}" }}
modules_enabled = {{ "disco"; "roster"; "saslauth"; "ping"; "posix"; {tls_module} }}
modules_disabled = {{ "s2s"; "limits"; "smacks"; "carbons"; "offline"; {no_tls_module} }}
c2s_require_encryption = {require_tls}
allow_unencrypted_plain_auth = {plain_in_clear}
authentication = "internal_plain"
default_storage = "memory"
storage = {{ accounts = "internal" }}
{ssl}
VirtualHost "{domain}"
Component "{pubsub}" "pubsub"
"""


class Prosody:
    """A throwaway Prosody in the foreground; stopped by its PID."""

    def __init__(self, root: Path, tls: bool) -> None:
        self.root, self.tls = root, tls
        self.ca_file: str | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (root / "certs").mkdir()
        ssl_line = ""
        if tls:  # self-signed, with subjectAltName for the host and the pubsub component
            cert, key = make_certificate([DOMAIN, PUBSUB], str(root / "certs"))
            self.ca_file = cert
            ssl_line = f'ssl = {{ certificate = "{cert}"; key = "{key}"; }}'
        self.config = root / "prosody.cfg.lua"
        self.config.write_text(CONFIG.format(
            root=root, port=self.port, domain=DOMAIN, pubsub=PUBSUB, ssl=ssl_line,
            tls_module='"tls";' if tls else "", no_tls_module="" if tls else '"tls";',
            require_tls="true" if tls else "false", plain_in_clear="false" if tls else "true"))
        self.proc: subprocess.Popen[bytes] | None = None

    def add_user(self, user: str, password: str) -> None:
        accounts = self.root / "data" / DOMAIN.replace(".", "%2e") / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        (accounts / f"{user}.dat").write_text(f'return {{ ["password"] = "{password}"; }};\n')

    def start(self) -> None:
        output = open(self.root / "stdout.log", "wb")
        with output:
            self.proc = subprocess.Popen(["prosody", "--config", str(self.config), "-F"], cwd=self.root,
                                         stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while True:  # an outside process: poll its port, with a deadline
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"prosody did not listen on {self.port}:\n{self.logs()}")
                time.sleep(0.02)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.root / "stdout.log", self.root / "prosody.log")
                       if p.exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)


class Publisher:
    """The ``finesse`` user with XEP-0060, in its own asyncio thread: creates, subscribes, publishes."""

    def __init__(self, port: int, ca_file: str | None) -> None:
        self.port, self.ca_file = port, ca_file
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-publisher", daemon=True)
        self.thread.start()
        self.client: ClientXMPP | None = None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    async def _connect(self) -> None:
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        client = ClientXMPP(f"finesse@{DOMAIN}/publisher", PASSWORD, ssl_context=context)
        client.enable_direct_tls = False
        client.enable_starttls = self.ca_file is not None
        client.enable_plaintext = self.ca_file is None
        client.plugin["feature_mechanisms"].unencrypted_plain = True
        client.register_plugin("xep_0060")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: BaseException | None) -> None:
            if started.done():
                return
            if error is None:
                started.set_result(None)
            else:
                started.set_exception(error)
        client.add_event_handler("session_start", lambda _: settle(None))
        client.add_event_handler("failed_all_auth", lambda _: settle(AssertionError("publisher sign-in refused")))
        self.client = client
        client.connect("127.0.0.1", self.port)
        await started

    def connect(self) -> None:
        self.run(self._connect())

    def create_subscribe_publish(self, subscriber: str, update: str) -> None:
        async def go() -> None:
            assert self.client is not None
            pubsub = self.client.plugin["xep_0060"]
            await pubsub.create_node(PUBSUB, NODE)
            await pubsub.subscribe(PUBSUB, NODE, subscribee=subscriber)
            notification = ET.Element("{http://jabber.org/protocol/pubsub}notification")
            notification.text = update  # serialised escaped, as Finesse sends it
            await pubsub.publish(PUBSUB, NODE, payload=notification)
        self.run(go())

    def close(self) -> None:
        async def drain() -> None:
            if self.client is not None and self.client.transport is not None:
                self.client.disconnect(wait=1)
                await self.client.disconnected
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


def require_prosody() -> None:
    if shutil.which("prosody") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prosody is not installed; CI must run the XMPP interoperability test "
                        "(apt-get install -y prosody)")
        pytest.skip("prosody is not installed (apt-get install -y prosody)")


@contextlib.contextmanager
def running_prosody(root: Path, tls: bool) -> Iterator[Prosody]:
    server = Prosody(root, tls=tls)
    server.add_user("1001", PASSWORD)
    server.add_user("finesse", PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["plaintext", "starttls"])
def test_notify_hub_receives_a_finesse_user_update_from_prosody(tmp_path: Path, mode: str) -> None:
    require_prosody()
    with running_prosody(tmp_path, tls=mode == "starttls") as prosody:
        receive_an_update(prosody)


def receive_an_update(prosody: Prosody) -> None:
    updates: queue.Queue[tuple[str, Update]] = queue.Queue()
    hub = NotifyHub(ca_bundle=prosody.ca_file, connect_timeout=WAIT).start()
    publisher = Publisher(prosody.port, prosody.ca_file)
    try:
        conn = hub.connect(user="1001", password=PASSWORD, host="127.0.0.1", port=prosody.port, domain=DOMAIN,
                           tls="starttls" if prosody.tls else "none",
                           on_update=lambda node, update: updates.put((node, update)),
                           on_state=lambda kind, state: None)
        assert conn.connected
        # PLAIN in clear on loopback; over TLS slixmpp prefers the SCRAM that Prosody offers.
        mechanism = conn._xmpp.plugin["feature_mechanisms"].mech.name
        assert mechanism.startswith("SCRAM-") if prosody.tls else mechanism == "PLAIN"  # SCRAM: hashlib's PBKDF2
        if prosody.tls:
            assert len(conn._xmpp.transport._ssl_protocol._ssl_buffer) == xmppclient.TLS_READ_BUFFER
        publisher.connect()
        publisher.create_subscribe_publish(conn.jid, USER_UPDATE)
        try:
            node, update = updates.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no notification from prosody:\n{prosody.logs()}") from None
        assert node == NODE and update.kind == "user" and update.event == "PUT"
        assert update.requestId == "br-login-1"
        assert update.user is not None and update.user.id == "1001" and update.user.state == "NOT_READY"
        conn.close()
        assert hub.client_count() == 0
    finally:
        publisher.close()
        hub.stop()
