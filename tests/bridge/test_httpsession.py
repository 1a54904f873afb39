"""bridge/httpsession.py: every session ignores the environment and verifies TLS."""
from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from bridge.httpsession import hardened_session


def test_the_environment_is_not_read_and_tls_is_verified(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a proxy that is not there
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "attacker-ca.pem"))
    session = hardened_session()
    assert session.trust_env is False and session.verify is True
    settings = session.merge_environment_settings("https://finesse.example.com", {}, None, None, None)
    assert settings["proxies"] == {} and settings["verify"] is True


def test_a_ca_bundle_and_an_adapter_for_both_schemes():
    adapter = HTTPAdapter()
    session = hardened_session(verify="/etc/ssl/finesse-ca.pem", adapter=adapter)
    assert session.verify == "/etc/ssl/finesse-ca.pem"
    assert session.get_adapter("https://a.example") is adapter and session.get_adapter("http://127.0.0.1") is adapter


def test_verification_cannot_be_turned_off():
    with pytest.raises(ValueError, match="cannot be turned off"):
        hardened_session(verify=False)
    assert isinstance(hardened_session(), requests.Session)
