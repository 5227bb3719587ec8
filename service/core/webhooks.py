"""Webhook events, as the Standard Webhooks specification has them (https://www.standardwebhooks.com).

An event is queued as one delivery row per subscribed webhook (service.core.queries.webhooks), at
most once per event id; the worker (jobs/webhooks.py) sends it. Each attempt is a POST of
{"type", "timestamp", "data"} signed with the `standardwebhooks` package: the headers webhook-id (the
event's id, the same on every attempt), webhook-timestamp and webhook-signature (one signature per
secret in use, space-separated, so a receiver holding either secret verifies it during a rotation).
"""

import base64
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from databases import Database
from standardwebhooks import Webhook

from service.core.queries import webhooks as queries
from service.core.schemas import WebhookEvent

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "taskmanager-webhooks/1"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: whsec_ and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def body(event_type: str, timestamp: datetime, data: Mapping[str, Any]) -> bytes:
    """What is POSTed: the same bytes on every attempt of a delivery."""
    return orjson.dumps({"type": event_type, "timestamp": timestamp.astimezone(UTC).isoformat(), "data": data})


def signed_headers(*, event_id: str, payload: bytes, secrets: Iterable[str], now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with each secret (newest first)."""
    text = payload.decode()
    signatures = " ".join(Webhook(secret).sign(event_id, now, text) for secret in secrets)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }


async def emit(db: Database, owner_id: int, event_type: WebhookEvent, data: Mapping[str, Any], *, event_id: str) -> int:
    """Queue an event for each of the owner's active webhooks subscribed to it: once per event_id (a
    second call with the same id adds nothing). The number of deliveries queued."""
    return await queries.queue_event(db, owner_id=owner_id, event_type=event_type, data=data, event_id=event_id)


async def reminder_sent(db: Database, *, task_id: int, once_key: str) -> int:
    """reminder.sent for the task's owner, after the reminder email went out: once per email (its once-key)."""
    return await queries.queue_reminder_sent(db, task_id=task_id, event_id=f"reminder.sent:{once_key}")
