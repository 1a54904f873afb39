"""A webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread, recording every request.

It answers from a script (``statuses``: one status per request, then ``default``), can redirect
(``redirect_to`` for 3xx answers), and can be stopped and started again on the same port, so a
test shows a receiver that is down and then comes back. It also verifies Standard Webhooks
signatures, written here from the specification rather than taken from the bridge.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}``
    with the secret's bytes (base64 after ``whsec_``), compared with each ``v1,<base64>`` given."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [part.split(",", 1) for part in headers["webhook-signature"].split(" ")]
    return any(version == "v1" and hmac.compare_digest(sig, expected) for version, sig in given)


class Receiver:
    """``Receiver().start()``; ``url(path)``; ``wait_for(n)``; ``stop()``; ``start()`` again."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.default = 200
        self.redirect_to = ""
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._changed:
                    status = receiver.statuses.popleft() if receiver.statuses else receiver.default
                    receiver.requests.append(Received(self.command, self.path,
                                                      {k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._changed.notify_all()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # reuses the port (SO_REUSEADDR)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Received]:
        """At least ``count`` requests (to ``path`` if given), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    assert len(got) >= count, f"expected {count} requests, got {len(got)}: {got}"
                    return got
                self._changed.wait(left)
