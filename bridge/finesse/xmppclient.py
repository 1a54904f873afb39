"""One agent's XMPP notification session, built on slixmpp; ``notify.NotifyHub`` owns and runs them.

Split from notify.py to keep both small; no other bridge module imports slixmpp (one module per outside system).
Everything in ``AgentConnection`` except ``close``, ``connected`` and ``ssl_context`` runs in the hub's
loop thread. The reconnect policy is ``backoff_delay`` and ``AgentConnection._reconnect``: failover
to the other node (docs/finesse.md 10.6) replaces those two and nothing else.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import ssl
import threading
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, Callable, Iterator

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.util import bytes as utf8
from slixmpp.util.sasl.mechanisms import SCRAM
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .. import backoff, logs
from ..errors import BadCredentials, FinesseError, Timeout, Unavailable
from .model import Update, XmlError, is_loopback, parse_update

if TYPE_CHECKING:
    from .notify import NotifyHub

log = logs.get("bridge.finesse.notify")

OnUpdate = Callable[[str, Update], None]
OnState = Callable[[str, str], None]
# Where to reconnect: (current host, port, seconds since the drop) -> (host, port, domain, pubsub), or
# None to wait (no node in service). It must not block: it runs in the loop (bridge/failover.py).
Route = Callable[[str, int, float], "tuple[str, int, str, str] | None"]

EVENT = "{http://jabber.org/protocol/pubsub#event}"
PUBSUB = "{http://jabber.org/protocol/pubsub}"
MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"})  # slixmpp prefers SCRAM where offered
CLOSE_WAIT = 2.0  # seconds for the server to answer our end of stream before we cut the socket
# Bytes of the read buffer asyncio gives each TLS connection: its default is 256 KiB per connection,
# most of an idle agent's memory. One TLS record (16 KiB of text plus header and MAC) fits; a larger
# burst is read in more steps of the same loop. None keeps asyncio's size.
TLS_READ_BUFFER: int | None = 2**14 + 2048 + 5
# Stream limits (config.py XMPP_MAX_STANZA_BYTES, XMPP_MAX_DEPTH): what one stanza may make the parser
# hold. Finesse's notifications are 5 elements deep (message, event, items, item, notification: the
# Update travels as escaped text), and the Update inside is refused above model.MAX_DOCUMENT_BYTES.
MAX_STANZA_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Elements in one stanza: a flat megabyte of <a/> siblings fits the byte limit and costs about 20 MB of
# parsed elements; Finesse's stanzas hold a handful (the Update is text until model.py parses it).
MAX_ELEMENTS = 10_000
# Bytes handed to the XML parser at a time: the limits are checked between pieces, so one read (up to
# 256 KiB on plain TCP) builds at most this much past a limit. A TLS read is smaller (TLS_READ_BUFFER).
FEED_PIECE = 2**14
# RFC 6120 4.9.3.14: the stream error for "a stanza exceeds a configured size limit"; sent best effort.
POLICY_VIOLATION = (b'<stream:error><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
                    b"</stream:error></stream:stream>")


def _pbkdf2_hi(self: Any, text: str | bytes, salt: bytes, iterations: int) -> bytes:
    """SCRAM's Hi (RFC 5802 section 2.2), which is PBKDF2-HMAC with one block: hashlib's C code.

    slixmpp's own loops over HMAC in Python, about 28 ms of CPU per sign-in at Prosody's 10,000
    iterations, holding the loop every agent's events go through; this is about 1 ms, same bytes.
    """
    return hashlib.pbkdf2_hmac(self.hash().name, utf8(text), salt, iterations)


SLIXMPP_HI = SCRAM.Hi  # kept for bench/xmpp_client_cost.py's "stock" run and the test that compares
SCRAM.Hi = _pbkdf2_hi  # type: ignore[method-assign]


def shrink_tls_read_buffer(transport: Any, size: int | None) -> None:
    """Give ``transport``'s TLS protocol (asyncio's SSLProtocol) a ``size``-byte read buffer."""
    protocol: Any = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(protocol, "_ssl_buffer", None)
    if size is None or not isinstance(buffer, bytearray) or len(buffer) <= size:
        return
    protocol.max_size = size  # read() and get_buffer() never ask for more than this
    protocol._ssl_buffer = bytearray(size)
    protocol._ssl_buffer_view = memoryview(protocol._ssl_buffer)


class _Client(ClientXMPP):
    """slixmpp's client, with a small TLS read buffer once STARTTLS has completed and limits on the
    stanzas it reads: over ``max_stanza_bytes``, nested deeper than ``max_depth`` or holding more than
    ``max_elements`` elements, the connection is
    dropped (and the owner reconnects, as after any drop).

    slixmpp parses the whole stream in one ElementTree pull parser (``data_received``) and keeps a
    stanza's elements until its end tag: with no limit, one unterminated stanza from a broken or
    hostile server grows the bridge's memory for as long as the server writes (RFC 6120 13.12 lets
    an entity limit what it accepts). Bytes are counted per read and depth per start tag, so a
    normal stanza costs a few comparisons.
    """

    def __init__(self, jid: str, password: str, *, max_stanza_bytes: int = MAX_STANZA_BYTES,
                 max_depth: int = MAX_DEPTH, max_elements: int = MAX_ELEMENTS, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.max_stanza_bytes, self.max_depth, self.max_elements = max_stanza_bytes, max_depth, max_elements
        self.stanza_bytes = 0  # read since the stream (re)started or the last stanza ended
        self.stanza_elements = 0  # started since then
        self.cut = False  # over a limit or not well-formed: the rest of this connection's input is ignored

    async def start_tls(self) -> bool:
        done: bool = await super().start_tls()
        if done:
            shrink_tls_read_buffer(self.transport, TLS_READ_BUFFER)
        return done

    def init_parser(self) -> None:
        """A new parser for each connection and stream restart (STARTTLS, SASL): the counts restart."""
        super().init_parser()
        self.parser = _StanzaParser(self)
        self.stanza_bytes, self.stanza_elements, self.cut = 0, 0, False

    def data_received(self, data: bytes | str) -> None:
        """slixmpp's, one piece of at most FEED_PIECE bytes at a time, then the byte limit.

        The count goes back to 0 at each stanza's end (``_StanzaParser``), so a stanza within the limit
        always passes and an endless one is cut after at most the limit plus one piece.
        """
        if len(data) > FEED_PIECE:
            for start in range(0, len(data), FEED_PIECE):
                if self.cut:
                    return
                self.data_received(data[start:start + FEED_PIECE])
            return
        if self.cut:
            return
        self.stanza_bytes += len(data)
        super().data_received(data)
        if self.stanza_bytes > self.max_stanza_bytes and not self.cut:
            self.over_limit(f"a stanza over {self.max_stanza_bytes} bytes")

    def over_limit(self, what: str) -> None:
        """Drop the connection: ``what`` broke the stream limits (RFC 6120 4.9.3.14, policy-violation)."""
        self.cut = True
        log.warning("%s: %s from %s; dropping the connection", self.boundjid, what, self.custom_address)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(POLICY_VIOLATION)  # abort() discards whatever the socket did not take at once
        self.disconnect_reason = what
        self.abort()  # "disconnected" follows: AgentConnection reconnects as after any drop


class _StanzaParser(ET.XMLPullParser):
    """slixmpp's pull parser (start and end events), with the depth limit and the per-stanza byte count.

    slixmpp counts the depth in ``xml_depth`` as it takes each event (the stream element is 1, a
    stanza 2), so at a start event ``xml_depth`` is the new element's depth within its stanza.
    """

    def __init__(self, client: _Client) -> None:
        super().__init__(("start", "end"))
        self._client = client

    def read_events(self) -> Iterator[Any]:
        """The parser's events, stopping at the first element deeper than the limit."""
        client = self._client
        try:
            for event in super().read_events():
                if event[0] == "start":
                    client.stanza_elements += 1
                    if client.xml_depth > client.max_depth:
                        client.over_limit(f"a stanza nested deeper than {client.max_depth} elements")
                        return
                    if client.stanza_elements > client.max_elements:
                        client.over_limit(f"a stanza of more than {client.max_elements} elements")
                        return
                elif client.xml_depth == 2:  # a stanza's end tag: its bytes and elements are slixmpp's now
                    client.stanza_bytes = client.stanza_elements = 0
                yield event
        except ET.ParseError:
            client.cut = True  # slixmpp sends not-well-formed and disconnects; later pieces would repeat it
            raise


def backoff_delay(attempt: int, low: float, high: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): exponential, full jitter, in [low, high].

    Jitter spreads the reconnects of every agent on a node that went down (docs/operations.md).
    """
    return backoff.delay(attempt + 1, low, high, floor=low, rand=rand)


class _RedactSasl(logging.Filter):
    """slixmpp logs every byte it sends at DEBUG; SASL PLAIN carries the password (docs/security.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
                "xmpp-sasl" in text and ("<auth" in text or "<response" in text)
                for text in map(str, record.args)):
            record.args = ("[SASL credentials redacted]",)
        return True


SASL_FILTER = _RedactSasl()


class AgentConnection:
    """One agent's XMPP session: presence, keepalive, pubsub events, reconnects. Built by the hub."""

    def __init__(self, hub: NotifyHub, *, user: str, password: str, host: str, port: int, domain: str,
                 tls: str, pubsub: str, on_update: OnUpdate, on_state: OnState,
                 route: Route | None = None) -> None:
        self.hub, self.host, self.port, self.domain, self.pubsub = hub, host, port, domain, pubsub
        self._user, self._route = user, route
        self.jid = f"{user}@{domain}/cti-{secrets.token_hex(6)}"  # unique resource (docs/finesse.md 9.2)
        self._down_since = 0.0
        self._password, self._tls = password, tls
        self._on_update, self._on_state = on_update, on_state
        self._client: ClientXMPP | None = None
        self._pending: asyncio.Future[None] | None = None  # outcome of the sign-in in progress
        self._auth_refused = False
        self._up = False
        self._closed = False
        self._finesse = ""
        self._keepalive_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """True while the session is up (signed in, presence sent)."""
        return self._up

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context the client uses: the hub's, shared by every connection."""
        return self._xmpp.ssl_context

    @property
    def _xmpp(self) -> ClientXMPP:
        assert self._client is not None, "built in the loop by NotifyHub.connect"
        return self._client

    def close(self, timeout: float = 5.0) -> None:
        """Send unavailable presence and disconnect, without reconnecting. Thread-safe; idempotent.

        From a callback (the loop thread) it only schedules the close.
        """
        if threading.current_thread() is self.hub._thread:
            self.hub._submit(self._close())
        else:
            self.hub._run(self._close(), timeout)

    def failover(self) -> None:
        """Leave the current node (it is out of service): drop the session and reconnect where the
        route says, after the usual jittered delay. Thread-safe; does nothing while not connected."""
        def drop() -> None:
            if self._up and not self._closed and self._client is not None:
                log.info("%s: leaving %s:%d (node out of service)", self.jid, self.host, self.port)
                self._client.abort()
        loop = self.hub._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(drop)

    # -- everything below runs in the hub's loop ---------------------------------------------------

    def _build(self) -> None:
        client = _Client(self.jid, self._password, ssl_context=self.hub.ssl_context,
                         max_stanza_bytes=self.hub.max_stanza_bytes, max_depth=self.hub.max_depth,
                         max_elements=self.hub.max_elements)
        client.enable_direct_tls = False
        client.enable_starttls = self._tls == "starttls"
        client.enable_plaintext = self._tls == "none"
        client.max_redirects = -1  # no see-other-host: where and when to reconnect is our policy's call
        mechanisms = client.plugin["feature_mechanisms"]
        mechanisms.use_mechs = set(MECHANISMS)
        # With "starttls" the defaults refuse PLAIN and SCRAM before TLS, so a server that does not
        # offer STARTTLS never sees the password. "none" is for loopback only (checked by the hub).
        mechanisms.unencrypted_plain = self._tls == "none"
        client.register_plugin("xep_0199")  # answers the server's pings; sends ours
        client.register_handler(Callback("finesse-pubsub", MatchXPath(f"{{jabber:client}}message/{EVENT}event"),
                                         self._on_message))
        for event, handler in (("session_start", self._on_session_start), ("failed_auth", self._on_failed_auth),
                               ("failed_all_auth", self._on_failed_all_auth),
                               ("connection_failed", self._on_connection_failed),
                               ("ssl_invalid_chain", self._on_bad_certificate),
                               ("disconnected", self._on_disconnected), ("presence", self._on_presence)):
            client.add_event_handler(event, handler)
        self._client = client

    async def _sign_in(self) -> None:
        """One connection attempt; raises BadCredentials, Unavailable or Timeout."""
        client = self._xmpp
        self._pending = asyncio.get_running_loop().create_future()
        self._auth_refused = False
        client.connect(self.host, self.port)  # the address given, no DNS SRV
        try:
            await asyncio.wait_for(self._pending, self.hub.connect_timeout)
        except BaseException as exc:
            self._pending = None
            client.cancel_connection_attempt()
            client.abort()
            if isinstance(exc, TimeoutError):
                raise Timeout(f"no XMPP session with {self.host}:{self.port} within "
                              f"{self.hub.connect_timeout} s") from exc
            raise
        self._pending = None

    def _settle(self, error: FinesseError | None) -> None:
        if self._pending is not None and not self._pending.done():
            if error is None:
                self._pending.set_result(None)
            else:
                self._pending.set_exception(error)

    def _on_session_start(self, _: Any) -> None:
        self._xmpp.send_presence()  # Finesse watches it (docs/finesse.md 9.2, 9.8)
        self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalive(first=True))

    async def _keepalive(self, first: bool = False) -> None:
        """A ping round trip now (the server has then seen our presence), then one every interval."""
        ping, interval, domain = self._xmpp.plugin["xep_0199"], self.hub.ping_interval, JID(self.domain)
        while True:
            try:
                await ping.ping(domain, timeout=self.hub.connect_timeout if first else interval)
            except IqTimeout:
                log.warning("%s: ping unanswered; dropping the connection", self.jid)
                self._xmpp.abort()
                return
            except IqError:
                pass  # an error reply is a reply: the stream is alive
            if first:
                first, self._up = False, True
                self._state("xmpp", "connected")
                self._settle(None)
            await asyncio.sleep(interval)

    def _on_failed_auth(self, _: Any) -> None:
        self._auth_refused = True

    def _on_failed_all_auth(self, _: Any) -> None:
        # Nothing tried means no acceptable mechanism: STARTTLS missing, or the server offers neither.
        self._settle(BadCredentials() if self._auth_refused else
                     Unavailable(f"{self.host}:{self.port} offers no acceptable sign-in (is STARTTLS on?)"))

    def _on_connection_failed(self, reason: Any) -> None:
        self._xmpp.cancel_connection_attempt()  # our policy retries, not slixmpp's
        self._settle(Unavailable(f"cannot connect to {self.host}:{self.port}: {reason}"))

    def _on_bad_certificate(self, exc: Any) -> None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._settle(Unavailable(f"TLS certificate for {self.domain} not trusted: {exc.verify_message}"))
        self._settle(Unavailable(f"TLS with {self.host}:{self.port} failed: {exc}"))
        self._xmpp.abort()

    def _on_disconnected(self, reason: Any) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        was_up, self._up, self._finesse = self._up, False, ""
        if isinstance(reason, ssl.SSLError):  # the handshake failure usually arrives here first
            self._on_bad_certificate(reason)
        self._settle(Unavailable(f"{self.host}:{self.port} closed the connection during sign-in"))
        if was_up and not self._closed:
            self._down_since = asyncio.get_running_loop().time()
            self._state("xmpp", "disconnected")
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Jittered backoff; before each attempt the route (failover) says which node, if any."""
        attempt, waiting = 0, False
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._state("xmpp", "reconnecting")
            await asyncio.sleep(backoff_delay(attempt, self.hub.reconnect_min, self.hub.reconnect_max))
            if self._closed:
                return
            if self._route is not None:
                target = self._route(self.host, self.port, loop.time() - self._down_since)
                if target is None:  # no node in service: wait for one (docs/finesse.md 10.2)
                    if not waiting:
                        waiting = True
                        self._state("xmpp", "waiting")
                    attempt = min(attempt + 1, 3)  # ready to go soon (jittered) once a node is back
                    continue
                waiting = False
                if (target[0], target[1]) != (self.host, self.port):  # the same node keeps its domain
                    if self._tls == "none" and not is_loopback(target[0]):
                        log.warning("%s: not failing over to %s in plaintext", self.jid, target[0])
                    else:
                        self._move_to(*target)
            try:
                async with self.hub._reconnect_slots():
                    await self._sign_in()
                return
            except BadCredentials:
                log.warning("%s: credentials refused on reconnect; giving up", self.jid)
                self._state("xmpp", "failed")
                return
            except FinesseError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.jid, attempt + 1, exc.message)
                attempt += 1

    def _move_to(self, host: str, port: int, domain: str, pubsub: str) -> None:
        """Another node: another XMPP domain, so a new JID and a new client (docs/finesse.md 10.3)."""
        old = self._client
        if old is not None and old._run_out_filters is not None:
            old._run_out_filters.cancel()
        log.info("%s: failing over to %s:%d", self.jid, host, port)
        self.host, self.port, self.domain, self.pubsub = host, port, domain, pubsub
        self.jid = f"{self._user}@{domain}/cti-{secrets.token_hex(6)}"
        self._build()
        self._state("xmpp", "failover")

    def _on_presence(self, presence: Any) -> None:
        if presence["from"].bare.lower() != f"finesse@{self.domain}".lower():
            return
        kind = presence["type"]
        state = "available" if kind == "available" else "unavailable" if kind == "unavailable" else ""
        if state and state != self._finesse:
            self._finesse = state
            self._state("finesse", state)

    def _on_message(self, message: Any) -> None:
        """Pubsub events only from the pubsub service; hostile payloads are dropped (docs/security.md)."""
        if message["from"].bare.lower() != self.pubsub.lower():
            log.warning("%s: pubsub event from %s ignored", self.jid, message["from"])
            return
        for items in message.xml.iter(f"{EVENT}items"):
            node = items.get("node", "")
            for item in items.iter(f"{EVENT}item"):
                payload = item.findtext(f"{PUBSUB}notification")
                if payload is None:
                    continue
                try:
                    update = parse_update(payload)
                except XmlError as exc:  # the reason, never the payload
                    log.warning("%s: dropped a notification on %s: %.200s", self.jid, node, exc)
                    continue
                if self._closed:
                    return
                try:
                    self._on_update(node, update)
                except Exception:
                    log.exception("%s: on_update raised", self.jid)

    def _state(self, kind: str, state: str) -> None:
        if self._closed:
            return
        try:
            self._on_state(kind, state)
        except Exception:
            log.exception("%s: on_state(%r, %r) raised", self.jid, kind, state)

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hub._forget(self)
        for task in (self._keepalive_task, self._reconnect_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        client = self._client
        if client is None:
            return
        if client.transport is not None:
            gone = client.disconnected
            if self._up:
                client.send_presence(ptype="unavailable")
            client.disconnect(wait=CLOSE_WAIT)
            try:
                await asyncio.wait_for(gone, CLOSE_WAIT + 1)
            except TimeoutError:
                client.abort()
        client.cancel_connection_attempt()
        if client._run_out_filters is not None:  # slixmpp's send task holds the client forever
            client._run_out_filters.cancel()
        self._up = False
