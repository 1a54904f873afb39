"""Minimal XMPP client-to-server endpoint (RFC 6120/6121 subset + XEP-0060
event delivery) emulating the Finesse notification service.

Everything runs in the caller's asyncio loop; one :class:`_Session`
(an asyncio Protocol) per TCP connection.  Outgoing stanzas are built from
string templates; ``publish`` escapes a payload once and reuses the bytes for
every recipient.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import secrets
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from typing import cast
from xml.sax.saxutils import escape, quoteattr

from .xmppstream import XmppStreamError, XmppStreamParser

__all__ = ["XmppServer"]

log = logging.getLogger("simulator.xmpp")

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAM_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_PING = "urn:xmpp:ping"
NS_ROSTER = "jabber:iq:roster"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_PUBSUB_ERR = "http://jabber.org/protocol/pubsub#errors"
_C = "{jabber:client}"
_SASL_FEATURE = f'<mechanisms xmlns="{NS_SASL}"><mechanism>PLAIN</mechanism></mechanisms>'
_BOUND_FEATURES = (f'<stream:features><bind xmlns="{NS_BIND}"/>'
                   f'<session xmlns="{NS_SESSION}"><optional/></session></stream:features>').encode()
_TEXT_ENTITIES = {"\r": "&#13;"}
_BAD_LOCAL = set("\"&'/:<>@")
SubKey = tuple[str, "str | None"]  # (user, resource or None for the bare JID)


def _valid_localpart(s: str) -> bool:
    return 0 < len(s.encode()) <= 1023 and not any(c in _BAD_LOCAL or c <= " " or c == "\x7f" for c in s)


def _tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class XmppServer:
    """See module docstring; the public methods are the simulator's interface."""

    def __init__(self, *, host: str, port: int, domain: str, pubsub_domain: str,
                 authenticate: Callable[[str, str], bool],
                 on_presence: Callable[[str, bool], None],
                 can_subscribe: Callable[[str, str], bool] = lambda user, node: True,
                 tls_context: ssl.SSLContext | None = None, require_tls: bool = False,
                 max_stanza_bytes: int = 65536, max_send_buffer: int = 4 * 1024 * 1024,
                 idle_timeout: float | None = None) -> None:
        self.host, self.port, self.domain, self.pubsub_domain = host, port, domain, pubsub_domain
        self.tls_context = tls_context
        self.require_tls = require_tls and tls_context is not None
        self.max_stanza_bytes, self.max_send_buffer = max_stanza_bytes, max_send_buffer
        self.idle_timeout = idle_timeout
        self._authenticate, self._on_presence, self._can_subscribe = authenticate, on_presence, can_subscribe
        self._server: asyncio.Server | None = None
        self._conns: set[_Session] = set()                 # every open connection
        self._bound: dict[str, dict[str, _Session]] = {}   # user -> resource -> session
        self._present: dict[str, set[_Session]] = {}       # user -> sessions with presence
        self._subs: dict[str, dict[SubKey, str]] = {}      # node -> (user, resource) -> subid
        self._finesse_available = True
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._event_head = f"<message from={quoteattr(pubsub_domain)} to=".encode()
        finesse = quoteattr(f"finesse@{domain}")
        self._finesse_on = f"<presence from={finesse} to=".encode()
        self._finesse_off = f'<presence type="unavailable" from={finesse} to='.encode()

    # --- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port,
                                                reuse_address=True, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("XMPP listening on %s:%d (domain %s)", self.host, self.port, self.domain)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        conns = list(self._conns)
        for s in conns:
            s.end("system-shutdown")
        pending = {s.done for s in conns if not s.done.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=2.0)
        if pending:  # peers that do not let us close (full buffers, stuck TLS shutdown)
            for s in conns:
                if not s.done.done():
                    s.transport.abort()
            await asyncio.wait(pending, timeout=1.0)
        tasks = [s.tls_task for s in conns if s.tls_task is not None and not s.tls_task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # --- delivery --------------------------------------------------------
    def publish(self, node: str, payload: str, users: Iterable[str] = (),
                item_id: str | None = None) -> int:
        if isinstance(users, str):
            users = (users,)
        targets: set[_Session] = set()
        present = self._present
        for user in users:
            sessions = present.get(user)
            if sessions:
                targets.update(sessions)
        subs = self._subs.get(node)
        if subs:
            for user, resource in subs:
                if resource is None:
                    sessions = present.get(user)
                    if sessions:
                        targets.update(sessions)
                else:
                    bound = self._bound.get(user)
                    s = bound.get(resource) if bound else None
                    if s is not None:
                        targets.add(s)
        return self._deliver(targets, node, payload, item_id)

    def publish_all(self, node: str, payload: str, item_id: str | None = None) -> int:
        targets = [s for sessions in self._present.values() for s in sessions]
        return self._deliver(targets, node, payload, item_id)

    def _deliver(self, targets: Iterable[_Session], node: str, payload: str,
                 item_id: str | None) -> int:
        n = next(self._ids)
        iid = item_id if item_id is not None else f"{self._id_prefix}-{n}"
        head = self._event_head
        tail = (f' id="{self._id_prefix}-e{n}"><event xmlns="{NS_PUBSUB_EVENT}"><items node={quoteattr(node)}>'
                f'<item id={quoteattr(iid)}><notification xmlns="{NS_PUBSUB}">'
                f'{escape(payload, _TEXT_ENTITIES)}</notification></item></items></event></message>'
                ).encode()
        sent = 0
        for s in targets:
            if not s.closed:
                s.transport.write(head + s.jid_attr + tail)
                sent += 1
        return sent

    def set_finesse_available(self, available: bool) -> None:
        if available == self._finesse_available:
            return
        self._finesse_available = available
        head = self._finesse_on if available else self._finesse_off
        for sessions in self._present.values():
            for s in sessions:
                s.send(head + s.jid_attr + b"/>")

    # --- inspection / control ------------------------------------------
    def users(self) -> set[str]:
        return set(self._present)

    def session_count(self) -> int:
        """Number of bound (authenticated, resource-bound) sessions."""
        return sum(len(r) for r in self._bound.values())

    def disconnect_user(self, user: str) -> None:
        for s in [s for s in self._conns if s.user == user]:
            s.end("reset")

    # --- internals used by sessions -----------------------------------
    def _presence_changed(self, s: _Session, available: bool) -> None:
        user = cast(str, s.user)
        sessions = self._present.get(user)
        if available:
            if sessions is None:
                self._present[user] = {s}
                self._notify(user, True)
            else:
                sessions.add(s)
        elif sessions is not None and s in sessions:
            sessions.discard(s)
            if not sessions:
                del self._present[user]
                self._notify(user, False)

    def _notify(self, user: str, available: bool) -> None:
        try:
            self._on_presence(user, available)
        except Exception:
            log.exception("on_presence(%r, %r) raised", user, available)

    def _subscribe(self, node: str, key: SubKey) -> str:
        subs = self._subs.setdefault(node, {})
        if key not in subs:
            subs[key] = secrets.token_hex(8)
        return subs[key]

    def _unsubscribe(self, node: str, key: SubKey) -> bool:
        subs = self._subs.get(node)
        if subs is None or subs.pop(key, None) is None:
            return False
        if not subs:
            del self._subs[node]
        return True



class _Session(asyncio.Protocol):
    """One client connection; all state transitions happen in the loop thread."""

    transport: asyncio.Transport

    def __init__(self, server: XmppServer) -> None:
        self.srv = server
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()  # set once the TCP connection is gone
        self.parser: XmppStreamParser | None = None
        self.closed = False                     # no more output; detached from the server's indexes
        self.header_sent = False
        self.tls = False
        self.upgrading = False
        self.tls_task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []            # decrypted data that beat start_tls() returning
        self.user: str | None = None            # set by SASL success
        self.resource: str | None = None        # set by bind
        self.jid = ""
        self.jid_attr = b'""'                   # quoteattr(full JID), ready for templates
        self.available = False
        self.auth_failures = 0
        self.last_rx = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.pacing = False                     # write_paced runs: a full send buffer waits, not disconnects
        self.writable: asyncio.Future[None] | None = None  # while paced writing waits for the peer to read

    def __repr__(self) -> str:
        return f"<xmpp {self.jid or self.user or '-'} {self.peer}>"

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = str(transport.get_extra_info("peername"))
        self.srv._conns.add(self)
        if self.srv._server is None:  # accepted while stopping
            self.closed = True
            self.transport.abort()
            return
        self.transport.set_write_buffer_limits(high=self.srv.max_send_buffer)
        self.last_rx = self.loop.time()
        self._new_parser()
        if self.srv.idle_timeout:
            self.idle_handle = self.loop.call_later(self.srv.idle_timeout, self._idle_check)
        log.debug("%r connected", self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if self.upgrading:
            self.early.append(data)
            return
        if self.closed or self.parser is None:
            return
        try:
            self.parser.feed(data)
        except XmppStreamError as exc:
            log.info("%r stream error: %s", self, exc)
            self.end(exc.condition)
        except Exception:
            log.exception("%r internal error", self)
            self.end("internal-server-error")

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost cleans up

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%r connection lost (%s)", self, exc)
        self.closed = True
        self._finish()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self.pacing:
            self.writable = self.loop.create_future()
            return
        if not self.closed:  # slow consumer: stop writing now, drop it on the next loop turn
            log.warning("%r send buffer over %d bytes; disconnecting", self, self.srv.max_send_buffer)
            self.closed = True
            self.loop.call_soon(self.transport.abort)

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    # --- output / teardown ------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    async def write_paced(self, pieces: Iterator[bytes], timeout: float) -> int:
        """Write ``pieces`` as fast as the peer reads them (at most about one piece waits in our buffer)
        until they run out, the connection closes or ``timeout`` passes; the bytes written."""
        deadline = self.loop.time() + timeout
        sent = 0
        self.pacing = True
        self.transport.set_write_buffer_limits(high=1)
        try:
            for piece in pieces:
                if self.closed or self.transport.is_closing() or self.loop.time() > deadline:
                    break  # is_closing: the connection is lost and connection_lost is due
                self.transport.write(piece)
                sent += len(piece)
                if self.writable is None:
                    await asyncio.sleep(0)  # the rest of the loop runs between pieces
                    continue
                try:
                    await asyncio.wait_for(self.writable, deadline - self.loop.time())
                except TimeoutError:
                    break
                self.writable = None
        finally:
            self.pacing, self.writable = False, None
            if not self.closed:
                self.transport.set_write_buffer_limits(high=self.srv.max_send_buffer)
        return sent

    def _header(self) -> bytes:
        return ("<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\" "
                f'xmlns:stream="{NS_STREAM}" from={quoteattr(self.srv.domain)} '
                f'id="{secrets.token_hex(8)}" version="1.0" xml:lang="en">').encode()

    def end(self, condition: str | None = None) -> None:
        """Close the stream (with a stream error if ``condition``) and the connection."""
        if self.closed:
            return
        if self.parser is not None:
            self.parser.active = False
        if self.upgrading:  # mid-handshake: nothing sensible can be written
            self.closed = True
            self._detach()
            self.transport.abort()
            return
        out = [] if self.header_sent else [self._header()]
        if condition:
            out.append(f'<stream:error><{condition} xmlns="{NS_STREAM_ERR}"/></stream:error>'.encode())
        out.append(b"</stream:stream>")
        self.closed = True
        self._detach()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"".join(out))
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        if transport.can_write_eof():
            # Half-close and linger: closing with unread input would send an RST that can
            # destroy the stream error before the peer reads it.  Input is now ignored.
            try:
                transport.write_eof()
            except OSError:  # the peer is already gone
                transport.abort()
                return
            self.idle_handle = self.loop.call_later(2.0, transport.abort)
        else:
            transport.close()

    def _detach(self) -> None:
        srv = self.srv
        if self.available:
            self.available = False
            srv._presence_changed(self, False)
        if self.user is not None and self.resource is not None:
            bound = srv._bound.get(self.user)
            if bound is not None and bound.get(self.resource) is self:
                del bound[self.resource]
                if not bound:
                    del srv._bound[self.user]

    def _finish(self) -> None:
        self._detach()
        if self.parser is not None:
            self.parser.active = False
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.srv._conns.discard(self)
        if not self.done.done():
            self.done.set_result(None)

    def _idle_check(self) -> None:
        self.idle_handle = None
        timeout = self.srv.idle_timeout
        if self.closed or not timeout:
            return
        remaining = self.last_rx + timeout - self.loop.time()
        if remaining > 0:
            self.idle_handle = self.loop.call_later(remaining, self._idle_check)
        else:
            log.info("%r idle for %.1f s; closing", self, timeout)
            self.end("connection-timeout")

    # --- stream level -------------------------------------------------------
    def _new_parser(self) -> None:
        if self.parser is not None:
            self.parser.active = False
        self.parser = XmppStreamParser(self._on_header, self._on_stanza, self.end,
                                       self.srv.max_stanza_bytes)
        self.header_sent = False

    def _on_header(self, tag: str, attrs: dict[str, str]) -> None:
        srv = self.srv
        if tag != _tag(NS_STREAM, "stream"):
            raise XmppStreamError("invalid-namespace")
        to = attrs.get("to")
        if to is not None and to.lower() != srv.domain.lower():
            raise XmppStreamError("host-unknown", to)
        if not attrs.get("version", "").startswith("1."):
            raise XmppStreamError("unsupported-version")
        self.header_sent = True
        if self.user is not None:
            self.send(self._header() + _BOUND_FEATURES)
            return
        features = ""
        if srv.tls_context is not None and not self.tls:
            required = "<required/>" if srv.require_tls else ""
            features += f'<starttls xmlns="{NS_TLS}">{required}</starttls>'
        if self.tls or not srv.require_tls:
            features += _SASL_FEATURE
        self.send(self._header() + f"<stream:features>{features}</stream:features>".encode())

    def _on_stanza(self, el: ET.Element) -> None:
        tag = el.tag
        if tag.startswith(_C):
            if self.user is None:
                raise XmppStreamError("not-authorized")
            name = tag[len(_C):]
            if name == "iq":
                self._iq(el)
            elif self.resource is None:
                raise XmppStreamError("not-authorized", "not bound")
            elif name == "presence":
                self._presence(el)
            elif name != "message":  # messages from clients are ignored
                raise XmppStreamError("unsupported-stanza-type", name)
        elif tag.startswith(f"{{{NS_SASL}}}") and self.user is not None:
            raise XmppStreamError("policy-violation", "already authenticated")
        elif tag == _tag(NS_SASL, "auth"):
            self._auth(el)
        elif tag == _tag(NS_SASL, "abort"):
            self._sasl_failure("aborted", count=False)
        elif tag == _tag(NS_SASL, "response"):
            self._sasl_failure("malformed-request")
        elif tag == _tag(NS_TLS, "starttls"):
            self._starttls()
        else:
            raise XmppStreamError("unsupported-stanza-type", tag)

    def _starttls(self) -> None:
        ctx = self.srv.tls_context
        if ctx is None or self.tls or self.user is not None:
            self.send(f'<failure xmlns="{NS_TLS}"/>'.encode())
            self.end()
            return
        self.send(f'<proceed xmlns="{NS_TLS}"/>'.encode())
        assert self.parser is not None
        self.parser.active = False
        self.upgrading = True
        self.transport.pause_reading()  # the ClientHello must reach the TLS layer, not us
        self.tls_task = self.loop.create_task(self._upgrade(ctx))

    async def _upgrade(self, ctx: ssl.SSLContext) -> None:
        if self.closed:
            return
        try:
            new = await self.loop.start_tls(self.transport, self, ctx, server_side=True,
                                            ssl_handshake_timeout=10.0, ssl_shutdown_timeout=5.0)
        except (Exception, asyncio.CancelledError) as exc:
            log.info("%r TLS handshake failed: %r", self, exc)
            self.upgrading = False
            self.closed = True
            self._finish()  # the SSL layer never calls connection_lost before the handshake is done
            return
        self.upgrading = False
        self.transport = cast(asyncio.Transport, new)
        if self.closed:
            self.transport.abort()
            return
        self.tls = True
        self.transport.set_write_buffer_limits(high=self.srv.max_send_buffer)
        self.last_rx = self.loop.time()
        self._new_parser()
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)

    # --- SASL PLAIN -----------------------------------------------------------
    def _sasl_failure(self, condition: str, count: bool = True) -> None:
        self.send(f'<failure xmlns="{NS_SASL}"><{condition}/></failure>'.encode())
        if count:
            self.auth_failures += 1
            if self.auth_failures >= 3:
                self.end()

    def _auth(self, el: ET.Element) -> None:
        srv = self.srv
        if srv.require_tls and not self.tls:
            return self._sasl_failure("encryption-required")
        if el.get("mechanism") != "PLAIN":
            return self._sasl_failure("invalid-mechanism")
        body = (el.text or "").strip()
        if body in ("", "="):
            return self._sasl_failure("malformed-request")
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return self._sasl_failure("incorrect-encoding")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in raw.split(b"\0"))
        except ValueError:  # wrong number of fields or bad UTF-8
            return self._sasl_failure("malformed-request")
        local, at, dom = authcid.partition("@")
        ok = (_valid_localpart(local) and (not at or dom.lower() == srv.domain.lower())
              and authzid in ("", local, f"{local}@{srv.domain}"))
        if ok:
            try:
                ok = bool(srv._authenticate(local, password))
            except Exception as exc:  # no traceback: it could carry the password
                log.error("authenticate(%r, ...) raised %s", local, type(exc).__name__)
                ok = False
        del password
        if not ok:
            log.info("%r authentication failed for %r", self, local)
            return self._sasl_failure("not-authorized")
        self.user = local
        log.debug("%r authenticated as %r", self, local)
        self.send(f'<success xmlns="{NS_SASL}"/>'.encode())
        self._new_parser()

    # --- stanzas ------------------------------------------------------------
    def _reply(self, el: ET.Element, body: str = "", error: str = "") -> None:
        attrs = ""
        if (iid := el.get("id")) is not None:
            attrs += f" id={quoteattr(iid)}"
        if (to := el.get("to")) is not None:
            attrs += f" from={quoteattr(to)}"
        if self.jid:
            attrs += f" to={self.jid_attr.decode()}"
        kind = "error" if error else "result"
        self.send(f'<iq type="{kind}"{attrs}>{body}{error}</iq>'.encode())

    def _error(self, el: ET.Element, etype: str, condition: str, extra: str = "") -> None:
        self._reply(el, error=f'<error type="{etype}"><{condition} xmlns="{NS_STANZA_ERR}"/>{extra}</error>')

    def _iq(self, el: ET.Element) -> None:
        itype = el.get("type")
        if itype in ("result", "error"):
            return
        if itype not in ("get", "set") or el.get("id") is None or len(el) != 1:
            return self._error(el, "modify", "bad-request")
        child = el[0]
        key = (itype, child.tag)
        if self.resource is None:
            if key != ("set", _tag(NS_BIND, "bind")):
                raise XmppStreamError("not-authorized", "not bound")
            return self._bind(el, child)
        to = (el.get("to") or self.srv.domain).lower()
        if to in (self.srv.domain.lower(), f"{self.user}@{self.srv.domain}".lower()):
            if key == ("get", _tag(NS_PING, "ping")) or key == ("set", _tag(NS_SESSION, "session")):
                return self._reply(el)
            if key == ("get", _tag(NS_ROSTER, "query")):
                return self._reply(el, f'<query xmlns="{NS_ROSTER}"/>')
            if key == ("get", _tag(NS_DISCO_INFO, "query")):
                return self._reply(el, self._disco("server", "im", NS_PING))
            if key == ("get", _tag(NS_DISCO_ITEMS, "query")):
                item = f"<item jid={quoteattr(self.srv.pubsub_domain)}/>"
                return self._reply(el, f'<query xmlns="{NS_DISCO_ITEMS}">{item}</query>')
            if key == ("set", _tag(NS_BIND, "bind")):
                return self._error(el, "cancel", "not-allowed")
        elif to == self.srv.pubsub_domain.lower():
            if key == ("get", _tag(NS_PING, "ping")):
                return self._reply(el)
            if key == ("get", _tag(NS_DISCO_INFO, "query")):
                return self._reply(el, self._disco("pubsub", "service", NS_PUBSUB, NS_PING,
                                                   f"{NS_PUBSUB}#subscribe",
                                                   f"{NS_PUBSUB}#retrieve-subscriptions"))
            if child.tag == _tag(NS_PUBSUB, "pubsub"):
                return self._pubsub(el, child, itype)
        self._error(el, "cancel", "service-unavailable")

    @staticmethod
    def _disco(category: str, itype: str, *features: str) -> str:
        feats = "".join(f'<feature var="{f}"/>' for f in (NS_DISCO_INFO, *features))
        return (f'<query xmlns="{NS_DISCO_INFO}"><identity category="{category}" type="{itype}" '
                f'name="Finesse simulator"/>{feats}</query>')

    def _bind(self, el: ET.Element, child: ET.Element) -> None:
        srv, user = self.srv, cast(str, self.user)
        res_el = child.find(_tag(NS_BIND, "resource"))
        res = (res_el.text or "").strip() if res_el is not None else ""
        if not res:
            res = f"sim-{secrets.token_hex(6)}"
        elif len(res.encode()) > 1023 or any(c < " " or c == "\x7f" for c in res):
            return self._error(el, "modify", "bad-request")
        old = srv._bound.get(user, {}).get(res)
        if old is not None:
            log.info("%r resource conflict; closing the old session", old)
            old.end("conflict")
        self.resource = res
        self.jid = f"{user}@{srv.domain}/{res}"
        self.jid_attr = quoteattr(self.jid).encode()
        srv._bound.setdefault(user, {})[res] = self
        self._reply(el, f'<bind xmlns="{NS_BIND}"><jid>{escape(self.jid)}</jid></bind>')

    def _presence(self, el: ET.Element) -> None:
        if el.get("to"):
            return  # directed presence: nobody to route it to
        ptype = el.get("type")
        if ptype is None and not self.available:
            self.available = True
            self.srv._presence_changed(self, True)
            if self.srv._finesse_available:
                self.send(self.srv._finesse_on + self.jid_attr + b"/>")
        elif ptype == "unavailable" and self.available:
            self.available = False
            self.srv._presence_changed(self, False)

    def _pubsub(self, el: ET.Element, ps: ET.Element, itype: str) -> None:
        srv, user = self.srv, cast(str, self.user)
        if itype == "get":
            req = ps.find(_tag(NS_PUBSUB, "subscriptions"))
            if req is None:
                return self._error(el, "cancel", "feature-not-implemented")
            only = req.get("node")
            items = "".join(self._subscription(node, k, subid) for node, subs in srv._subs.items()
                            if only in (None, node) for k, subid in subs.items() if k[0] == user)
            return self._reply(el, f'<pubsub xmlns="{NS_PUBSUB}"><subscriptions>{items}</subscriptions></pubsub>')
        op = ps.find(_tag(NS_PUBSUB, "subscribe"))
        if op is None:
            op = ps.find(_tag(NS_PUBSUB, "unsubscribe"))
            if op is None:
                return self._error(el, "cancel", "feature-not-implemented")
        node, jid = op.get("node"), op.get("jid", "")
        if not node:
            return self._error(el, "modify", "bad-request", f'<nodeid-required xmlns="{NS_PUBSUB_ERR}"/>')
        key = self._jid_key(jid)
        if key is None:
            return self._error(el, "modify", "bad-request", f'<invalid-jid xmlns="{NS_PUBSUB_ERR}"/>')
        if op.tag == _tag(NS_PUBSUB, "unsubscribe"):
            if not srv._unsubscribe(node, key):
                return self._error(el, "cancel", "unexpected-request",
                                   f'<not-subscribed xmlns="{NS_PUBSUB_ERR}"/>')
            return self._reply(el)
        try:
            allowed = bool(srv._can_subscribe(user, node))
        except Exception:
            log.exception("can_subscribe(%r, %r) raised", user, node)
            allowed = False
        if not allowed:
            return self._error(el, "auth", "forbidden")
        subid = srv._subscribe(node, key)
        self._reply(el, f'<pubsub xmlns="{NS_PUBSUB}">{self._subscription(node, key, subid)}</pubsub>')

    def _subscription(self, node: str, key: SubKey, subid: str) -> str:
        jid = f"{key[0]}@{self.srv.domain}" + (f"/{key[1]}" if key[1] is not None else "")
        return (f"<subscription node={quoteattr(node)} jid={quoteattr(jid)} "
                f'subscription="subscribed" subid="{subid}"/>')

    def _jid_key(self, jid: str) -> SubKey | None:
        """(user, resource|None) if ``jid`` is this session's bare or full JID."""
        bare, slash, res = jid.partition("/")
        if bare.lower() != f"{self.user}@{self.srv.domain}".lower():
            return None
        if not slash:
            return (cast(str, self.user), None)
        return (cast(str, self.user), res) if res == self.resource else None
