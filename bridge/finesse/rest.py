"""Finesse REST over requests: one session per agent, node failover, errors translated in one place.

The only module that imports requests for Finesse (one module per outside system). Credentials stay in memory, in
the agent's ``requests.Session``: never in URLs, logs, exception messages or reprs (docs/security.md).
TLS is always verified, against ``ca_bundle`` when one is given; plain http only on loopback.
"""
from __future__ import annotations

import re
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol
from urllib.parse import quote, urlsplit
from xml.etree.ElementTree import Element

import requests
import requests.adapters
import requests.utils
from requests.auth import HTTPBasicAuth
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from .. import logs, redact
from ..httpsession import hardened_session
from ..errors import (ActionRefused, BadCredentials, BridgeError, FinesseError, InvalidParams, NoSuchCall, Timeout,
                      TooManyAttempts, Unavailable)
from . import model
from .model import Agent, ApiError, Call, ReasonCode, SystemInfo, XmlError, is_loopback

log = logs.get(__name__)
API = "/finesse/api"
DEFAULT_XMPP_PORT = 5222
DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds, as requests takes them
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")




def _check_url(url: object) -> str:
    """A REST base URL, normalised to ``scheme://host[:port]``; ValueError names what is wrong."""
    if not isinstance(url, str) or not url:
        raise ValueError("FINESSE_NODES url: must be a string such as https://finesse.example.com:8445")
    parts = urlsplit(url)
    if parts.username or parts.password:  # the URL is not echoed: it holds a credential
        raise ValueError("FINESSE_NODES url: credentials do not belong in the URL")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"FINESSE_NODES url {url!r}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"FINESSE_NODES url {url!r}: must be https://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"FINESSE_NODES url {url!r}: give only scheme, host and port (no path)")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"FINESSE_NODES url {url!r}: plain http is allowed only on loopback; use https")
    return f"{parts.scheme}://{parts.netloc}"


def _xmpp_address(value: str) -> tuple[str, int]:
    parts = urlsplit("//" + value)
    try:
        port = parts.port or DEFAULT_XMPP_PORT
    except ValueError:
        raise ValueError(f"FINESSE_NODES xmpp {value!r}: bad port") from None
    if not parts.hostname or parts.path or parts.username or parts.query or parts.fragment:
        raise ValueError(f"FINESSE_NODES xmpp {value!r}: must be host:port")
    return parts.hostname, port


@dataclass(frozen=True)
class NodeAddress:
    """One Finesse node: its REST base URL and its XMPP endpoint."""

    url: str
    xmpp_host: str
    xmpp_port: int = DEFAULT_XMPP_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _check_url(self.url))
        if not self.xmpp_host or not 0 < self.xmpp_port < 65536:
            raise ValueError(f"FINESSE_NODES xmpp of {self.url}: bad host or port")

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> NodeAddress:
        """A node from ``{"url": ..., "xmpp": "host:port"}`` (README, FINESSE_NODES); xmpp defaults to url host:5222."""
        if not isinstance(entry, Mapping):
            raise ValueError("FINESSE_NODES: each entry must be an object with url and xmpp")
        unknown = sorted(set(entry) - {"url", "xmpp"})
        if unknown:
            raise ValueError(f"FINESSE_NODES: unknown key(s) {unknown}; expected url and xmpp")
        url = _check_url(entry.get("url"))
        xmpp = entry.get("xmpp")
        if xmpp is None:
            host, port = urlsplit(url).hostname or "", DEFAULT_XMPP_PORT
        elif isinstance(xmpp, str) and xmpp:
            host, port = _xmpp_address(xmpp)
        else:
            raise ValueError("FINESSE_NODES xmpp: must be a string host:port")
        return cls(url, host, port)


class NodeGate(Protocol):
    """What REST asks of the failover watcher (``bridge.failover.NodeWatcher``)."""

    def in_service(self, node: NodeAddress) -> bool: ...

    def learn(self, node: NodeAddress, info: SystemInfo) -> None: ...

    def suspect(self, node: NodeAddress | None) -> None: ...


class _SharedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with one verifying SSLContext built once (requests' documented hook).

    requests otherwise works out the TLS settings of every request again, a stat of the CA bundle
    among them: about a tenth of a sign-in's CPU. Verification cannot be turned off here: the
    context checks the certificate chain (the bundle, else certifi's, as requests does) and the
    host name, whatever ``verify`` a caller passes.
    """

    def __init__(self, ca_bundle: str | None, **kwargs: Any) -> None:
        self.tls = ssl.create_default_context(cafile=ca_bundle or requests.utils.DEFAULT_CA_BUNDLE_PATH)
        super().__init__(**kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # The pool's SSLContext carries the trust: always required, nothing loaded per request, and
        # never CERT_NONE (which would be set on the shared context) whatever ``verify`` says.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: Any,
                                             cert: Any = None) -> Any:
        url = urlsplit(request.url or "")
        host = {"scheme": url.scheme.lower(), "host": url.hostname, "port": url.port}
        return host, {"ssl_context": self.tls, "cert_reqs": "CERT_REQUIRED"}


class FinesseNodes:
    """The configured nodes and the preferred one, shared by every agent of a process.

    With a ``gate`` (the failover watcher) requests go only to nodes it reports in service, and
    fail at once with Unavailable when there is none.
    """

    def __init__(self, nodes: Iterable[NodeAddress], *, pool_size: int = 64) -> None:
        self.nodes = tuple(nodes)
        if not self.nodes:
            raise ValueError("FINESSE_NODES: at least one node is required")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("FINESSE_NODES: a node is listed twice")
        self._lock = threading.Lock()
        self._current = 0
        self._failed: set[NodeAddress] = set()
        self.gate: NodeGate | None = None
        self._pool_size = max(1, pool_size)
        self._adapters: dict[str | None, _SharedAdapter] = {}

    def adapter(self, ca_bundle: str | None) -> _SharedAdapter:
        """The connection pool every agent's session shares (one per CA bundle; in practice one).

        Each request carries its own credentials and cookies stay per session, so a few kept-alive
        connections per node serve every agent, instead of one per agent (docs/performance.md)."""
        with self._lock:
            adapter = self._adapters.get(ca_bundle)
            if adapter is None:
                adapter = self._adapters[ca_bundle] = _SharedAdapter(
                    ca_bundle, pool_connections=max(2, len(self.nodes)), pool_maxsize=self._pool_size)
            return adapter

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]]) -> FinesseNodes:
        """Nodes from the ``FINESSE_NODES`` list."""
        return cls(NodeAddress.from_config(entry) for entry in entries)

    def current(self) -> NodeAddress:
        """The node to try first."""
        with self._lock:
            return self.nodes[self._current]

    def others(self, node: NodeAddress) -> list[NodeAddress]:
        """Every other node, in configured order after ``node``."""
        i = self.nodes.index(node)
        return list(self.nodes[i + 1:] + self.nodes[:i])

    def order(self) -> list[NodeAddress]:
        """The preferred node, then the others."""
        first = self.current()
        return [first, *self.others(first)]

    def mark_failed(self, node: NodeAddress) -> None:
        """``node`` failed: prefer the next node not known to have failed (or simply the next)."""
        with self._lock:
            self._failed.add(node)
            if self.nodes[self._current] != node:
                return
            following = self.others(node)
            target = next((n for n in following if n not in self._failed), following[0] if following else node)
            self._current = self.nodes.index(target)
        if target != node:
            log.warning("Finesse node %s failed; now preferring %s", node.url, target.url)

    def mark_good(self, node: NodeAddress) -> None:
        """``node`` answered; it becomes preferred only if the preferred one has failed."""
        with self._lock:
            self._failed.discard(node)
            if self.nodes[self._current] in self._failed:
                self._current = self.nodes.index(node)


class FinesseReply(Exception):
    """A non-2xx answer from Finesse: the ``__cause__`` of the error we raise for it."""

    def __init__(self, status: int, method: str, path: str, errors: list[ApiError]) -> None:
        self.status, self.method, self.path, self.errors = status, method, path, errors
        first = f" {errors[0].errorType}: {errors[0].message}" if errors else ""
        super().__init__(f"{method} {path}: HTTP {status}{first}")


def _segment(value: str) -> str:
    """One URL path segment, percent-encoded; '', '.' and '..' would change the path."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise InvalidParams("not a valid Finesse id")
    return quote(value, safe="")


def _before_sending(exc: requests.RequestException) -> bool:
    """True when the request surely never reached Finesse (so another node may take it)."""
    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    inner = exc.args[0] if exc.args else None
    return isinstance(inner, MaxRetryError) and isinstance(inner.reason, NewConnectionError)


def _is_read_timeout(exc: Exception) -> bool:
    inner = exc.args[0] if exc.args else None  # a stall mid-body comes as ConnectionError(ReadTimeoutError)
    return isinstance(exc, requests.ReadTimeout) or isinstance(inner, ReadTimeoutError)


def translate(exc: Exception) -> BridgeError:
    """The one place where Finesse's answers and transport failures become our errors."""
    if isinstance(exc, FinesseReply):
        first = exc.errors[0] if exc.errors else ApiError("", "", "")
        data = {"errorType": first.errorType, "errorMessage": first.message, "errorData": first.data}
        if exc.status == 401 and first.errorType.lower() in ("", "authorization failure"):
            # other 401s (Invalid State, Invalid Authorization User Specified) are refusals: 8.3
            return TooManyAttempts(data=data) if "locked" in first.message.lower() else BadCredentials(data=data)
        if exc.status == 429:
            return TooManyAttempts(data=data)
        if exc.status == 404 and exc.path.startswith(f"{API}/Dialog/"):
            return NoSuchCall(data=data)
        if exc.status == 503:
            return Unavailable(data=data)
        if exc.status in (400, 401, 403, 404, 409, 501):
            return ActionRefused(first.message or None, data=data)
        return FinesseError(f"Finesse answered HTTP {exc.status}", data=data)
    if isinstance(exc, XmlError):
        return Unavailable("Finesse sent a document we refuse")
    if isinstance(exc, requests.Timeout) or _is_read_timeout(exc):
        return Timeout()
    if isinstance(exc, requests.ConnectionError):
        return Unavailable()
    return FinesseError(f"Unexpected failure talking to Finesse ({type(exc).__name__})")


class FinesseRest:
    """One signed-in agent's Finesse REST client: one ``requests.Session``, credentials in memory only."""

    def __init__(self, nodes: FinesseNodes, user: str, password: str, *, ca_bundle: str | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, token: str | None = None) -> None:
        self.nodes, self.user, self._timeout = nodes, user, timeout
        self._secrets = tuple(s for s in (password, token) if s)
        self._verify: str | bool = ca_bundle or True  # there is no way to turn verification off
        session = hardened_session(verify=self._verify, adapter=nodes.adapter(ca_bundle))
        session.headers["Accept"] = "application/xml"
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        else:
            # UTF-8, as RFC 7617 section 2.1 lets a server ask (requests would send Latin-1, and
            # fail on any character beyond it)
            session.auth = HTTPBasicAuth(user.encode("utf-8"), password.encode("utf-8"))
        self._session = session

    def __repr__(self) -> str:
        return f"<FinesseRest user={self.user!r} node={self.nodes.current().url!r}>"

    def close(self) -> None:
        """Forget the session (the shared connection pool stays open for the other agents)."""
        self._session.adapters.clear()
        self._session.close()

    def __enter__(self) -> FinesseRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Finesse calls -------------------------------------------------------------------------

    def system_info(self, node: NodeAddress | None = None, *, request_id: str | None = None) -> SystemInfo:
        """SystemInfo of ``node``; without one, of the first IN_SERVICE node, which becomes preferred."""
        if node is not None:
            return self._system_info_of(node, request_id)
        last: FinesseError = Unavailable()
        for candidate in self.nodes.order():
            try:
                info = self._system_info_of(candidate, request_id)
            except Unavailable as exc:
                last = exc
                continue
            if info.status == "IN_SERVICE":
                return info
            last = Unavailable(f"Finesse node {candidate.url} is {info.status or 'not in service'}")
        raise Unavailable("No Finesse node is in service") from last

    def get_user(self, user_id: str, *, request_id: str | None = None) -> Agent:
        """GET User (docs/finesse.md 5.1)."""
        return model.parse_user(self._get(f"{API}/User/{_segment(user_id)}", "User", request_id=request_id))

    def sign_in(self, user_id: str, extension: str, *, request_id: str | None = None) -> None:
        """PUT User state LOGIN with the extension (5.2); the agent lands in NOT_READY."""
        self._send("PUT", f"{API}/User/{_segment(user_id)}", model.user_state_body("LOGIN", extension=extension),
                   request_id)

    def set_state(self, user_id: str, state: str, reason_code_id: str | None = None, *,
                  request_id: str | None = None) -> None:
        """PUT User state READY, NOT_READY (with reason), WORK or WORK_READY (5.3)."""
        if state not in model.SETTABLE_STATES:
            raise InvalidParams(f"state must be one of {', '.join(model.SETTABLE_STATES)}")
        self._send("PUT", f"{API}/User/{_segment(user_id)}", model.user_state_body(state, reason_code_id),
                   request_id)

    def sign_out(self, user_id: str, reason_code_id: str | None = None, *, request_id: str | None = None) -> None:
        """PUT User state LOGOUT (5.4)."""
        self._send("PUT", f"{API}/User/{_segment(user_id)}", model.user_state_body("LOGOUT", reason_code_id),
                   request_id)

    def reason_codes(self, user_id: str, category: str, *, request_id: str | None = None) -> list[ReasonCode]:
        """GET the user's reason codes of ``category`` (NOT_READY or LOGOUT) (5.6)."""
        doc = self._get(f"{API}/User/{_segment(user_id)}/ReasonCodes", "ReasonCodes",
                        params={"category": category}, request_id=request_id)
        return model.parse_reason_codes(doc)

    def wrap_up_reasons(self, user_id: str, *, request_id: str | None = None) -> list[dict[str, str]]:
        """GET the user's wrap-up reasons as ``[{id, label}]`` (5.6)."""
        doc = self._get(f"{API}/User/{_segment(user_id)}/WrapUpReasons", "WrapUpReasons", request_id=request_id)
        return model.parse_wrap_up_reasons(doc)

    def get_dialogs(self, user_id: str, extension: str, *, request_id: str | None = None) -> list[Call]:
        """GET the user's voice dialogs, seen from ``extension`` (6.6)."""
        doc = self._get(f"{API}/User/{_segment(user_id)}/Dialogs", "Dialogs", request_id=request_id)
        return [model.parse_call(item, extension) for item in model.children(doc, "Dialog")]

    def get_dialog(self, dialog_id: str, extension: str, *, request_id: str | None = None) -> Call:
        """GET one dialog (6.6); a dialog that is gone raises NoSuchCall."""
        return model.parse_call(self._get(f"{API}/Dialog/{_segment(dialog_id)}", "Dialog",
                                          request_id=request_id), extension)

    def make_call(self, user_id: str, from_address: str, to_address: str, variables: dict[str, str] | None = None,
                  *, request_id: str | None = None) -> None:
        """POST a MAKE_CALL dialog (6.7)."""
        self._send("POST", f"{API}/User/{_segment(user_id)}/Dialogs",
                   model.make_call_body(from_address, to_address, variables), request_id)

    def dialog_action(self, dialog_id: str, action: str, extension: str, *, to_address: str | None = None,
                      digits: str | None = None, variables: dict[str, str] | None = None,
                      wrap_up_reason: str | None = None, request_id: str | None = None) -> None:
        """PUT a participant action (Finesse's ``requestedAction``, e.g. ANSWER) on a dialog (6.8, 6.9)."""
        body = model.dialog_action_body(action, extension, to_address, digits, variables, wrap_up_reason)
        self._send("PUT", f"{API}/Dialog/{_segment(dialog_id)}", body, request_id)

    # -- plumbing ------------------------------------------------------------------------------

    def _system_info_of(self, node: NodeAddress, request_id: str | None) -> SystemInfo:
        info = model.parse_system_info(self._get(f"{API}/SystemInfo", "SystemInfo", node=node, request_id=request_id))
        if self.nodes.gate is not None:
            self.nodes.gate.learn(node, info)
        (self.nodes.mark_good if info.status == "IN_SERVICE" else self.nodes.mark_failed)(node)
        return info

    def _get(self, path: str, root: str, *, params: dict[str, str] | None = None, request_id: str | None = None,
             node: NodeAddress | None = None) -> Element:
        content = self._send("GET", path, params=params, request_id=request_id, node=node)
        try:
            doc = model.parse_document(content)
            if doc.tag.rsplit("}", 1)[-1].lower() != root.lower():
                raise XmlError(f"expected <{root}>")
        except XmlError as exc:  # the body is never logged: it may be hostile, or personal data
            log.warning("refused a document from Finesse for GET %s (%s)", path, type(exc.__cause__ or exc).__name__)
            raise translate(exc) from exc
        return doc

    def _send(self, method: str, path: str, body: str | None = None, request_id: str | None = None, *,
              params: dict[str, str] | None = None, node: NodeAddress | None = None) -> bytes:
        """One request; on 503 or a connection failure, each other node is tried once (docs/finesse.md 10)."""
        headers = {}
        if request_id is not None:
            if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
                raise InvalidParams("requestId must be 1 to 128 visible ASCII characters")
            headers["requestId"] = request_id
        if body is not None:
            headers["Content-Type"] = "application/xml"
        last: Exception = Unavailable()
        candidates = [node] if node is not None else self.nodes.order()
        gate = self.nodes.gate
        if node is None and gate is not None:
            candidates = [c for c in candidates if gate.in_service(c)]
            if not candidates:  # fail fast: nothing would answer but 503 or a timeout (docs/finesse.md 10.6)
                raise Unavailable("No Finesse node is in service")
        for candidate in candidates:
            try:
                status, content = self._exchange(candidate, method, path, body, params, headers)
            except requests.RequestException as exc:
                exc.request = exc.response = None  # they hold the Authorization header
                if not isinstance(exc, requests.ConnectionError) or _is_read_timeout(exc):
                    raise translate(exc) from exc  # a read timeout is never retried: the action may have happened
                self.nodes.mark_failed(candidate)
                if gate is not None:
                    gate.suspect(candidate)
                if method != "GET" and not _before_sending(exc):
                    raise translate(exc) from exc
                log.warning("Finesse node %s: %s on %s %s", candidate.url, type(exc).__name__, method, path)
                last = exc
                continue
            if status == 503:
                self.nodes.mark_failed(candidate)
                if gate is not None:
                    gate.suspect(candidate)
                log.warning("Finesse node %s: 503 on %s %s", candidate.url, method, path)
                last = FinesseReply(status, method, path, self._api_errors(content))
                continue
            self.nodes.mark_good(candidate)
            if 200 <= status < 300:
                return content
            raise translate(reply := FinesseReply(status, method, path, self._api_errors(content))) from reply
        raise translate(last) from last

    def _exchange(self, node: NodeAddress, method: str, path: str, body: str | None,
                  params: dict[str, str] | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """Status and body (at most the model's size limit plus one byte) of one HTTP exchange."""
        with self._session.request(method, node.url + path, params=params, headers=headers, stream=True,
                                   data=body.encode("utf-8") if body is not None else None,
                                   timeout=self._timeout, verify=self._verify, allow_redirects=False) as response:
            content = bytearray()
            for chunk in response.iter_content(64 * 1024):
                content += chunk
                if len(content) > model.MAX_DOCUMENT_BYTES:
                    break
            log.debug("%s %s%s -> %s", method, node.url, path, response.status_code)
            return response.status_code, bytes(content)

    def _api_errors(self, content: bytes) -> list[ApiError]:
        """An error reply's ApiErrors, with our secrets scrubbed should Finesse ever echo them."""
        try:
            errors = model.parse_api_errors(model.parse_document(content)) if content.strip() else []
        except XmlError:
            return []
        return [ApiError(self._scrub(e.errorType), self._scrub(e.message), self._scrub(e.data)) for e in errors]

    def _scrub(self, value: str) -> str:
        return redact.secrets(value, self._secrets)


class SystemInfoProbe:
    """Unauthenticated GET SystemInfo of one node at a time, for the failover watcher's polling."""

    def __init__(self, *, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self._timeout, self._verify = timeout, ca_bundle or True
        self._session = hardened_session(verify=self._verify)
        self._session.headers["Accept"] = "application/xml"

    def __call__(self, node: NodeAddress) -> SystemInfo:
        """The node's SystemInfo; Unavailable when it does not answer 200 with one."""
        try:
            with self._session.get(node.url + f"{API}/SystemInfo", timeout=self._timeout, verify=self._verify,
                                   allow_redirects=False, stream=True) as response:
                content = response.raw.read(model.MAX_DOCUMENT_BYTES + 1, decode_content=True)
                status = response.status_code
        except requests.RequestException as exc:
            raise translate(exc) from None
        if status != 200:
            raise Unavailable(f"SystemInfo of {node.url}: HTTP {status}")
        try:
            doc = model.parse_document(content)
            if doc.tag.rsplit("}", 1)[-1].lower() != "systeminfo":
                raise XmlError("expected <SystemInfo>")
        except XmlError as exc:
            raise translate(exc) from None
        return model.parse_system_info(doc)

    def close(self) -> None:
        self._session.close()
