"""The alarms table (service.core.tables.alarms): armed from the tasks, picked by the reminder cron.

A task's writes only mark it unarmed (`tasks.armed = false`, in the statement that changes it); the cron
arms unarmed tasks a page at a time, in one statement, then picks the alarms whose time has come. So the
API and the task-inserting job add no statement for reminders, and arming lives in one place.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from databases import Database

from service.core.queries.rows import as_dict

ARM_PAGE = 500
PICK_PAGE = 500
BEGINNING = (datetime(1970, 1, 1, tzinfo=UTC), 0)  # before every (wake_at, id)

# Lock a page of unarmed tasks, mark them armed, drop their pending alarms that no longer fit (a moved due
# date, a removed offset, a done task) and add those that are missing. An alarm already handed or skipped
# is kept as it was: the unique (task, due date, kind, offset) makes each one happen once, even when a due
# date moves away and back. A write that races the statement waits for the row lock, then unarms it again.
_ARM = """
WITH picked AS (
    SELECT t.id, t.due_at, t.status,
           coalesce(t.remind_before, u.default_remind_before, CAST(:default AS interval[])) AS offsets
    FROM tasks t JOIN users u ON u.id = t.owner_id
    WHERE NOT t.armed
    ORDER BY t.id LIMIT :page
    FOR UPDATE OF t SKIP LOCKED
),
marked AS (
    UPDATE tasks SET armed = true FROM picked WHERE tasks.id = picked.id RETURNING tasks.id
),
wanted AS (
    SELECT p.id AS task_id, p.due_at, 'remind' AS kind, o.ahead,
           o.ahead = min(o.ahead) OVER (PARTITION BY p.id) AS last
    FROM picked p CROSS JOIN LATERAL unnest(p.offsets) AS o(ahead)
    -- (a reminder before the year 1 would be a time Python cannot read back)
    WHERE p.due_at IS NOT NULL AND p.status <> 'done' AND p.due_at - o.ahead >= TIMESTAMPTZ '0001-01-01Z'
    UNION ALL
    SELECT p.id, p.due_at, 'due', interval '0', false
    FROM picked p WHERE p.due_at IS NOT NULL AND p.status <> 'done'
),
dropped AS (
    DELETE FROM alarms a USING picked p
    WHERE a.task_id = p.id AND a.state = 'pending' AND NOT EXISTS (
        SELECT 1 FROM wanted w
        WHERE w.task_id = a.task_id AND w.due_at = a.due_at AND w.kind = a.kind AND w.ahead = a.ahead
    )
),
added AS (
    INSERT INTO alarms (task_id, due_at, kind, ahead, wake_at, last)
    SELECT task_id, due_at, kind, ahead, due_at - ahead, last FROM wanted
    ON CONFLICT (task_id, due_at, kind, ahead) DO UPDATE SET last = excluded.last WHERE alarms.state = 'pending'
)
SELECT count(*) FROM marked
"""

# The pending alarms whose time has come, in time order after a (wake_at, id), with what deciding them
# needs; locked, and skipped by a concurrent run, until the caller's transaction marks them.
_PICK = """
SELECT a.id, a.task_id, a.due_at, a.kind, a.ahead, a.wake_at, a.last,
       t.owner_id, t.due_at AS task_due_at, t.status, t.recurrence, t.recurrence_start,
       u.time_zone, u.email_verified_at IS NOT NULL AS verified
FROM alarms a JOIN tasks t ON t.id = a.task_id JOIN users u ON u.id = t.owner_id
WHERE a.state = 'pending' AND a.wake_at <= :now AND (a.wake_at, a.id) > (:after_wake, :after_id)
ORDER BY a.wake_at, a.id LIMIT :page
FOR UPDATE OF a SKIP LOCKED
"""

_MARK = """
UPDATE alarms SET state = marks.state, handled_at = now()
FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[])) AS marks(id, state)
WHERE alarms.id = marks.id
"""

# A recurring task whose occurrence passed moves on to the next one, to do (if nobody moved it meanwhile),
# and the passed one is recorded as missed.
_MOVE_ON = """
WITH moved AS (
    UPDATE tasks SET due_at = :next, status = 'todo', armed = false, updated_at = now()
    WHERE id = :task_id AND due_at = :due_at AND status <> 'done'
    RETURNING id
)
INSERT INTO task_occurrences (task_id, due_at, outcome)
SELECT id, :due_at, 'missed' FROM moved
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class Alarm:
    """A pending alarm whose time has come, with its task's and owner's current state."""

    id: int
    task_id: int
    due_at: datetime
    kind: str
    ahead: timedelta
    wake_at: datetime
    last: bool
    owner_id: int
    task_due_at: datetime | None
    status: str
    recurrence: str | None
    recurrence_start: datetime | None
    time_zone: str
    verified: bool

    @property
    def current(self) -> bool:
        """Whether it is for the task as it is now: open, and still due when the alarm was armed for."""
        return self.status != "done" and self.task_due_at == self.due_at

    @property
    def key(self) -> str:
        """Names this alarm for good: its reminder's job id and email claim derive from it."""
        return f"{self.task_id}:{int(self.due_at.timestamp())}:{int(self.ahead.total_seconds())}"


async def arm(db: Database, *, default: Sequence[timedelta]) -> int:
    """Arm a page of unarmed tasks (`default`: the offsets of owners who chose none); how many it armed."""
    armed: int = await db.fetch_val(_ARM, {"default": list(default), "page": ARM_PAGE})
    return armed


async def pick(db: Database, *, now: datetime, after: tuple[datetime, int]) -> list[Alarm]:
    """Within the caller's transaction: a page of due alarms, locked until it ends."""
    values: dict[str, Any] = {"now": now, "after_wake": after[0], "after_id": after[1], "page": PICK_PAGE}
    return [Alarm(**as_dict(row)) for row in await db.fetch_all(_PICK, values)]


async def mark(db: Database, *, states: dict[int, str]) -> None:
    """Set each alarm's state ("handed" or "skipped")."""
    if states:
        await db.execute(_MARK, {"ids": list(states), "states": list(states.values())})


async def move_on(db: Database, *, task_id: int, due_at: datetime, next_due: datetime) -> None:
    await db.execute(_MOVE_ON, {"task_id": task_id, "due_at": due_at, "next": next_due})
