"""Webhooks and their deliveries in PostgreSQL.

A delivery row is queued per (webhook, event id), never twice (the unique constraint and ON CONFLICT
DO NOTHING); workers take due rows with FOR UPDATE SKIP LOCKED on ix_webhook_deliveries_due, pushing
next_attempt_at out by a lease, so each row goes to one worker at a time and a crashed worker's rows
come back when their lease ends.
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from databases import Database

from service.core.queries.owned import Owned
from service.core.queries.prepared import decoded
from service.core.queries.rows import as_dict
from service.core.schemas import (
    DeliveryPublic,
    DeliveryQuery,
    DeliveryStatus,
    FailingDelivery,
    WebhookEvent,
    WebhookPublic,
    WebhookWithSecret,
)
from service.core.tables import users, webhook_deliveries, webhooks

hooks = Owned(webhooks, WebhookPublic)
_WAITING = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)


def job_finished_deliveries(finishing: str) -> str:
    """`finishing` (a statement moving jobs to a final state, RETURNING jobs.*) with, in the same
    statement, a job.finished delivery queued for each of the job owner's active webhooks subscribed to
    it: one index probe per job, and no round trip of its own on the worker's hot path."""
    return f"""
WITH finished AS ({finishing}),
queued AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, data)
    SELECT w.id, 'job.finished:' || f.job_id, 'job.finished', jsonb_build_object(
        'job_id', f.job_id, 'name', f.name, 'state', f.state, 'result', f.result, 'error', f.error,
        'tries', f.tries, 'enqueued_at', f.enqueued_at, 'started_at', f.started_at, 'finished_at', f.finished_at)
    FROM finished f JOIN webhooks w ON w.owner_id = f.owner_id
    WHERE w.active AND 'job.finished' = ANY(w.events)
    ON CONFLICT (webhook_id, event_id) DO NOTHING
)
SELECT * FROM finished
"""


_QUEUE_EVENT = """
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, data)
SELECT w.id, CAST(:event_id AS varchar), CAST(:event_type AS varchar), CAST(:data AS jsonb) FROM webhooks w
WHERE w.owner_id = :owner_id AND w.active AND CAST(:event_type AS varchar) = ANY(w.events)
ON CONFLICT (webhook_id, event_id) DO NOTHING
RETURNING id
"""


async def queue_event(
    db: Database, *, owner_id: int, event_type: WebhookEvent, data: Mapping[str, Any], event_id: str
) -> int:
    """One delivery per subscribed active webhook of the owner, unless this event id was queued already."""
    values = {"owner_id": owner_id, "event_type": event_type.value, "event_id": event_id}
    return len(await db.fetch_all(_QUEUE_EVENT, {**values, "data": orjson.dumps(data).decode()}))


_REMINDER_SENT = """
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, data)
SELECT w.id, :event_id, 'reminder.sent', jsonb_build_object(
    'task_id', t.id, 'title', t.title, 'status', t.status, 'priority', t.priority, 'due_at', t.due_at,
    'recipient', u.email)
FROM tasks t JOIN users u ON u.id = t.owner_id JOIN webhooks w ON w.owner_id = t.owner_id
WHERE t.id = :task_id AND w.active AND 'reminder.sent' = ANY(w.events)
ON CONFLICT (webhook_id, event_id) DO NOTHING
RETURNING webhook_deliveries.id
"""


async def queue_reminder_sent(db: Database, *, task_id: int, event_id: str) -> int:
    """reminder.sent for the task's owner, the task described as it is now."""
    return len(await db.fetch_all(_REMINDER_SENT, {"task_id": task_id, "event_id": event_id}))


_DUE_TASKS = """
WITH due AS (
    SELECT id FROM tasks
    WHERE due_at IS NOT NULL AND status <> 'done' AND due_announced_for IS DISTINCT FROM due_at
        AND due_at <= now()
    ORDER BY due_at, id
    LIMIT :page
    FOR UPDATE SKIP LOCKED
),
announced AS (
    UPDATE tasks t SET due_announced_for = t.due_at FROM due WHERE t.id = due.id
    RETURNING t.id, t.owner_id, t.title, t.status, t.priority, t.due_at
),
queued AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, data)
    SELECT w.id, 'task.due:' || a.id || ':' || floor(extract(epoch FROM a.due_at))::bigint, 'task.due',
        jsonb_build_object('task_id', a.id, 'title', a.title, 'status', a.status, 'priority', a.priority,
                           'due_at', a.due_at)
    FROM announced a JOIN webhooks w ON w.owner_id = a.owner_id
    WHERE w.active AND 'task.due' = ANY(w.events)
    ON CONFLICT (webhook_id, event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM announced) AS tasks, (SELECT count(*) FROM queued) AS deliveries
"""


# task.due for one task and the due date it just left (a recurring task moving on to its next
# occurrence, which the sweep above would never see as past due): the sweep's event id, so once.
_TASK_LEFT_DUE = """
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, data)
SELECT w.id, 'task.due:' || t.id || ':' || floor(extract(epoch FROM CAST(:due_at AS timestamptz)))::bigint,
    'task.due', jsonb_build_object('task_id', t.id, 'title', t.title, 'status', t.status, 'priority', t.priority,
                                   'due_at', CAST(:due_at AS timestamptz))
FROM tasks t JOIN webhooks w ON w.owner_id = t.owner_id
WHERE t.id = :task_id AND w.active AND 'task.due' = ANY(w.events)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


async def queue_task_due(db: Database, *, task_id: int, due_at: datetime) -> None:
    """task.due for a task at a due date it is about to leave (once per task and due date)."""
    await db.execute(_TASK_LEFT_DUE, {"task_id": task_id, "due_at": due_at})


DUE_PAGE = 500


async def announce_due_tasks(db: Database, *, page: int = DUE_PAGE) -> tuple[int, int]:
    """Mark a page of open tasks whose due time has passed (once per task and due date, through
    ix_tasks_due_unannounced) and queue task.due for their owners' webhooks: (tasks, deliveries)."""
    row = await db.fetch_one(_DUE_TASKS, {"page": page})
    assert row is not None
    return int(row["tasks"]), int(row["deliveries"])


# The API's side: the user's webhooks.


async def count_for(db: Database, *, owner_id: int) -> int:
    return int(await db.fetch_val(sa.select(sa.func.count()).where(webhooks.c.owner_id == owner_id)))


async def create(db: Database, *, owner_id: int, values: Mapping[str, Any], cap: int) -> WebhookWithSecret | None:
    """The new webhook; None when the owner has `cap` already (counted under a lock on the owner's row,
    so that concurrent registrations cannot pass the cap together)."""
    async with db.transaction():
        await db.execute(sa.select(users.c.id).where(users.c.id == owner_id).with_for_update())
        if await count_for(db, owner_id=owner_id) >= cap:
            return None
        query = webhooks.insert().values(owner_id=owner_id, **values).returning(*webhooks.c)
        return WebhookWithSecret.model_validate(as_dict(await db.fetch_one(query)))


async def rotate(
    db: Database, *, owner_id: int, webhook_id: int, secret: str, grace_seconds: float
) -> WebhookWithSecret | None:
    """A new secret; the current one signs beside it for grace_seconds."""
    grace = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, grace_seconds)
    query = (
        webhooks.update()
        .where(webhooks.c.id == webhook_id, webhooks.c.owner_id == owner_id)
        .values(
            secret=secret, previous_secret=webhooks.c.secret, previous_secret_expires_at=grace, updated_at=sa.func.now()
        )
        .returning(*webhooks.c)
    )
    row = await db.fetch_one(query)
    return None if row is None else WebhookWithSecret.model_validate(as_dict(row))


def _delivery(row: Any) -> DeliveryPublic:
    return DeliveryPublic.model_validate(as_dict(row))


async def deliveries(db: Database, *, owner_id: int, webhook_id: int, query: DeliveryQuery) -> list[DeliveryPublic]:
    """A webhook's delivery log, newest first (empty for someone else's webhook)."""
    select = (
        sa.select(webhook_deliveries)
        .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
        .where(webhooks.c.id == webhook_id, webhooks.c.owner_id == owner_id)
        .order_by(webhook_deliveries.c.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    )
    if query.status is not None:
        select = select.where(webhook_deliveries.c.status == query.status.value)
    return [_delivery(row) for row in await db.fetch_all(select)]


def _owned_delivery(owner_id: int, webhook_id: int, delivery_id: int) -> sa.ColumnElement[bool]:
    mine = sa.select(webhooks.c.id).where(webhooks.c.id == webhook_id, webhooks.c.owner_id == owner_id)
    return sa.and_(
        webhook_deliveries.c.id == delivery_id,
        webhook_deliveries.c.webhook_id == webhook_id,
        webhook_deliveries.c.webhook_id.in_(mine.scalar_subquery()),
    )


async def get_delivery(db: Database, *, owner_id: int, webhook_id: int, delivery_id: int) -> DeliveryPublic | None:
    row = await db.fetch_one(sa.select(webhook_deliveries).where(_owned_delivery(owner_id, webhook_id, delivery_id)))
    return None if row is None else _delivery(row)


async def replay(db: Database, *, owner_id: int, webhook_id: int, delivery_id: int) -> DeliveryPublic | None:
    """Send a finished delivery (delivered or failed) again, from its first attempt; None if it is not
    one (unknown, someone else's, or waiting already)."""
    finished = webhook_deliveries.c.status.in_([DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value])
    query = (
        webhook_deliveries.update()
        .where(_owned_delivery(owner_id, webhook_id, delivery_id), finished)
        .values(
            status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=sa.func.now(), updated_at=sa.func.now()
        )
        .returning(*webhook_deliveries.c)
    )
    row = await db.fetch_one(query)
    return None if row is None else _delivery(row)


async def failing(db: Database, *, limit: int = 20) -> list[FailingDelivery]:
    """For the dashboard: deliveries that failed, or are retrying after a failure, newest first."""
    failing_now = sa.or_(
        webhook_deliveries.c.status == DeliveryStatus.FAILED.value,
        sa.and_(webhook_deliveries.c.status == DeliveryStatus.RETRYING.value, webhook_deliveries.c.attempts > 0),
    )
    query = (
        sa.select(webhook_deliveries, webhooks.c.url, users.c.username)
        .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
        .join(users, users.c.id == webhooks.c.owner_id)
        .where(failing_now)
        .order_by(webhook_deliveries.c.updated_at.desc())
        .limit(limit)
    )
    return [FailingDelivery.model_validate(as_dict(row)) for row in await db.fetch_all(query)]


# The worker's side: taking due deliveries and recording what came of them.

_CLAIM = f"""
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status IN {_WAITING} AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2), last_attempt_at = now(),
    updated_at = now()
FROM due, webhooks w
WHERE d.id = due.id AND w.id = d.webhook_id
RETURNING d.id, d.event_id, d.event_type, d.data, d.created_at, d.attempts, w.url, w.active,
    array_remove(ARRAY[w.secret, CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END], NULL)
        AS secrets
"""


async def claim_due(db: Database, *, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
    """Up to `limit` due deliveries, each counted as an attempt and leased to this worker: another
    worker takes it only once the lease has passed (this one crashed)."""
    async with db.connection() as connection:
        records = await connection.raw_connection.fetch(_CLAIM, limit, lease_seconds)
    return [decoded(record, {"data"}) for record in records]


_OUTCOME = """
UPDATE webhook_deliveries
SET status = $3::varchar, last_status_code = $4, last_error = $5,
    next_attempt_at = CASE WHEN $6::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $6::float8) END,
    delivered_at = CASE WHEN $3::varchar = 'delivered' THEN now() ELSE delivered_at END, updated_at = now()
WHERE id = $1 AND attempts = $2 AND status IN ('pending', 'retrying')
"""


async def record_outcome(
    db: Database,
    *,
    delivery_id: int,
    attempt: int,
    status: DeliveryStatus,
    status_code: int | None,
    error: str | None,
    retry_in: float | None,
) -> None:
    """What came of attempt `attempt` (left alone if the row moved on meanwhile: a newer claim)."""
    async with db.connection() as connection:
        await connection.raw_connection.execute(
            _OUTCOME, delivery_id, attempt, status.value, status_code, error and error[:500], retry_in
        )
