"""The reminder cron's work: arm tasks' alarms, then act on each alarm whose time has come, once.

Exactly once, across restarts and several workers: each alarm is a row keyed by task, due date, kind and
offset; a run locks the due ones (FOR UPDATE SKIP LOCKED, so a concurrent run takes others), hands each
reminder to an email job under a job id and an email claim derived from that key, and marks the rows in
the same transaction. A run that dies before its commit leaves them pending; the next one hands them
again under the same job id (the job history returns the job it knows) and the same email claim (which
sends nothing twice).

Late alarms (a worker down, a due date set close): a reminder more than LATE past its time is skipped,
except the task's last reminder before the due date, which is still sent while the task is not LATE past
due. So a task due in ten minutes still gets its 1-hour reminder at once, and a worker back after a day
sends one reminder per task, not a flood.
"""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.context import JobContext
from service.core.dispatch import Dispatcher
from service.core.errors import QueueFull
from service.core.queries import alarms, webhooks
from service.core.queries.alarms import Alarm
from service.core.recurrence import next_due

log = logging.getLogger(__name__)

LATE = timedelta(minutes=5)  # far more than a cron period (REMINDER_EVERY_SECONDS is at most 60)
SEND, SKIP, DUE = "send", "skip", "due"


def verdict(alarm: Alarm, now: datetime) -> str:
    """What to do with an alarm whose time has come (pure: see the module's rules)."""
    if not alarm.current:
        return SKIP  # the task moved on or was done; arming drops such alarms, this is a race
    if alarm.kind == "due":
        return DUE
    if not alarm.verified:
        return SKIP  # mail goes only to addresses their owner has verified
    if alarm.wake_at > now - LATE or (alarm.last and alarm.due_at > now - LATE):
        return SEND
    return SKIP


def default_offsets(ctx: JobContext) -> list[timedelta]:
    """The reminders of tasks whose owners chose none: one, REMINDER_WINDOW_MINUTES before."""
    return [timedelta(minutes=ctx["settings"].reminder_window_minutes)]


async def arm_all(ctx: JobContext) -> int:
    """Arm every unarmed task, a page per statement."""
    total = 0
    while armed := await alarms.arm(ctx["db"], default=default_offsets(ctx)):
        total += armed
    return total


async def task_fell_due(ctx: JobContext, alarm: Alarm, now: datetime) -> None:
    """The place where a task falls due (once per task and due date; webhooks' "task due" belongs here).
    A recurring task moves on to its next occurrence, which the next arming gives its alarms."""
    log.info("task %d fell due (%s)", alarm.task_id, alarm.due_at.isoformat())
    if alarm.recurrence is None:
        return  # the task.due sweep (jobs/webhooks.py) announces it: its due time has passed
    # Moving on, the task leaves this due date before the sweep could see it passed: announced here.
    await webhooks.queue_task_due(ctx["db"], task_id=alarm.task_id, due_at=alarm.due_at)
    start = alarm.recurrence_start or alarm.due_at
    following = next_due(alarm.recurrence, start=start, after=max(alarm.due_at, now), time_zone=alarm.time_zone)
    if following is not None:
        await alarms.move_on(ctx["db"], task_id=alarm.task_id, due_at=alarm.due_at, next_due=following)


async def _hand_reminder(dispatcher: Dispatcher, alarm: Alarm) -> bool:
    """Submit the alarm's email job; False when its owner's queue is full (it stays pending)."""
    try:
        await dispatcher.submit(
            name="send_task_reminder_email",
            owner_id=alarm.owner_id,
            args={"task_id": alarm.task_id, "once_key": f"remind:{alarm.key}"},
            job_id=f"reminder-{alarm.key.replace(':', '-')}",
        )
    except QueueFull:
        log.warning("reminder %s waits: its owner's queue is full", alarm.key)
        return False
    return True


async def _act_on(
    ctx: JobContext, dispatcher: Dispatcher, page: list[Alarm], now: datetime
) -> tuple[dict[int, str], int]:
    """Act on a page of due alarms: the state each one ends in (those missing stay pending), and how many
    reminders went to email jobs."""
    verdicts = {alarm.id: verdict(alarm, now) for alarm in page}
    states = {alarm_id: "skipped" for alarm_id, decided in verdicts.items() if decided == SKIP}
    for alarm in page:
        if verdicts[alarm.id] == DUE:  # in the caller's transaction: moved on exactly when marked
            await task_fell_due(ctx, alarm, now)
            states[alarm.id] = "handed"
    reminders = [alarm for alarm in page if verdicts[alarm.id] == SEND]
    # Submitted together, so the dispatcher writes their job rows and enqueues them in one batch each.
    handed = await asyncio.gather(*(_hand_reminder(dispatcher, alarm) for alarm in reminders))
    states.update({alarm.id: "handed" for alarm, ok in zip(reminders, handed, strict=True) if ok})
    return states, sum(handed)


async def ring_due(ctx: JobContext, now: datetime) -> dict[str, int]:
    """Act on every pending alarm whose time has come, a page per transaction."""
    db, after = ctx["db"], alarms.BEGINNING
    dispatcher = Dispatcher(db, ctx["redis"])
    counts = {"reminders": 0, "skipped": 0, "fell_due": 0}
    while True:
        async with db.transaction():
            # A worker that dies or is cut off mid-page holds the page's locks this long at most.
            await db.execute("SET LOCAL idle_in_transaction_session_timeout = '20s'")
            page = await alarms.pick(db, now=now, after=after)
            if not page:
                return counts
            states, sent = await _act_on(ctx, dispatcher, page, now)
            await alarms.mark(db, states=states)
        counts["reminders"] += sent
        counts["skipped"] += sum(state == "skipped" for state in states.values())
        counts["fell_due"] += sum(alarm.kind == "due" and states.get(alarm.id) == "handed" for alarm in page)
        after = (page[-1].wake_at, page[-1].id)


async def run_alarms(ctx: JobContext) -> dict[str, Any]:
    """One run of the reminder cron: arm, act on what is due, and arm what that moved on (a recurring
    task's next occurrence, whose first reminder may be due already)."""
    now = datetime.now(UTC)
    armed = await arm_all(ctx)
    counts = await ring_due(ctx, now)
    armed += await arm_all(ctx)
    return {"armed": armed, **counts}
