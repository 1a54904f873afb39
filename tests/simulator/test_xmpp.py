"""simulator.xmpp against real clients over loopback: slixmpp, and raw sockets for hostile input.

Each test runs one asyncio loop (asyncio.run) holding the server and its clients;
nothing sleeps to synchronise: tests wait on events/stanzas with timeouts.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import re
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from simulator import flood
from simulator.xmpp import XmppServer

DOMAIN = "finesse.local"
PUBSUB = "pubsub.finesse.local"
EVENT = "{http://jabber.org/protocol/pubsub#event}"
NS_PUBSUB = "{http://jabber.org/protocol/pubsub}"
PASSWORDS = {"1001": "pw-1001", "1002": "pw-1002", "2001": "pw-2001"}
WAIT = 5.0
PAYLOAD = ("<Update><data><user><state>READY</state><note>a &amp; b &lt;c&gt; \"q\" 'a' ü\r\n"
           "]]></note></user></data><event>PUT</event></Update>")
STREAM_OPEN = ("<?xml version='1.0'?><stream:stream to='finesse.local' xmlns='jabber:client' "
               "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), timeout)
    asyncio.run(main())


class Presence:
    """Records on_presence calls; lets a test wait for a given one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._changed = asyncio.Event()

    def __call__(self, user: str, available: bool) -> None:
        self.calls.append((user, available))
        self._changed.set()

    async def wait(self, call: tuple[str, bool], count: int = 1) -> None:
        while self.calls.count(call) < count:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), WAIT)


@asynccontextmanager
async def xmpp_server(**kwargs: Any) -> AsyncIterator[tuple[XmppServer, Presence]]:
    presence = Presence()
    options: dict[str, Any] = dict(host="127.0.0.1", port=0, domain=DOMAIN, pubsub_domain=PUBSUB,
                                   authenticate=lambda u, p: PASSWORDS.get(u) == p,
                                   on_presence=presence)
    options.update(kwargs)
    server = XmppServer(**options)
    await server.start()
    try:
        yield server, presence
    finally:
        await server.stop()


class Agent(ClientXMPP):
    """A slixmpp client that queues pubsub notifications and presences it receives."""

    def __init__(self, user: str, password: str, resource: str | None = None,
                 ca_file: Path | None = None) -> None:
        jid = f"{user}@{DOMAIN}" + (f"/{resource}" if resource else "")
        super().__init__(jid, password)
        self.enable_direct_tls = False
        self.enable_starttls = ca_file is not None
        self.enable_plaintext = ca_file is None
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        if ca_file is not None:
            self.ca_certs = ca_file
        self.register_plugin("xep_0060")
        self.register_plugin("xep_0199")
        self.events: asyncio.Queue[Element] = asyncio.Queue()
        self.presences: asyncio.Queue[Element] = asyncio.Queue()
        self.started = asyncio.Event()
        self.auth_failed = asyncio.Event()
        self.gone = asyncio.Event()
        self.stream_errors: list[str] = []
        self.register_handler(Callback("event", MatchXPath(f"{{jabber:client}}message/{EVENT}event"),
                                       lambda msg: self.events.put_nowait(msg.xml)))
        self.register_handler(Callback("presence", MatchXPath("{jabber:client}presence"),
                                       lambda p: self.presences.put_nowait(p.xml)))
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("failed_all_auth", lambda _: self.auth_failed.set())
        self.add_event_handler("disconnected", lambda _: self.gone.set())
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))

    def _session_start(self, _: Any) -> None:
        self.send_presence()
        self.started.set()

    async def notification(self) -> tuple[str, str | None]:
        """Next notification as (node, un-escaped payload)."""
        msg = await asyncio.wait_for(self.events.get(), WAIT)
        assert msg.get("from") == PUBSUB
        assert msg.get("to") == str(self.boundjid.full)
        items = msg.find(f"{EVENT}event/{EVENT}items")
        assert items is not None
        note = items.find(f"{EVENT}item/{NS_PUBSUB}notification")
        assert note is not None
        return items.get("node", ""), note.text

    async def presence(self) -> Element:
        return await asyncio.wait_for(self.presences.get(), WAIT)

    async def close(self) -> None:
        if not self.gone.is_set():
            await asyncio.wait_for(self.disconnect(), WAIT)


@asynccontextmanager
async def agents(server: XmppServer, *specs: tuple[str, str | None]) -> AsyncIterator[list[Agent]]:
    """Signed-in clients with initial presence acknowledged (Finesse presence received)."""
    clients = [Agent(user, PASSWORDS[user], resource) for user, resource in specs]
    try:
        for client in clients:
            client.connect("127.0.0.1", server.port)
            await asyncio.wait_for(client.started.wait(), WAIT)
            finesse = await client.presence()
            assert finesse.get("from") == f"finesse@{DOMAIN}" and finesse.get("type") is None
        yield clients
    finally:
        for client in clients:
            await client.close()


class Raw:
    """A minimal socket client: send text, wait for text."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buffer = reader, writer, ""

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def expect(self, pattern: str) -> re.Match[str]:
        """Wait until the received text matches ``pattern``; consume up to the match."""
        while (m := re.search(pattern, self.buffer, re.S)) is None:
            chunk = await asyncio.wait_for(self.reader.read(65536), WAIT)
            assert chunk, f"EOF waiting for {pattern!r}; got {self.buffer!r}"
            self.buffer += chunk.decode()
        self.buffer = self.buffer[m.end():]
        return m

    async def until_eof(self) -> str:
        while chunk := await asyncio.wait_for(self.reader.read(65536), WAIT):
            self.buffer += chunk.decode(errors="replace")
        return self.buffer

    async def login(self, user: str, resource: str = "raw") -> None:
        self.send(STREAM_OPEN)
        await self.expect("</stream:features>")
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain(user)}</auth>")
        await self.expect("<success")
        self.send(STREAM_OPEN)
        await self.expect("</stream:features>")
        self.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq><presence/>")
        await self.expect(f"<jid>{user}@{DOMAIN}/{resource}</jid>")
        await self.expect("<presence from=\"finesse@")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def plain(user: str, password: str | None = None, authcid: str | None = None) -> str:
    pw = PASSWORDS[user] if password is None else password
    return base64.b64encode(f"\0{authcid or user}\0{pw}".encode()).decode()


# --- sign-in, delivery ---------------------------------------------------------

def test_sign_in_bind_and_publish_roundtrip() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), agents(server, ("1001", "cti-ab12")) as [a]:
            assert str(a.boundjid.full) == "1001@finesse.local/cti-ab12"
            await presence.wait(("1001", True))
            assert server.users() == {"1001"} and server.session_count() == 1
            assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"], item_id="it-1") == 1
            msg = await asyncio.wait_for(a.events.get(), WAIT)
            item = msg.find(f"{EVENT}event/{EVENT}items/{EVENT}item")
            assert item is not None and item.get("id") == "it-1"
            note = item.find(f"{NS_PUBSUB}notification")
            assert note is not None and note.text == PAYLOAD
            assert server.publish_all("/finesse/api/SystemInfo", "<SystemInfo/>") == 1
            assert await a.notification() == ("/finesse/api/SystemInfo", "<SystemInfo/>")
        assert presence.calls == [("1001", True), ("1001", False)]
    run(scenario)


def test_wrong_password_is_refused() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence):
            client = Agent("1001", "wrong")
            client.connect("127.0.0.1", server.port)
            await asyncio.wait_for(client.auth_failed.wait(), WAIT)
            await asyncio.wait_for(client.gone.wait(), WAIT)
            assert not client.started.is_set()
            assert server.users() == set() and server.session_count() == 0 and presence.calls == []
    run(scenario)


def test_two_sessions_of_one_user_both_receive_and_others_do_not() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), \
                agents(server, ("1001", "a"), ("1001", "b"), ("1002", "x")) as [a, b, other]:
            assert presence.calls == [("1001", True), ("1002", True)]
            assert server.publish("/finesse/api/User/1001/Dialogs", PAYLOAD, ["1001", "1001"]) == 2
            assert await a.notification() == ("/finesse/api/User/1001/Dialogs", PAYLOAD)
            assert await b.notification() == ("/finesse/api/User/1001/Dialogs", PAYLOAD)
            assert server.publish("/finesse/api/User/1002", "<marker/>", ["1002"]) == 1
            assert await other.notification() == ("/finesse/api/User/1002", "<marker/>")  # and nothing before it
            await a.close()
            assert ("1001", False) not in presence.calls and server.users() == {"1001", "1002"}
            await b.close()
            await presence.wait(("1001", False))
            assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 0
    run(scenario)


def test_team_subscription_and_can_subscribe() -> None:
    node = "/finesse/api/Team/1/Users"

    async def scenario() -> None:
        allowed = lambda user, n: user == "2001"  # noqa: E731
        async with xmpp_server(can_subscribe=allowed) as (server, _), \
                agents(server, ("2001", "sup"), ("1001", "ag")) as [sup, agent]:
            pubsub = sup.plugin["xep_0060"]
            result = await pubsub.subscribe(PUBSUB, node, bare=False, timeout=WAIT)
            sub = result.xml.find(f"{NS_PUBSUB}pubsub/{NS_PUBSUB}subscription")
            assert sub.get("node") == node and sub.get("subscription") == "subscribed"
            assert sub.get("jid") == "2001@finesse.local/sup" and sub.get("subid")
            assert server.publish(node, PAYLOAD) == 1
            assert await sup.notification() == (node, PAYLOAD)
            listed = await pubsub.get_subscriptions(PUBSUB, timeout=WAIT)
            assert [s.get("node") for s in listed.xml.iter(f"{NS_PUBSUB}subscription")] == [node]
            # Another user's JID, and a user that may not subscribe, are refused.
            with pytest.raises(IqError) as bad:
                await pubsub.subscribe(PUBSUB, node, subscribee="1001@finesse.local", timeout=WAIT)
            assert bad.value.condition == "bad-request"
            with pytest.raises(IqError) as denied:
                await agent.plugin["xep_0060"].subscribe(PUBSUB, node, timeout=WAIT)
            assert denied.value.condition == "forbidden"
            await pubsub.unsubscribe(PUBSUB, node, bare=False, timeout=WAIT)
            assert server.publish(node, PAYLOAD) == 0
            # A bare-JID subscription reaches every available session of the user.
            await pubsub.subscribe(PUBSUB, node, timeout=WAIT)
            assert server.publish(node, "<bare/>", ["2001"]) == 1  # no duplicate
            assert await sup.notification() == (node, "<bare/>")
    run(scenario)


def test_iq_services() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, _), agents(server, ("1001", "r")) as [a]:
            ping = a.plugin["xep_0199"]
            await ping.send_ping(DOMAIN, timeout=WAIT)
            await ping.send_ping(PUBSUB, timeout=WAIT)
            roster = await a.get_roster(timeout=WAIT)
            assert roster["type"] == "result"
            unknown = a.make_iq_get(queryxmlns="jabber:iq:version", ito=DOMAIN)
            with pytest.raises(IqError) as err:
                await unknown.send(timeout=WAIT)
            assert err.value.condition == "service-unavailable" and err.value.etype == "cancel"
    run(scenario)


def test_resource_conflict_kicks_the_old_session() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), agents(server, ("1001", "same")) as [old]:
            async with agents(server, ("1001", "same")) as [new]:
                await asyncio.wait_for(old.gone.wait(), WAIT)
                assert old.stream_errors == ["conflict"]
                assert server.session_count() == 1
                assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 1
                assert await new.notification() == ("/finesse/api/User/1001", PAYLOAD)
                assert presence.calls == [("1001", True), ("1001", False), ("1001", True)]
    run(scenario)


def test_presence_transitions_and_finesse_presence() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), agents(server, ("1001", "r")) as [a]:
            server.set_finesse_available(False)
            gone = await a.presence()
            assert gone.get("from") == f"finesse@{DOMAIN}" and gone.get("type") == "unavailable"
            a.send_presence(ptype="unavailable")
            await presence.wait(("1001", False))
            assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 0
            a.send_presence()
            await presence.wait(("1001", True), count=2)
            server.set_finesse_available(True)
            back = await a.presence()
            assert back.get("from") == f"finesse@{DOMAIN}" and back.get("type") is None
            a.abort()  # TCP drop, no stream close
            await presence.wait(("1001", False), count=2)
            assert server.users() == set() and server.session_count() == 0
    run(scenario)


def test_stop_disconnects_everyone_and_start_again() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), \
                agents(server, ("1001", "r"), ("1002", "r")) as [a, b]:
            port = server.port
            await server.stop()
            assert not server.listening
            await asyncio.wait_for(a.gone.wait(), WAIT)
            await asyncio.wait_for(b.gone.wait(), WAIT)
            assert a.stream_errors == ["system-shutdown"]
            assert sorted(presence.calls) == [("1001", False), ("1001", True), ("1002", False), ("1002", True)]
            await server.start()
            assert server.listening and server.port == port
            async with agents(server, ("1001", "again")) as [c]:
                assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 1
                assert await c.notification() == ("/finesse/api/User/1001", PAYLOAD)
    run(scenario)


def test_disconnect_user() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, presence), \
                agents(server, ("1001", "a"), ("1001", "b"), ("1002", "c")) as [a, b, c]:
            server.disconnect_user("1001")
            await asyncio.wait_for(a.gone.wait(), WAIT)
            await asyncio.wait_for(b.gone.wait(), WAIT)
            await presence.wait(("1001", False))
            assert server.users() == {"1002"} and not c.gone.is_set()
    run(scenario)


# --- TLS -------------------------------------------------------------------------

def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for DOMAIN and 127.0.0.1; returns (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(DOMAIN), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_starttls_required(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def scenario() -> None:
        async with xmpp_server(tls_context=context, require_tls=True) as (server, presence):
            raw = await Raw.open(server.port)
            try:  # before TLS: STARTTLS required, no SASL on offer, and auth is refused
                raw.send(STREAM_OPEN)
                features = (await raw.expect("<stream:features>.*</stream:features>")).group(0)
                assert "<starttls" in features and "<required/>" in features and "mechanisms" not in features
                raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain('1001')}</auth>")
                await raw.expect("<encryption-required/>")
                raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                await raw.expect("<proceed ")
                raw.send(b"\x16\x03\x01\x00\x05hello, not TLS" * 10)  # handshake fails; server copes
                await raw.until_eof()
            finally:
                await raw.close()
            client = Agent("1001", PASSWORDS["1001"], "tls", ca_file=ca)
            try:
                client.connect("127.0.0.1", server.port)
                await asyncio.wait_for(client.started.wait(), WAIT)
                assert isinstance(client.socket, (ssl.SSLObject, ssl.SSLSocket))
                await presence.wait(("1001", True))
                assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 1
                assert await client.notification() == ("/finesse/api/User/1001", PAYLOAD)
            finally:
                await client.close()
            await presence.wait(("1001", False))
    run(scenario)


# --- raw protocol details and hostile input ------------------------------------------

def test_raw_sasl_and_iq_details() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, _):
            raw = await Raw.open(server.port)
            try:
                raw.send(STREAM_OPEN)
                await raw.expect("</stream:features>")
                sasl = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>"
                raw.send(sasl.format("="))
                await raw.expect("<malformed-request/>")
                raw.send(sasl.format(plain("1001", authcid="1001@finesse.local")))
                await raw.expect("<success")
                raw.send(STREAM_OPEN)
                await raw.expect("<bind")
                raw.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
                jid = (await raw.expect(r"<jid>(1001@finesse\.local/[^<]+)</jid>")).group(1)
                raw.send("<iq type='result' id='ignored'/><iq type='error' id='ignored2'/>"
                         "<iq type='get' id='p1' to='finesse.local'><ping xmlns='urn:xmpp:ping'/></iq>")
                reply = (await raw.expect("<iq [^>]*>")).group(0)
                assert 'id="p1"' in reply and 'type="result"' in reply and f'to="{jid}"' in reply
                raw.send("<iq type='get' id='d1' to='pubsub.finesse.local'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
                await raw.expect('category="pubsub"')
                raw.send("<message to='x@finesse.local'><body>hi</body></message>"
                         "<presence to='finesse@finesse.local'/>"
                         "<iq type='set' id='s1'><unknown xmlns='urn:x'/></iq>")
                await raw.expect('type="error" id="s1".*<service-unavailable')
                assert server.users() == set() and server.session_count() == 1
            finally:
                await raw.close()
            # Three failures on one stream close it.
            raw = await Raw.open(server.port)
            try:
                raw.send(STREAM_OPEN)
                await raw.expect("</stream:features>")
                for _ in range(3):
                    raw.send(sasl.format(plain("1001", password="nope")))
                assert (await raw.until_eof()).count("<not-authorized/>") == 3
            finally:
                await raw.close()
    run(scenario)


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                  '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                  "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                  "version='1.0'><iq>&lol3;</iq>")
EXTERNAL = ('<?xml version="1.0"?><!DOCTYPE stream SYSTEM "file:///etc/passwd">' + STREAM_OPEN[21:])
HOSTILE = {
    "billion-laughs": ([BILLION_LAUGHS], "policy-violation"),
    "external-entity": ([EXTERNAL], "policy-violation"),
    "dtd-in-stream": ([STREAM_OPEN, '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'],
                      "not-well-formed"),
    "comment": ([STREAM_OPEN, "<!-- hi -->"], "policy-violation"),
    "garbage": ([b"\x00\xff\xfe\x16\x03\x01 GET / HTTP/1.1\r\n\r\n"], "not-well-formed"),
    "oversized-stanza": ([STREAM_OPEN, "<message><body>" + "x" * 70000 + "</body></message>"],
                         "policy-violation"),
    "oversized-open-tag": ([STREAM_OPEN] + ["<message a='" + "x" * 8000] + ["y" * 8000] * 9,
                           "policy-violation"),
    "endless-header": (["<stream:stream xmlns='jabber:client' a='"] + ["z" * 8000] * 10,
                       "policy-violation"),
    "wrong-namespace": (["<stream xmlns='urn:nope' version='1.0'>"], "invalid-namespace"),
    "stanza-before-auth": ([STREAM_OPEN, "<message><body>hi</body></message>"], "not-authorized"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_refused_and_others_unaffected(case: str) -> None:
    chunks, condition = HOSTILE[case]

    async def scenario() -> None:
        async with xmpp_server(max_stanza_bytes=65536) as (server, _), agents(server, ("1001", "r")) as [a]:
            raw = await Raw.open(server.port)
            try:
                for chunk in chunks:
                    raw.send(chunk)
                text = await raw.until_eof()
            finally:
                await raw.close()
            assert re.search(f"<stream:error><{condition} [^>]*/></stream:error></stream:stream>$", text), text
            assert server.publish("/finesse/api/User/1001", PAYLOAD, ["1001"]) == 1
            assert await a.notification() == ("/finesse/api/User/1001", PAYLOAD)
    run(scenario)


def test_idle_timeout_closes_silent_sessions() -> None:
    async def scenario() -> None:
        async with xmpp_server(idle_timeout=0.3) as (server, presence):
            raw = await Raw.open(server.port)
            try:
                await raw.login("1001")
                await presence.wait(("1001", True))
                assert "<connection-timeout " in await raw.until_eof()
                await presence.wait(("1001", False))
            finally:
                await raw.close()
    run(scenario)


def test_slow_consumer_is_disconnected() -> None:
    async def scenario() -> None:
        async with xmpp_server(max_send_buffer=256 * 1024) as (server, presence), \
                agents(server, ("1002", "r")) as [fast]:
            raw = await Raw.open(server.port)
            try:
                await raw.login("1001")
                raw.writer.transport.pause_reading()  # a client that stops reading
                big = "<Update>" + "x" * 100_000 + "</Update>"
                for _ in range(2000):  # socket buffers fill up, then the server's limit trips
                    if "1001" not in server.users():
                        break
                    server.publish("/finesse/api/User/1001", big, ["1001"])
                    await asyncio.sleep(0)
                await presence.wait(("1001", False))
                assert server.publish("/finesse/api/User/1002", "<ok/>", ["1002"]) == 1
                assert await fast.notification() == ("/finesse/api/User/1002", "<ok/>")
            finally:
                await raw.close()
    run(scenario)


# --- fault control: an unterminated stanza ---------------------------------------------

def test_flood_writes_at_the_readers_pace_and_stops_when_it_leaves() -> None:
    async def scenario() -> None:
        async with xmpp_server() as (server, _), agents(server, ("2001", "r")) as [other]:
            reader, leaver = await Raw.open(server.port), await Raw.open(server.port)
            try:
                await reader.login("1001", "reader")
                await leaver.login("1002", "leaver")
                reader.buffer = leaver.buffer = ""
                nested = asyncio.create_task(flood.flood(server, "1001", depth=20_000, timeout=10))
                endless = asyncio.create_task(flood.flood(server, "1002", size=2**30, timeout=10))
                await leaver.expect("<body>x+")
                leaver.writer.transport.abort()  # a client that leaves: the flood to it stops there
                text = ""
                while not text.endswith("<a>" * 20_000):  # the one that reads gets the whole of it
                    text += (await asyncio.wait_for(reader.reader.read(65536), WAIT)).decode()
                head = f'<message from="{PUBSUB}" to="1001@{DOMAIN}/reader">'
                assert reader.buffer + text == head + "<a>" * 20_000
                assert await asyncio.wait_for(nested, WAIT) == [
                    {"jid": f"1001@{DOMAIN}/reader", "sent": len(head) + 60_000, "closed": False}]
                [left] = await asyncio.wait_for(endless, WAIT)
                assert left["closed"] and left["sent"] < 2**30
                assert server.publish("/finesse/api/User/2001", PAYLOAD, ["2001"]) == 1  # others unaffected
                assert await other.notification() == ("/finesse/api/User/2001", PAYLOAD)
            finally:
                await reader.close()
                await leaver.close()
    run(scenario)


@pytest.mark.parametrize("unit", ["<a>", "<a/>"])
def test_a_client_stanza_of_many_elements_is_refused_before_it_is_built(unit: str) -> None:
    data = (STREAM_OPEN + "<message>" + unit * (2_000_000 // len(unit))).encode()

    async def scenario() -> None:
        async with xmpp_server(max_stanza_bytes=16384) as (server, _), agents(server, ("1002", "r")) as [other]:
            raw = await Raw.open(server.port)
            tracemalloc.start()
            try:
                raw.send(data)
                text = await raw.until_eof()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                await raw.close()
            assert text.endswith("<policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/></stream:error>"
                                 "</stream:stream>"), text[-300:]
            assert peak < 1536 * 1024, f"the server's heap grew {peak} bytes for a 16 KiB limit"
            assert server.publish("/finesse/api/User/1002", PAYLOAD, ["1002"]) == 1
            assert await other.notification() == ("/finesse/api/User/1002", PAYLOAD)
    run(scenario)
