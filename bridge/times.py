"""Time as the protocol writes it: ISO 8601 in UTC to the millisecond, ``2024-05-01T09:30:00.000Z``.

One place for what notifications (``at``), calls and records (``startedAt``, ``endedAt``),
profiles (``updatedAt``) and webhooks (``timestamp``) carry (bridge/protocol/openrpc.json,
``DateTime``), and for reading such a time back, whatever offset it was written with.
"""
from __future__ import annotations

import datetime

UTC = datetime.timezone.utc


def iso(moment: datetime.datetime) -> str:
    """``moment`` (naive: already UTC) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_now() -> str:
    """Now, as :func:`iso` writes it."""
    return iso(datetime.datetime.now(UTC))


def iso_at(epoch: float) -> str:
    """Seconds since the epoch, as :func:`iso` writes it."""
    return iso(datetime.datetime.fromtimestamp(epoch, UTC))


def parse(value: str) -> datetime.datetime:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as an aware datetime; ValueError if not one."""
    moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
