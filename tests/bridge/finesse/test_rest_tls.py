"""FinesseRest over HTTPS: the certificate chain and the host name are checked (the shared pool's
SSLContext, bridge/finesse/rest.py), on a real TLS server on loopback."""
from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from bridge.errors import Unavailable
from bridge.finesse.rest import FinesseNodes, FinesseRest, NodeAddress
from simulator.tls import make_certificate, server_context

USER_XML = b"<User><id>1001</id><firstName>Ada</firstName><extension>71001</extension><state>NOT_READY</state></User>"


class _Finesse(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(USER_XML)))
        self.end_headers()
        self.wfile.write(USER_XML)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_finesse(tmp_path: Any) -> Iterator[tuple[int, str]]:
    """An HTTPS server on 127.0.0.1 whose certificate names localhost and 127.0.0.1 only."""
    cert, key = make_certificate(["localhost"], str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Finesse)
    server.socket = server_context(cert, key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _rest(url: str, ca_bundle: str | None) -> FinesseRest:
    node = NodeAddress.from_config({"url": url, "xmpp": "127.0.0.1:5222"})
    return FinesseRest(FinesseNodes([node]), "1001", "pw", ca_bundle=ca_bundle, timeout=(2, 2))


def test_a_trusted_certificate_for_the_host_is_accepted(https_finesse):
    port, cert = https_finesse
    for host in ("localhost", "127.0.0.1"):
        with _rest(f"https://{host}:{port}", cert) as rest:
            assert rest.get_user("1001").firstName == "Ada"


def test_a_certificate_not_in_the_bundle_is_refused(https_finesse):
    port, _ = https_finesse
    with _rest(f"https://localhost:{port}", None) as rest, pytest.raises(Unavailable):
        rest.get_user("1001")  # the simulator's throwaway CA is not among certifi's


def test_a_certificate_for_another_host_is_refused(https_finesse, tmp_path):
    port, _ = https_finesse
    other, _key = make_certificate(["fin-b.example.com"], str(tmp_path / "other"))
    with _rest(f"https://localhost:{port}", other) as rest, pytest.raises(Unavailable):
        rest.get_user("1001")  # signed by a CA we trust for nothing here: chain refused
    # the right chain, but reached by a name the certificate does not carry
    port_, cert = https_finesse
    with _rest(f"https://127.0.0.2:{port_}", cert) as rest, pytest.raises(Unavailable):
        rest.get_user("1001")


def test_verification_cannot_be_turned_off_by_the_caller(https_finesse):
    port, _ = https_finesse
    with _rest(f"https://localhost:{port}", None) as rest:
        rest._verify = False  # what requests would take as "do not verify"
        with pytest.raises(Unavailable):
            rest.get_user("1001")
        tls = rest.nodes.adapter(None).tls
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
