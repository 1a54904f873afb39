"""Fault control: a hostile or broken Finesse node's XMPP output, an unterminated stanza.

``flood`` writes, to every session of one user, the start of a pubsub ``<message>`` that never
ends: ``size`` bytes of text, ``depth`` nested elements, or ``elements`` empty elements side by side. It writes as fast as each client reads
(``_Session.write_paced``), so the simulator holds one piece at a time whatever the size, and it
stops when the client drops the connection: the bytes written by then show how much the client
accepted (plus what the two sockets' kernel buffers held). The stream is left as it is.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .xmpp import XmppServer, _Session

PIECE = 16 * 1024
MAX_BYTES = 2**30  # the most the control writes: 1 GiB of text, ten million nested elements
MAX_ELEMENTS = 10_000_000


def pieces(head: bytes, unit: bytes, count: int) -> Iterator[bytes]:
    """``head`` then ``count`` times ``unit``, in pieces of about PIECE bytes (one object, reused)."""
    yield head
    per = max(1, PIECE // len(unit))
    full, rest = divmod(count, per)
    piece = unit * per
    for _ in range(full):
        yield piece
    if rest:
        yield unit * rest


async def flood(server: XmppServer, user: str, *, size: int = 0, depth: int = 0, elements: int = 0,
                timeout: float = 30.0) -> list[dict[str, Any]]:
    """Each of ``user``'s sessions: its JID, the bytes written, and whether it closed before the end."""
    sessions = [s for s in server._bound.get(user, {}).values() if not s.closed]

    async def one(session: _Session) -> dict[str, Any]:
        head = server._event_head + session.jid_attr + b">"
        if depth:
            stream = pieces(head, b"<a>", depth)
        elif elements:  # side by side: shallow, small, and many
            stream = pieces(head, b"<a/>", elements)
        else:
            head += b"<body>"
            stream = pieces(head, b"x", max(0, size - len(head)))
        sent = await session.write_paced(stream, timeout)
        return {"jid": session.jid, "sent": sent, "closed": session.closed or session.transport.is_closing()}
    return list(await asyncio.gather(*(one(s) for s in sessions)))
