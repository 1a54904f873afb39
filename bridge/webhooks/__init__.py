"""Webhooks: server-side HTTP actions for call events, delivered from an outbox.

Finesse's HTTP Request workflow action fires once from the agent's browser and forgets. Here each
delivery is a row in the ``outbox`` table, written in the same transaction as the call record (the
``record`` event) or in its own transaction as soon as the session emits ``call.ringing``,
``call.answered`` or ``call.ended``; a background worker sends it with retries, exponential backoff
and full jitter until ``max_age_hours``, signed the Standard Webhooks way.

Delivery is at least once: a worker killed between the receiver's answer and the row's update
leaves the row leased; when the lease (``lease_seconds``) runs out, the next worker sends it again
with the same ``webhook-id``, which receivers use to drop duplicates. The manual is docs/webhooks.md.

One module per concern: ``settings`` (the ``WEBHOOKS`` table), ``signing`` (Standard Webhooks),
``transport`` (the address guard and the HTTP session), ``outbox`` (the table and its rows) and
``worker`` (``WebhookWorker``). This package re-exports what the rest of the bridge uses.
"""
from __future__ import annotations

from .outbox import TYPES, USER_AGENT, Webhooks
from .settings import EVENTS, RECORD_FIELDS, Endpoint, Settings, parse
from .signing import secret_key, sign
from .transport import Refused, Resolver, check_destination, refusal
from .worker import BY_METHOD, WebhookWorker, backoff

__all__ = ["BY_METHOD", "EVENTS", "RECORD_FIELDS", "TYPES", "USER_AGENT", "Endpoint", "Refused", "Resolver",
           "Settings", "WebhookWorker", "Webhooks", "backoff", "check_destination", "parse", "refusal",
           "secret_key", "sign"]
