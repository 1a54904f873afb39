"""XMPP with STARTTLS: the simulator's generated certificate, verified by the client."""
from __future__ import annotations

import socket
import ssl

import pytest
import requests

from simulator.server import Simulator

from .conftest import PASSWORD, make_config
from .harness import XmppAgent


@pytest.fixture
def tls_sim(tmp_path):
    simulator = Simulator(make_config(xmpp_tls=True, xmpp_require_tls=True, tls_dir=str(tmp_path))).start_in_thread()
    yield simulator
    simulator.stop_thread()


def test_starttls_with_the_served_certificate_carries_notifications(tls_sim, xmpp_loop, tmp_path):
    base = f"http://127.0.0.1:{tls_sim.primary.rest_port}"
    pem = requests.get(base + "/sim/api/tls", timeout=5)
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN CERTIFICATE-----")
    ca = tmp_path / "trusted.pem"
    ca.write_text(pem.text)
    client = XmppAgent(xmpp_loop, "1001", PASSWORD, tls_sim.primary.xmpp_port, tls_sim.primary.host, ca_file=str(ca))
    try:
        assert client.connect()
        assert client.client is not None and isinstance(client.client.socket, (ssl.SSLObject, ssl.SSLSocket))
        login = requests.put(base + "/finesse/api/User/1001", auth=("1001", PASSWORD),
                             data="<User><state>LOGIN</state><extension>71001</extension></User>", timeout=5)
        assert login.status_code == 202
        assert client.wait_user("NOT_READY").findtext("extension") == "71001"
    finally:
        client.disconnect()


def test_no_sign_in_mechanism_is_offered_before_tls(tls_sim):
    with socket.create_connection(("127.0.0.1", tls_sim.primary.xmpp_port), timeout=5) as sock:
        sock.sendall(f"<stream:stream to='{tls_sim.primary.host}' xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
        features = b""
        while b"</stream:features>" not in features:
            chunk = sock.recv(4096)
            assert chunk, "closed before the stream features"
            features += chunk
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in features and b"<required/>" in features
    assert b"mechanism" not in features
