"""Incremental, hardened parser for one XMPP XML stream (RFC 6120).

One :class:`XmppStreamParser` parses one stream, from the stream header to
``</stream:stream>``; a new one is needed after every stream restart
(STARTTLS, SASL success).  Stanzas (depth-1 children of the stream element)
are built into ElementTree elements (``{namespace}tag`` names) and handed to
the callbacks.  DTDs, entity declarations, external entities, comments and
processing instructions are refused, and a stanza (or the bytes between two
stanzas) longer than ``max_stanza_bytes`` or nested deeper than ``MAX_DEPTH``
elements is refused too; every refusal is an
:class:`XmppStreamError` carrying the RFC 6120 stream error condition.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

__all__ = ["XmppStreamError", "XmppStreamParser"]

# Elements nested in one stanza: a client's deepest (pubsub subscribe in an iq) is 3.
MAX_DEPTH = 64


class XmppStreamError(Exception):
    """Input that must end the stream with the stream error ``condition``."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition


class XmppStreamParser:
    """Feed bytes in; get ``on_header(tag, attrs)``, ``on_stanza(element)``
    and ``on_close()`` calls out, synchronously, from within :meth:`feed`.

    Setting :attr:`active` to False (e.g. from a callback, on stream restart
    or close) makes the parser ignore everything that follows, including
    errors in the rest of the chunk being parsed.
    """

    def __init__(self, on_header: Callable[[str, dict[str, str]], None],
                 on_stanza: Callable[[ET.Element], None],
                 on_close: Callable[[], None], max_stanza_bytes: int) -> None:
        self.active = True
        self._on_header = on_header
        self._on_stanza = on_stanza
        self._on_close = on_close
        self._max = max_stanza_bytes
        self._parser = DefusedXMLParser(target=self, encoding="utf-8", forbid_dtd=True,
                                        forbid_entities=True, forbid_external=True)
        self._expat = self._parser.parser
        self._depth = 0
        self._builder: ET.TreeBuilder | None = None
        self._fed = 0            # bytes fed so far (same scale as expat's CurrentByteIndex)
        self._progress = 0       # position of the last event outside stanzas
        self._stanza_start = 0   # byte index where the current stanza began

    def feed(self, data: bytes) -> None:
        """Parse a chunk; raise :class:`XmppStreamError` on bad input."""
        if not self.active:
            return
        self._fed += len(data)
        try:
            self._parser.feed(data)
        except XmppStreamError:
            if self.active:
                raise
        except DefusedXmlException as exc:
            if self.active:
                raise XmppStreamError("policy-violation", type(exc).__name__) from None
        except ET.ParseError as exc:
            if self.active:
                raise XmppStreamError("not-well-formed", str(exc)) from None
        if not self.active:
            return
        pending = self._fed - (self._stanza_start if self._depth >= 2 else self._progress)
        if pending > self._max:
            raise XmppStreamError("policy-violation", "stanza too large")

    # --- ElementTree parser target -------------------------------------
    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if not self.active:
            return
        depth = self._depth
        self._depth = depth + 1
        if depth == 0:
            self._mark_progress()
            self._on_header(tag, attrib)
            return
        if depth == 1:
            self._builder = ET.TreeBuilder()
            self._stanza_start = self._expat.CurrentByteIndex
        elif depth > MAX_DEPTH or self._expat.CurrentByteIndex - self._stanza_start > self._max:
            # Checked at each element, not only after a read: one read of 256 KiB of "<a>" would
            # otherwise build some 87,000 elements (about 11 MB) before the size check refused them.
            raise XmppStreamError("policy-violation",
                                  "stanza too deep" if depth > MAX_DEPTH else "stanza too large")
        assert self._builder is not None
        self._builder.start(tag, attrib)

    def end(self, tag: str) -> None:
        if not self.active:
            return
        self._depth -= 1
        depth = self._depth
        if depth == 0:
            self.active = False
            self._on_close()
            return
        builder = self._builder
        assert builder is not None
        builder.end(tag)
        if depth == 1:
            self._builder = None
            if self._expat.CurrentByteIndex - self._stanza_start > self._max:
                raise XmppStreamError("policy-violation", "stanza too large")
            self._mark_progress()
            self._on_stanza(builder.close())

    def data(self, text: str) -> None:
        if not self.active:
            return
        if self._depth >= 2:
            assert self._builder is not None
            self._builder.data(text)
        else:  # whitespace (keepalives) between stanzas or before the header
            self._mark_progress()

    def _mark_progress(self) -> None:
        # Index of the current event's start: an underestimate of the progress, so the
        # limit on bytes pending outside stanzas errs on the strict side by a few bytes.
        self._progress = max(self._progress, self._expat.CurrentByteIndex)

    def comment(self, text: str) -> None:
        if self.active:
            raise XmppStreamError("policy-violation", "XML comment")

    def pi(self, target: str, text: str) -> None:
        if self.active:
            raise XmppStreamError("policy-violation", "processing instruction")

    def close(self) -> None:
        """Parser target API; never called (the stream is never closed by EOF)."""
