"""The bridge's errors, each with its JSON-RPC code (docs/client.md, "Errors").

    BridgeError                       base; code, message, data
    ├── NotSignedIn          4001     no session on this socket
    ├── NotAllowed           4003     not your call, not a supervisor
    ├── NoSuchCall           4004     the call is not one of this agent's
    ├── InvalidParams        -32602   params that fail the method's schema or our checks
    ├── FinesseError                  anything Finesse said or did not say
    │   ├── BadCredentials   4010     Finesse rejected the credentials (401)
    │   ├── TooManyAttempts  4029     locked out or rate limited
    │   ├── ActionRefused    4090     Finesse refused the action in this state; data: errorType, message
    │   ├── Unavailable      5030     every node down or out of service (503, connection refused)
    │   └── Timeout          5040     Finesse did not answer in time
    └── Internal             -32603   our own fault; logged, never with credentials

Finesse's ApiErrors and the transport's exceptions become these in one place
(``bridge/finesse/rest.py``), raised ``from`` the original, which stays on ``__cause__``.
"""
from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base of every error the bridge reports to a client."""

    code = -32603
    default_message = "Internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class NotSignedIn(BridgeError):
    code = 4001
    default_message = "Not signed in"


class NotAllowed(BridgeError):
    code = 4003
    default_message = "Not allowed"


class NoSuchCall(BridgeError):
    code = 4004
    default_message = "No such call"


class InvalidParams(BridgeError):
    code = -32602
    default_message = "Invalid params"


class Internal(BridgeError):
    code = -32603
    default_message = "Internal error"


class FinesseError(BridgeError):
    """Something Finesse said, or did not say; subclasses carry the codes."""

    code = 4090
    default_message = "Finesse error"


class BadCredentials(FinesseError):
    code = 4010
    default_message = "Finesse rejected the credentials"


class TooManyAttempts(FinesseError):
    code = 4029
    default_message = "Too many attempts; wait and try again"


class ActionRefused(FinesseError):
    code = 4090
    default_message = "Finesse refused the action in this state"


class Unavailable(FinesseError):
    code = 5030
    default_message = "Finesse is unavailable"


class Timeout(FinesseError):
    code = 5040
    default_message = "Finesse did not answer in time"


ALL: tuple[type[BridgeError], ...] = (NotSignedIn, NotAllowed, NoSuchCall, InvalidParams, Internal,
                                      BadCredentials, TooManyAttempts, ActionRefused, Unavailable, Timeout)
"""Every concrete error; openrpc.json lists each code, and a test keeps the two equal."""
