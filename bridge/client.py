"""A small Python client for the bridge's JSON-RPC WebSocket (docs/client.md).

For partners' servers, our tests and benchmarks. One reader thread routes responses to the
waiting :meth:`CtiClient.call` by id and queues notifications (and runs :meth:`CtiClient.on`
callbacks); anything it cannot route (an error with ``id: null``, a reply to :meth:`send_raw`) waits
for :meth:`CtiClient.receive_raw`. Params, results and raw frames are never logged: a login's params
hold a password. Needs websocket-client; ``validate=True`` also needs jsonschema.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import websocket

if TYPE_CHECKING:
    from bridge.protocol import ProtocolError

log = logging.getLogger(__name__)

Notification = dict[str, Any]
Callback = Callable[[Notification], None]


class RpcError(Exception):
    """An error response: ``code``, ``message`` and ``data`` as the bridge sent them."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class _Pending:
    """One request waiting for its response."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.event = threading.Event()
        self.response: dict[str, Any] | None = None
        self.error: BaseException | None = None  # connection lost, or the response failed validation


class CtiClient:
    """A connection to the bridge's ``/rpc``.

    :param url: ``ws://host:port/rpc`` or ``wss://...``.
    :param origin: the ``Origin`` header to send (the bridge checks it against its allow list).
    :param timeout: seconds for the handshake and for each :meth:`call` (and the waits' default).
    :param validate: check every received message against ``openrpc.json``; a message that fails
        is raised from the call or wait that receives it, and kept in :attr:`validation_errors`.
    :param sslopt: passed to websocket-client for ``wss://`` (e.g. ``{"ca_certs": path}``).
    :param header: extra handshake headers.
    :param queue_size: notifications kept for :meth:`next_notification`; the oldest go first.
    """

    def __init__(self, url: str, *, origin: str | None = None, timeout: float = 10.0, validate: bool = False,
                 sslopt: dict[str, Any] | None = None, header: list[str] | None = None,
                 queue_size: int = 10000) -> None:
        self.url = url
        self.origin = origin
        self.timeout = timeout
        self.validate = validate
        self.sslopt = sslopt
        self.header = header
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.last_seq: int | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.validation_errors: list[ProtocolError] = []
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._state = threading.Condition()  # guards everything below
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._notes: collections.deque[tuple[Notification, BaseException | None]] = \
            collections.deque(maxlen=queue_size)
        self._raw: collections.deque[str] = collections.deque(maxlen=queue_size)
        self._callbacks: dict[str, list[Callback]] = {}
        self._closed = True
        if validate:
            from bridge import protocol
            protocol.compile_all()  # fail early without jsonschema; compile off the reader thread

    # -- connection -------------------------------------------------------------------------------

    def connect(self) -> CtiClient:
        """Open the WebSocket and start the reader; a closed client may connect again (then resume).

        A refused handshake raises ``ConnectionError`` (the websocket-client error, with its
        ``status_code``, is the ``__cause__``); a refused TCP connection raises ``OSError``.
        """
        if not self._closed:
            raise RuntimeError("already connected")
        try:
            ws = websocket.create_connection(self.url, timeout=self.timeout, origin=self.origin,
                                             sslopt=self.sslopt, header=self.header, enable_multithread=True)
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError(f"handshake with {self.url} timed out") from exc
        except websocket.WebSocketException as exc:  # e.g. 403 for an origin the bridge refuses
            raise ConnectionError(f"handshake with {self.url} failed: {exc}") from exc
        ws.settimeout(None)  # the reader blocks; close() wakes it by shutting the socket down
        with self._state:
            self._ws, self._closed = ws, False
            self.close_code, self.close_reason = None, ""
            self._raw.clear()  # queued notifications stay: the caller may not have seen them yet
        self._reader = threading.Thread(target=self._read, args=(ws,), name="cti-client-reader", daemon=True)
        self._reader.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Send a close frame, wait briefly for the bridge's, then drop the socket."""
        ws, reader = self._ws, self._reader
        if ws is None:
            return
        try:
            with self._send_lock:
                if ws.connected:
                    ws.send_close()
        except (OSError, websocket.WebSocketException):
            pass
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        self._drop(ws)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        self._ws = None

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed by either side)."""
        return self._closed

    def __enter__(self) -> CtiClient:
        return self.connect() if self._closed else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _drop(ws: websocket.WebSocket) -> None:
        sock = ws.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv; close() alone does not on Linux
            except OSError:
                pass
        ws.shutdown()

    # -- sending ----------------------------------------------------------------------------------

    def _send(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        ws = self._ws
        if ws is None or self._closed:
            raise ConnectionError("not connected")
        with self._send_lock:
            ws.send(text)

    @staticmethod
    def _message(method: str, params: dict[str, Any] | None, request_id: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if request_id is not None:
            message["id"] = request_id
        if params:
            message["params"] = params
        return message

    def _exchange(self, calls: list[tuple[str, dict[str, Any] | None]], as_batch: bool,
                  timeout: float | None) -> list[Any]:
        """Send requests (one, or one batch) and wait for each: its result, or an :class:`RpcError`."""
        if threading.current_thread() is self._reader:
            raise RuntimeError("a callback cannot wait for a response (it runs on the reader thread)")
        with self._state:
            if self._closed:
                raise ConnectionError("not connected")
            entries = [(next(self._ids), _Pending(method)) for method, _ in calls]
            self._pending.update(entries)
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            messages = [self._message(m, p, i) for (m, p), (i, _) in zip(calls, entries)]
            self._send(messages if as_batch else messages[0])
            outcomes = []
            for _, pending in entries:
                if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{pending.method}: no response within the timeout")
                if pending.error is not None:
                    raise pending.error
                error = (pending.response or {}).get("error")
                outcomes.append(RpcError(error.get("code", 0), error.get("message", ""), error.get("data"))
                                if isinstance(error, dict) else (pending.response or {}).get("result"))
            return outcomes
        finally:
            with self._state:
                for request_id, _ in entries:
                    self._pending.pop(request_id, None)

    def request(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` with ``params`` (a dict); :meth:`call` with a per-call timeout."""
        outcome = self._exchange([(method, params)], False, timeout)[0]
        if isinstance(outcome, RpcError):
            raise outcome
        return outcome

    def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` with by-name params; the result, or :class:`RpcError`, or ``TimeoutError``."""
        return self.request(method, params)

    def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification (no id, no response)."""
        self._send(self._message(method, params))

    def batch(self, calls: Iterable[tuple[str, dict[str, Any] | None]], *,
              timeout: float | None = None) -> list[Any]:
        """Send calls as one batch; their results in the same order, an :class:`RpcError` for each failure."""
        calls = list(calls)
        return self._exchange(calls, True, timeout) if calls else []

    def send_raw(self, text: str) -> None:
        """Send a frame as is (protocol tests: malformed JSON, odd ids)."""
        self._send(text)

    def receive_raw(self, timeout: float | None = None) -> str:
        """The next frame no call was waiting for (a reply to :meth:`send_raw`, an ``id: null`` error)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._state:
            while not self._raw:
                if self._closed:
                    raise ConnectionError("connection closed")
                if not self._state.wait(deadline - time.monotonic()) and not self._raw:
                    raise TimeoutError("no unrouted message within the timeout")
            return self._raw.popleft()

    # -- notifications ----------------------------------------------------------------------------

    def next_notification(self, timeout: float | None = None) -> Notification:
        """The next notification, the whole message (``{"jsonrpc", "method", "params"}``)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._state:
            while not self._notes:
                if self._closed:
                    raise ConnectionError("connection closed")
                if not self._state.wait(deadline - time.monotonic()) and not self._notes:
                    raise TimeoutError("no notification within the timeout")
            note, error = self._notes.popleft()
        if error is not None:
            raise error
        return note

    def wait_for(self, method: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
        """Skip notifications until one named ``method`` whose params satisfy ``predicate``; its params."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} notification within {timeout}s")
            try:
                note = self.next_notification(remaining)
            except TimeoutError:
                raise TimeoutError(f"no {method} notification within {timeout}s") from None
            params = note.get("params") or {}
            if note.get("method") == method and (predicate is None or predicate(params)):
                return params

    def drain(self) -> list[Notification]:
        """Every notification queued now (skips none, waits for none)."""
        with self._state:
            notes = list(self._notes)
            self._notes.clear()
        return [note for note, _ in notes]

    def on(self, method: str, fn: Callback) -> Callable[[], None]:
        """Run ``fn(message)`` on the reader thread for each ``method`` notification (``"*"``: all).

        Returns a function that unsubscribes. Notifications are queued as well; an exception in
        ``fn`` is logged and the reader goes on. ``fn`` must not wait for a response (``call``):
        hand such work to another thread.
        """
        with self._state:
            self._callbacks.setdefault(method, []).append(fn)

        def off() -> None:
            with self._state:
                fns = self._callbacks.get(method, [])
                if fn in fns:
                    fns.remove(fn)
        return off

    # -- conveniences -----------------------------------------------------------------------------

    def login(self, agent_id: str, password: str, extension: str, **extra: Any) -> dict[str, Any]:
        """``session.login``; the client keeps the session id, resume token and seq (never the password)."""
        result: dict[str, Any] = self.request("session.login", {"agentId": agent_id, "password": password,
                                                                "extension": extension, **extra})
        return result

    def resume(self, token: str | None = None, last_seq: int | None = None) -> dict[str, Any]:
        """``session.resume`` with the kept token and seq unless given; the new token is kept.

        With ``replayed``, the missed notifications follow in order; with ``snapshot``,
        :attr:`last_seq` becomes the snapshot's ``seq``.
        """
        token = token or self.resume_token
        seq = self.last_seq if last_seq is None else last_seq
        if token is None:
            raise ValueError("no resume token: log in first or pass one")
        result: dict[str, Any] = self.request("session.resume", {"resumeToken": token, "lastSeq": seq or 0})
        return result

    def _absorb(self, method: str, result: Any) -> None:
        """Keep what a login or resume result says, on the reader thread, so it is ordered with notifications."""
        if not isinstance(result, dict):
            return
        if method == "session.login":
            self.session_id = result.get("sessionId", self.session_id)
            if isinstance(result.get("seq"), int):
                self.last_seq = result["seq"]
        snapshot = result.get("snapshot")
        if isinstance(snapshot, dict) and isinstance(snapshot.get("seq"), int):
            self.last_seq = snapshot["seq"]
        if isinstance(result.get("resumeToken"), str):
            self.resume_token = result["resumeToken"]

    # -- the reader -------------------------------------------------------------------------------

    def _read(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                opcode, frame = ws.recv_data_frame(False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    data = frame.data or b""
                    if len(data) >= 2:
                        self.close_code = int.from_bytes(data[:2], "big")
                        self.close_reason = data[2:].decode("utf-8", "replace")
                    break
                data = frame.data
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                self._dispatch(text)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            log.debug("reader stopped: %s", type(exc).__name__)
        finally:
            with self._state:
                self._closed = True
                pending, self._pending = self._pending, {}
                self._state.notify_all()
            for item in pending.values():
                item.error = ConnectionError(f"{item.method}: connection closed before the response")
                item.event.set()
            self._drop(ws)

    def _check(self, message: Any, method: str | None = None) -> ProtocolError | None:
        if not self.validate:
            return None
        from bridge import protocol  # only with validate: partners need websocket-client alone
        try:
            protocol.validate_message(message, method)
        except protocol.ProtocolError as exc:
            self.validation_errors.append(exc)
            return exc
        return None

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        items = message if isinstance(message, list) else [message]
        routed = False
        for item in items:
            if not isinstance(item, dict):
                continue
            if "method" in item and "id" not in item:
                self._deliver(item)
                routed = True
                continue
            with self._state:
                pending = self._pending.pop(item["id"], None) if isinstance(item.get("id"), int) else None
            if pending is not None:
                pending.error = self._check(item, pending.method if "result" in item else None)
                if pending.error is None and pending.method in ("session.login", "session.resume"):
                    self._absorb(pending.method, item.get("result"))
                pending.response = item
                pending.event.set()
                routed = True
        if not routed:
            error = self._check(message) if message is not None else None
            with self._state:
                self._raw.append(text)
                self._state.notify_all()
            if error is not None:
                log.warning("unrouted message failed validation: %s", error.message)

    def _deliver(self, note: Notification) -> None:
        error = self._check(note)
        params = note.get("params")
        if isinstance(params, dict) and isinstance(params.get("seq"), int):
            self.last_seq = params["seq"]
        with self._state:
            self._notes.append((note, error))
            self._state.notify_all()
            fns = list(self._callbacks.get(note.get("method", ""), [])) + list(self._callbacks.get("*", []))
        if error is not None:
            return
        for fn in fns:
            try:
                fn(note)
            except Exception:
                log.exception("callback for %s failed", note.get("method"))
