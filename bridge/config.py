"""Settings: built-in defaults < TOML file < ``CTI_*`` environment < the mapping given to create_app.

Keys are upper case (``FINESSE_NODES``); the TOML file writes them in lower case
(``finesse_nodes``). Environment values are parsed as JSON when they parse, like Flask's
``from_prefixed_env``. Unknown keys and bad values stop the start with ``ConfigError`` naming the key.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from typing import Any, Mapping
from urllib.parse import urlsplit

from .store import Store

DEFAULTS: dict[str, Any] = {
    # Finesse
    "FINESSE_NODES": [],  # [{"url": "https://fin-a:8445", "xmpp": "fin-a:5222"}, ...]
    "FINESSE_CA_BUNDLE": None,  # a CA file for Finesse's certificates; verification is always on
    "FINESSE_CONNECT_TIMEOUT": 3.05,
    "FINESSE_READ_TIMEOUT": 10.0,
    "FINESSE_HTTP_CONNECTIONS": 64,  # kept-alive REST connections per node, shared by every agent
    "SYSTEMINFO_MAX_AGE_SECONDS": 5.0,  # a sign-in reuses a SystemInfo read this recently (0: always GET)
    "SIGNIN_MAX_CONCURRENT": 16,  # new sign-ins in flight toward Finesse; the others wait their turn
    # Failed sign-ins (bridge/throttle.py, docs/security.md): at most this many per agent and per client
    # address within the window, then 4029 with retryAfter, answered by the bridge. Keep twice the
    # per-agent figure below Finesse's lockout threshold (an agent's loginId and loginName count apart
    # until it has signed in once), and the window at least Finesse's time to forget failures.
    "SIGNIN_MAX_FAILURES_PER_AGENT": 2,
    "SIGNIN_MAX_FAILURES_PER_ADDRESS": 20,  # behind a proxy every browser shares its address: raise it
    "SIGNIN_FAILURE_WINDOW_SECONDS": 300.0,
    "SIGNIN_BACKOFF_SECONDS": 1.0,  # wait after a failure, doubling with each further one in the window
    "XMPP_TLS": "auto",  # auto: STARTTLS, except plain on loopback hosts; starttls; none (loopback only)
    "XMPP_PING_SECONDS": 10.0,
    "XMPP_CONNECT_TIMEOUT": 10.0,
    "XMPP_RECONNECT_MIN_SECONDS": 1.0,
    "XMPP_RECONNECT_MAX_SECONDS": 30.0,
    # What one XMPP stanza from Finesse may make the bridge hold (bridge/finesse/xmppclient.py); over
    # either, the connection is dropped and reconnects. Bytes, counted from the previous stanza's end:
    # the largest Update the bridge parses is 256 KiB (model.py), e.g. Dialogs of 53 calls with ten call
    # variables and 2,000 bytes of ECC data each, 316 KiB once escaped into its stanza; markup-only XML
    # escapes to under three times its size
    "XMPP_MAX_STANZA_BYTES": 1024 * 1024,
    # Elements nested in one stanza: Finesse's notifications are 5 deep (the Update travels as text)
    "XMPP_MAX_DEPTH": 64,
    # Elements in one stanza: a flat megabyte of tiny elements fits the byte limit yet parses to about 20 MB
    "XMPP_MAX_ELEMENTS": 10_000,
    # Node failover (bridge/failover.py, docs/finesse.md 10): SystemInfo polling while a node is suspect, the
    # most reconnects and re-syncs in flight toward Finesse, and how long XMPP may refuse an in-service
    # node before its agents move to the other node (well inside Finesse's 60 s presence grace)
    "FAILOVER_POLL_SECONDS": 5.0,
    "FAILOVER_MAX_CONCURRENT": 50,
    "FAILOVER_SWITCH_SECONDS": 15.0,
    # Browser side
    # Page origins that may open the WebSocket; the bridge's own is allowed too: PUBLIC_URL's, or without it
    # a loopback one (127.0.0.0/8, ::1, localhost), never whatever a request's Host header says (bridge/ws.py)
    "ALLOWED_ORIGINS": [],
    "SESSION_GRACE_SECONDS": 120.0,
    "REPLAY_BUFFER_EVENTS": 500,
    "REPLAY_BUFFER_SECONDS": 120.0,
    "MAX_MESSAGE_BYTES": 64 * 1024,
    "MAX_BATCH": 20,
    "MAX_SOCKETS_PER_AGENT": 32,  # one agent's sockets (tabs, gadgets) at once; each event goes to every one
    # Call variables a client may write (call.make, call.updateVariables; docs/security.md): names, or
    # a prefix ending in "*" ("user.crm.*"). ECC variables (user.*) belong to the routing scripts and
    # are not writable unless listed.
    "WRITABLE_VARIABLES": [f"callVariable{n}" for n in range(1, 11)],
    # No longer used (WS_MAX_BUFFER_BYTES bounds a slow socket in bytes); still accepted so that older
    # config files start.
    "SEND_QUEUE_LIMIT": 1000,
    "WS_PING_SECONDS": 25.0,
    # permessage-deflate (bridge/ws.py, docs/performance.md): "off" (the browser's offer declined:
    # messages are a few hundred bytes), "stateless" (each message compressed on its own: no zlib
    # state between messages, about 0.1 ms of the event loop per message) or "context" (context
    # takeover: smallest frames, about 300 KB more per socket)
    "WS_COMPRESSION": "off",
    # Threads that run JSON-RPC requests (each a blocking Finesse REST call at most); sockets hold none
    "RPC_THREADS": 32,
    "MAX_SOCKETS_PER_IP": 200,
    # A browser that does not read (bridge/wsconn.py, docs/performance.md). Bytes one socket may hold
    # unsent in this process: a reply or event that would take it over is not written and the socket
    # is closed with 1013 (the browser resumes from the replay buffer). Its requests are not read while
    # more than 64 KiB wait (asyncio's high-water mark), so a socket holds about 100 KB unless events fill it.
    "WS_MAX_BUFFER_BYTES": 4 * 1024 * 1024,
    # A backed-up socket (over 64 KiB unsent) whose browser takes no byte for this long is closed with 1013
    "WS_STALL_SECONDS": 10.0,
    # The bridge's address as browsers and Finesse reach it (https://bridge.example.com, or with a path
    # prefix behind a proxy). The gadgets' absolute URLs start with it; None: from each request's host.
    "PUBLIC_URL": None,
    # Storage and REST API (records, issue 5)
    "DATABASE_URL": "sqlite:///cti-bridge.db",  # or postgresql://user:password@host:5432/db (docs/records.md)
    "DATABASE_TIMEOUT_SECONDS": 5.0,  # SQLite busy timeout; PostgreSQL connect timeout
    "RECORD_RETRY_MIN_SECONDS": 0.5,  # a call record the database refused is retried after this, doubling...
    "RECORD_RETRY_MAX_SECONDS": 30.0,  # ...up to this, for as long as the process lives
    "API_KEYS": [],
    # Screen pop (bridge/screenpop.py, docs/screenpop.md): {"rules": [...]}, the TOML [[screenpop.rules]]
    "SCREENPOP": {},
    "SCREENPOP_RELOAD_SECONDS": 2.0,  # how often, at most, the config file's mtime is checked for new rules
    # Webhooks (bridge/webhooks/settings.py, docs/webhooks.md): {"endpoints": [...], "allow_hosts": [...], ...},
    # the TOML [webhooks] table with [[webhooks.endpoints]]; checked at start by webhooks.parse
    "WEBHOOKS": {},
    # The demo CRM at /demo: a link to the simulator's console (python app.py --simulator sets it)
    "DEMO_SIMULATOR_CONSOLE": None,
    # Process
    # Every so many seconds the objects that survived are moved out of the garbage collector's sight
    # (gc.freeze), so that its full collections do not stop the I/O loop for a second at thousands of
    # agents (bridge/gcfreeze.py, docs/performance.md); 0 leaves the collector as Python sets it
    "GC_FREEZE_SECONDS": 5.0,
    # On SIGTERM (docs/operations.md): how long agents' XMPP sessions stay open after the sockets were
    # closed with 1012, so that a replacement process signs them in again before Finesse logs them out
    # (Finesse: 60 s after their presence goes). gunicorn's --graceful-timeout must be longer.
    "SHUTDOWN_XMPP_HOLD_SECONDS": 30.0,
    # The "bridge" logger's level (DEBUG, INFO, ...); None leaves logging as the process set it up
    # (python app.py: INFO). create_app must not change a process-wide logger on every call.
    "LOG_LEVEL": None,
}

_NUMBERS = (int, float)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# openrpc.json's Variables names (a prefix of one, for a WRITABLE_VARIABLES entry ending in *)
_VARIABLE = re.compile(r"callVariable([1-9]|10)?|user\.[A-Za-z0-9_.\[\]]*")


class ConfigError(ValueError):
    """A setting that cannot be used; the message starts with the key."""


def _check(key: str, value: Any) -> Any:
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif isinstance(default, _NUMBERS):
        if isinstance(value, bool) or not isinstance(value, _NUMBERS):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        value = type(default)(value) if isinstance(default, float) else value
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
    elif default is None or isinstance(default, str):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _validate(config: dict[str, Any]) -> None:
    if not config["FINESSE_NODES"]:
        raise ConfigError('FINESSE_NODES: at least one node is required, e.g. [{"url": "https://fin-a:8445"}]')
    for index, node in enumerate(config["FINESSE_NODES"]):
        if not isinstance(node, dict) or not isinstance(node.get("url"), str):
            raise ConfigError(f"FINESSE_NODES[{index}]: expected {{\"url\": ..., \"xmpp\": \"host:port\"}}, got {node!r}")
        unknown = set(node) - {"url", "xmpp"}
        if unknown:
            raise ConfigError(f"FINESSE_NODES[{index}]: unknown keys {sorted(unknown)}")
    if config["WS_COMPRESSION"] not in ("stateless", "context", "off"):
        raise ConfigError(f"WS_COMPRESSION: expected stateless, context or off, got {config['WS_COMPRESSION']!r}")
    if config["RPC_THREADS"] < 1:
        raise ConfigError("RPC_THREADS: must be at least 1")
    if config["XMPP_TLS"] not in ("auto", "starttls", "none"):
        raise ConfigError(f"XMPP_TLS: expected auto, starttls or none, got {config['XMPP_TLS']!r}")
    for key in ("ALLOWED_ORIGINS", "API_KEYS", "WRITABLE_VARIABLES"):
        if not all(isinstance(item, str) for item in config[key]):
            raise ConfigError(f"{key}: expected a list of strings")
    for name in config["WRITABLE_VARIABLES"]:
        if not _VARIABLE.fullmatch(name.removesuffix("*")) and name not in ("user.*", "*"):
            raise ConfigError(f"WRITABLE_VARIABLES: {name!r} is not a call variable name (callVariable1 to "
                              f"callVariable10, user.<name>) or a prefix of one ending in *")
    if config["SIGNIN_MAX_FAILURES_PER_AGENT"] < 1 or config["SIGNIN_MAX_FAILURES_PER_ADDRESS"] < 1:
        raise ConfigError("SIGNIN_MAX_FAILURES_PER_AGENT and SIGNIN_MAX_FAILURES_PER_ADDRESS: must be at least 1")
    if config["PUBLIC_URL"] is not None:
        _check_public_url(config["PUBLIC_URL"])
    if config["LOG_LEVEL"] is not None and config["LOG_LEVEL"].upper() not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {config['LOG_LEVEL']!r}")
    try:
        Store.from_url(config["DATABASE_URL"])
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL: {exc}") from None
    if config["FAILOVER_POLL_SECONDS"] <= 0 or config["FAILOVER_MAX_CONCURRENT"] < 1:
        raise ConfigError("FAILOVER_POLL_SECONDS and FAILOVER_MAX_CONCURRENT: must be positive")
    if config["XMPP_MAX_ELEMENTS"] < 100:
        raise ConfigError("XMPP_MAX_ELEMENTS: at least 100 (Finesse's own stanzas hold a handful)")
    if config["XMPP_MAX_STANZA_BYTES"] < 64 * 1024 or config["XMPP_MAX_DEPTH"] < 16:
        raise ConfigError("XMPP_MAX_STANZA_BYTES and XMPP_MAX_DEPTH: at least 65536 and 16 (Finesse's own "
                          "notifications would be cut)")
    if config["WS_MAX_BUFFER_BYTES"] < 1 or config["WS_STALL_SECONDS"] <= 0:
        raise ConfigError("WS_MAX_BUFFER_BYTES and WS_STALL_SECONDS: must be positive")
    if config["MAX_BATCH"] < 1 or config["REPLAY_BUFFER_EVENTS"] < 1:
        raise ConfigError("MAX_BATCH and REPLAY_BUFFER_EVENTS: must be at least 1")


def _check_public_url(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (a bad port raises ValueError)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or parts.username is not None or parts.password is not None):
        raise ConfigError(f"PUBLIC_URL: expected the bridge's base URL such as https://bridge.example.com "
                          f"(http or https, a host, no query, fragment or user), got {value!r}")


def _apply(config: dict[str, Any], values: Mapping[str, Any], where: str, origin: dict[str, str]) -> None:
    for raw_key, value in values.items():
        key = raw_key.upper()
        if key not in DEFAULTS:
            raise ConfigError(f"{key}: unknown setting ({where})")
        config[key] = _check(key, value)
        origin[key] = where


def load(mapping: Mapping[str, Any] | None = None, *, file: str | None = None,
         environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the settings; ``file`` defaults to ``CTI_CONFIG_FILE`` or ``bridge.toml`` if present."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    origin: dict[str, str] = {}  # key -> the source that set it last
    path = file or environ.get("CTI_CONFIG_FILE") or ("bridge.toml" if os.path.exists("bridge.toml") else None)
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        # Tables that are not settings (not in DEFAULTS) are left to the parts that read them; [screenpop]
        # and [webhooks] are settings.
        _apply(config, {k: v for k, v in data.items() if not isinstance(v, dict) or k.upper() in DEFAULTS},
               f"file {path}", origin)
    for name, raw in environ.items():
        if not name.startswith("CTI_") or name == "CTI_CONFIG_FILE":
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        _apply(config, {name[4:]: value}, f"environment {name}", origin)
    if mapping:
        _apply(config, mapping, "create_app", origin)
    _validate(config)
    # Derived, not a setting: the file whose [screenpop] table is re-read when it changes (the
    # rules reload without a restart), unless SCREENPOP came from the environment or create_app.
    from_file = origin.get("SCREENPOP", f"file {path}") == f"file {path}"
    config["SCREENPOP_FILE"] = path if path and from_file and os.path.isfile(path) else None
    return config
