"""The one way the bridge makes a ``requests.Session`` (Finesse REST, webhooks).

Hardened the same way everywhere: nothing is read from the environment (``trust_env`` off: no
proxy variables, no ``.netrc`` credentials, no ``REQUESTS_CA_BUNDLE`` swapping the CA), TLS is
always verified (against the system's CAs or a given bundle; there is no way to turn it off), and
an adapter of the caller's (a shared pool, an address guard) serves both schemes.
"""
from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


def hardened_session(*, verify: str | bool = True, adapter: HTTPAdapter | None = None) -> requests.Session:
    """A session that ignores the environment and verifies TLS; ``verify``: True or a CA bundle's path."""
    if verify is False:
        raise ValueError("TLS verification cannot be turned off")
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    if adapter is not None:
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session
