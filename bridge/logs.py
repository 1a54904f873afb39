"""The bridge's loggers: what a log line says of a client or of Finesse stays on that one line.

Text from outside reaches log messages (an Origin header, a request path, a Finesse dialog id, an
agent id): a newline in it would forge a log line, and an escape sequence would repaint an
operator's terminal (docs/security.md). Every logger made by :func:`get` escapes control
characters in the formatted message (C0 and C1 controls, DEL, and the Unicode line and paragraph
separators) as ``\\xNN`` or ``\\uNNNN``. Tracebacks, which the handler adds, are left as they are.
"""
from __future__ import annotations

import logging

_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROLS}


class EscapeControls(logging.Filter):
    """Rewrites a record's message with its control characters escaped (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it as logging always does
            return True
        escaped = message.translate(_ESCAPES)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


ESCAPE_CONTROLS = EscapeControls()


def get(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with control characters escaped in every message it logs."""
    logger = logging.getLogger(name)
    if ESCAPE_CONTROLS not in logger.filters:
        logger.addFilter(ESCAPE_CONTROLS)
    return logger
