"""Reminder offsets, user defaults, recurring tasks and time zones: the API, and the reminder cron run by
in-process workers against the real PostgreSQL, Redis and SMTP catcher."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import httpx
import pytest
from databases import Database

from jobs.alarms import SEND, SKIP, arm_all, ring_due, verdict
from jobs.context import JobContext
from service.core.connections import open_redis
from service.core.queries.alarms import Alarm
from service.core.settings import Settings
from tests.conftest import MailBox, drain, login, register

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


async def create(client: httpx.AsyncClient, settings: Settings, headers: dict[str, str], **task: Any) -> dict[str, Any]:
    """POST /tasks, let a worker insert it, and return the task as GET /tasks/{id} shows it."""
    created = await client.post("/tasks", headers=headers, json={"title": "T", **task})
    assert created.status_code == 202, created.text
    await drain(settings)
    job = (await client.get(created.json()["status_url"], headers=headers)).json()
    assert job["state"] == "SUCCESS", job
    found: dict[str, Any] = (await client.get(f"/tasks/{job['result']['task_id']}", headers=headers)).json()
    return found


async def alarms_of(db: Database, task_id: int) -> list[tuple[str, str, bool, str]]:
    """(kind, offset in seconds, last, state) of a task's alarms for its current due date, longest first."""
    rows = await db.fetch_all(
        "SELECT a.kind, extract(epoch FROM a.ahead)::int AS ahead, a.last, a.state FROM alarms a"
        " JOIN tasks t ON t.id = a.task_id AND t.due_at = a.due_at WHERE a.task_id = :id"
        " ORDER BY a.kind DESC, a.ahead DESC",
        {"id": task_id},
    )
    return [(row["kind"], row["ahead"], row["last"], row["state"]) for row in rows]


def reminders(mail: MailBox) -> list[str]:
    return [message.subject for message in mail.messages if message.subject.startswith("Reminder")]


async def patch(client: httpx.AsyncClient, headers: dict[str, str], path: str, **body: Any) -> httpx.Response:
    return await client.patch(path, headers=headers, json=body)


# Offsets


@pytest.mark.parametrize(
    "offsets",
    [["P31D"], ["-PT1H"], ["PT0.5S"], [3600], ["one hour"], ["PT1H", "PT2H", "PT3H", "PT4H", "PT5H", "PT6H"], "PT1H"],
)
async def test_bad_reminder_offsets_are_422(client: httpx.AsyncClient, make_user: MakeUser, offsets: Any) -> None:
    alice = await make_user("alice")
    response = await client.post("/tasks", headers=alice, json={"title": "T", "remind_before": offsets})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", "remind_before"]


async def test_offsets_are_kept_longest_first_as_iso_durations(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = datetime.now(UTC) + timedelta(days=3)
    task = await create(client, settings, alice, due_at=due.isoformat(), remind_before=["PT1H", "P1D", "PT1H", "PT0S"])
    assert task["remind_before"] == ["P1D", "PT1H", "PT0S"]
    await drain(settings, cron=True)
    assert await alarms_of(db, task["id"]) == [
        ("remind", 86400, False, "pending"),
        ("remind", 3600, False, "pending"),
        ("remind", 0, True, "pending"),
        ("due", 0, False, "pending"),
    ]


async def test_default_is_one_reminder_an_hour_before_and_a_user_default_replaces_it(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    follows_default = await create(client, settings, alice, due_at=due)
    own = await create(client, settings, alice, due_at=due, remind_before=["PT10M"])
    silent = await create(client, settings, alice, due_at=due, remind_before=[])
    assert follows_default["remind_before"] is None
    await drain(settings, cron=True)
    assert await alarms_of(db, follows_default["id"]) == [
        ("remind", 3600, True, "pending"),
        ("due", 0, False, "pending"),
    ]
    assert await alarms_of(db, silent["id"]) == [("due", 0, False, "pending")]

    me = await patch(client, alice, "/users/me", default_remind_before=["P2D", "PT3H"])
    assert me.status_code == 200 and me.json()["default_remind_before"] == ["P2D", "PT3H"]
    await drain(settings, cron=True)
    assert await alarms_of(db, follows_default["id"]) == [
        ("remind", 2 * 86400, False, "pending"),
        ("remind", 3 * 3600, True, "pending"),
        ("due", 0, False, "pending"),
    ]
    assert await alarms_of(db, own["id"]) == [("remind", 600, True, "pending"), ("due", 0, False, "pending")]

    reset = await patch(client, alice, "/users/me", default_remind_before=None)
    assert reset.json()["default_remind_before"] is None
    await drain(settings, cron=True)
    assert await alarms_of(db, follows_default["id"]) == [
        ("remind", 3600, True, "pending"),
        ("due", 0, False, "pending"),
    ]


async def test_a_new_due_date_or_offsets_rearm_and_done_disarms(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = datetime.now(UTC) + timedelta(days=3)
    task = await create(client, settings, alice, due_at=due.isoformat(), remind_before=["P1D"])
    await drain(settings, cron=True)
    url = f"/tasks/{task['id']}"

    moved = due + timedelta(days=2)
    assert (await patch(client, alice, url, due_at=moved.isoformat())).status_code == 200
    await drain(settings, cron=True)
    wake = await db.fetch_all("SELECT wake_at FROM alarms WHERE task_id = :id AND kind = 'remind'", {"id": task["id"]})
    assert [row["wake_at"] for row in wake] == [moved - timedelta(days=1)]  # the old date's alarms are gone

    await patch(client, alice, url, remind_before=["PT2H", "PT1H"])
    await drain(settings, cron=True)
    assert await alarms_of(db, task["id"]) == [
        ("remind", 7200, False, "pending"),
        ("remind", 3600, True, "pending"),
        ("due", 0, False, "pending"),
    ]

    await patch(client, alice, url, status="done")
    await drain(settings, cron=True)
    assert await db.fetch_val("SELECT count(*) FROM alarms WHERE task_id = :id", {"id": task["id"]}) == 0


async def test_a_late_arming_sends_only_the_last_reminder_once(
    client: httpx.AsyncClient, settings: Settings, db: Database, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    assert (await patch(client, alice, "/users/me", time_zone="Europe/Berlin")).status_code == 200
    due = datetime.now(UTC) + timedelta(minutes=10)  # both reminders' times have passed when it is armed
    task = await create(
        client, settings, alice, title="Call Bea", due_at=due.isoformat(), remind_before=["P1D", "PT1H"]
    )
    mail.messages.clear()
    for _ in range(3):
        await drain(settings, cron=True)
    assert reminders(mail) == ["Reminder: Call Bea"]
    assert await alarms_of(db, task["id"]) == [
        ("remind", 86400, False, "skipped"),  # a day late: not sent
        ("remind", 3600, True, "handed"),  # late too, but the last before the due date
        ("due", 0, False, "pending"),
    ]
    local = due.astimezone(ZoneInfo("Europe/Berlin"))
    [reminder] = [m for m in mail.messages if m.subject == "Reminder: Call Bea"]
    assert f"at {local:%H:%M} {local:%Z} (Europe/Berlin)" in reminder.body


async def test_a_reminder_on_time_is_sent_and_the_next_waits_for_its_own(
    client: httpx.AsyncClient, settings: Settings, db: Database, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = datetime.now(UTC) + timedelta(days=2) - timedelta(minutes=1)
    task = await create(client, settings, alice, title="Taxes", due_at=due.isoformat(), remind_before=["P2D", "PT1H"])
    mail.messages.clear()
    for _ in range(2):
        await drain(settings, cron=True)
    assert reminders(mail) == ["Reminder: Taxes"]
    states = await alarms_of(db, task["id"])
    assert states[:2] == [("remind", 2 * 86400, False, "handed"), ("remind", 3600, True, "pending")]
    assert await db.fetch_val("SELECT count(*) FROM emails WHERE key LIKE 'remind:%'") == 1


async def test_reminders_skip_an_unverified_address(
    client: httpx.AsyncClient, settings: Settings, db: Database, mail: MailBox
) -> None:
    await register(client, "uma")
    uma = await login(client, "uma")
    due = datetime.now(UTC) + timedelta(minutes=10)
    task = await create(client, settings, uma, due_at=due.isoformat())
    await drain(settings, cron=True)
    assert reminders(mail) == []
    assert await alarms_of(db, task["id"]) == [("remind", 3600, True, "skipped"), ("due", 0, False, "pending")]


async def test_two_cron_runs_at_once_hand_each_reminder_once(
    client: httpx.AsyncClient, settings: Settings, db: Database, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    for n in range(30):
        await client.post("/tasks", headers=alice, json={"title": f"r-{n}", "due_at": due})
    await drain(settings)
    pool = open_redis(settings)
    try:
        ctx = cast(JobContext, {"db": db, "redis": pool, "settings": settings})
        assert await arm_all(ctx) == 30
        runs = await asyncio.gather(*(ring_due(ctx, datetime.now(UTC)) for _ in range(3)))
        assert sum(run["reminders"] for run in runs) == 30
        assert (await ring_due(ctx, datetime.now(UTC)))["reminders"] == 0
    finally:
        await pool.aclose()
    mail.messages.clear()
    await drain(settings)
    assert sorted(reminders(mail)) == sorted(f"Reminder: r-{n}" for n in range(30))


def _alarm(**overrides: Any) -> Alarm:
    due = NOW + timedelta(minutes=30)
    values: dict[str, Any] = {
        "id": 1, "task_id": 1, "due_at": due, "kind": "remind", "ahead": timedelta(hours=1),
        "wake_at": due - timedelta(hours=1), "last": False, "owner_id": 1, "task_due_at": due, "status": "todo",
        "recurrence": None, "recurrence_start": None, "time_zone": "UTC", "verified": True,
    }  # fmt: skip
    return Alarm(**{**values, **overrides})


def test_verdicts_on_late_and_stale_alarms() -> None:
    assert verdict(_alarm(wake_at=NOW - timedelta(minutes=1)), NOW) == SEND  # on time
    assert verdict(_alarm(wake_at=NOW - timedelta(minutes=30)), NOW) == SKIP  # late, not the last
    assert verdict(_alarm(wake_at=NOW - timedelta(minutes=30), last=True), NOW) == SEND  # late, but the last
    past_due = NOW - timedelta(minutes=10)
    late_last = _alarm(due_at=past_due, task_due_at=past_due, wake_at=past_due - timedelta(hours=1), last=True)
    assert verdict(late_last, NOW) == SKIP  # the task is past due: too late to remind
    assert verdict(_alarm(status="done", wake_at=NOW), NOW) == SKIP
    assert verdict(_alarm(task_due_at=NOW + timedelta(days=1), wake_at=NOW), NOW) == SKIP  # due date moved
    assert verdict(_alarm(verified=False, wake_at=NOW), NOW) == SKIP


# Time zones


async def test_time_zone_defaults_to_utc_and_takes_iana_names_only(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    assert (await client.get("/users/me", headers=alice)).json()["time_zone"] == "UTC"
    for bad in ("Mars/Olympus", "CEST", "../etc/passwd", "", "Europe/Berlin\n", 1):
        response = await patch(client, alice, "/users/me", time_zone=bad)
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", "time_zone"]
    assert (await patch(client, alice, "/users/me", time_zone=None)).status_code == 422
    ok = await patch(client, alice, "/users/me", time_zone="America/New_York")
    assert ok.status_code == 200 and ok.json()["time_zone"] == "America/New_York"


# Recurrence


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("FREQ=MINUTELY;INTERVAL=90", "at most hourly"),
        ("FREQ=HOURLY;BYMINUTE=0,30", "at least an hour apart"),
        ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", "never fires"),
        ("FREQ=WEEKLY;BYDAY=XX", "not a valid RRULE"),
        ("BYDAY=MO", "FREQ is required"),
        ("DTSTART:20270101T000000Z\nRRULE:FREQ=DAILY", "no DTSTART"),
        ("FREQ=DAILY;UNTIL=20300101", "UTC"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20300101T000000Z", "COUNT and UNTIL"),
    ],
)
async def test_bad_rules_are_422_with_a_reason(
    client: httpx.AsyncClient, make_user: MakeUser, rule: str, message: str
) -> None:
    alice = await make_user("alice")
    body = {"title": "T", "due_at": "2027-03-22T08:00:00Z", "recurrence": rule}
    response = await client.post("/tasks", headers=alice, json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "recurrence"] and message in error["msg"], error


async def test_a_recurring_task_needs_a_due_date(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    response = await client.post("/tasks", headers=alice, json={"title": "T", "recurrence": "FREQ=DAILY"})
    assert response.status_code == 422 and "needs due_at" in response.json()["detail"][0]["msg"]
    task = await create(client, settings, alice)
    refused = await patch(client, alice, f"/tasks/{task['id']}", recurrence="FREQ=DAILY")
    assert refused.status_code == 422
    assert refused.json()["detail"] == [
        {"loc": ["body", "recurrence"], "msg": "a recurring task needs due_at: its first occurrence, where the"
         " series starts", "type": "value_error"}
    ]  # fmt: skip


WEEKLY = "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9"


async def test_occurrences_follow_local_time_across_dst_and_done_moves_to_the_next(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await patch(client, alice, "/users/me", time_zone="Europe/Berlin")
    # Monday 22 March 2027, 09:00 in Berlin (CET, UTC+1); summer time starts on the 28th.
    task = await create(client, settings, alice, due_at="2027-03-22T08:00:00Z", recurrence=WEEKLY)
    assert task["recurrence"] == WEEKLY
    listed = (await client.get(f"/tasks/{task['id']}/occurrences?count=3", headers=alice)).json()
    assert listed["upcoming"] == ["2027-03-22T08:00:00Z", "2027-03-29T07:00:00Z", "2027-04-05T07:00:00Z"]
    assert (listed["time_zone"], listed["past"]) == ("Europe/Berlin", [])

    done = await patch(client, alice, f"/tasks/{task['id']}", status="done")
    assert done.status_code == 200
    assert (done.json()["due_at"], done.json()["status"]) == ("2027-03-29T07:00:00Z", "todo")
    listed = (await client.get(f"/tasks/{task['id']}/occurrences", headers=alice)).json()
    assert len(listed["upcoming"]) == 10 and listed["upcoming"][0] == "2027-03-29T07:00:00Z"
    assert [(past["due_at"], past["outcome"]) for past in listed["past"]] == [("2027-03-22T08:00:00Z", "done")]
    await drain(settings, cron=True)
    assert await alarms_of(db, task["id"]) == [("remind", 3600, True, "pending"), ("due", 0, False, "pending")]


async def test_editing_and_stopping_a_series(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    task = await create(client, settings, alice, due_at="2027-03-22T08:00:00Z", recurrence=WEEKLY)
    url = f"/tasks/{task['id']}"
    edited = await patch(client, alice, url, recurrence="FREQ=DAILY;COUNT=2")
    assert edited.json()["recurrence"] == "FREQ=DAILY;COUNT=2"
    listed = (await client.get(f"{url}/occurrences?count=5", headers=alice)).json()
    assert listed["upcoming"] == ["2027-03-22T08:00:00Z", "2027-03-23T08:00:00Z"]  # restarted at the due date
    assert (await patch(client, alice, url, status="done")).json()["due_at"] == "2027-03-23T08:00:00Z"
    last = await patch(client, alice, url, status="done")  # the series has ended: the task is done
    assert (last.json()["status"], last.json()["due_at"]) == ("done", "2027-03-23T08:00:00Z")

    again = await create(client, settings, alice, due_at="2027-03-22T08:00:00Z", recurrence=WEEKLY)
    stopped = await patch(client, alice, f"/tasks/{again['id']}", recurrence=None)
    assert stopped.json()["recurrence"] is None
    assert (await patch(client, alice, f"/tasks/{again['id']}", status="done")).json()["status"] == "done"


async def test_a_passed_occurrence_is_missed_and_the_task_moves_on(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)
    task = await create(client, settings, alice, due_at=due.isoformat(), recurrence="FREQ=DAILY")
    assert (await patch(client, alice, f"/tasks/{task['id']}", status="in_progress")).status_code == 200
    for _ in range(2):
        await drain(settings, cron=True)
    moved = (await client.get(f"/tasks/{task['id']}", headers=alice)).json()
    assert moved["due_at"] == (due + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert moved["status"] == "todo"  # the next occurrence is a new one
    listed = (await client.get(f"/tasks/{task['id']}/occurrences?count=1", headers=alice)).json()
    assert [(past["due_at"], past["outcome"]) for past in listed["past"]] == [(task["due_at"], "missed")]
    assert await alarms_of(db, task["id"]) == [("remind", 3600, True, "pending"), ("due", 0, False, "pending")]


async def test_occurrences_of_someone_elses_task_are_404_and_count_is_bounded(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    task = await create(client, settings, alice, due_at="2027-03-22T08:00:00Z")
    assert (await client.get(f"/tasks/{task['id']}/occurrences", headers=bob)).status_code == 404
    for count in ("0", "101", "x"):
        response = await client.get(f"/tasks/{task['id']}/occurrences?count={count}", headers=alice)
        assert response.status_code == 422
    plain = (await client.get(f"/tasks/{task['id']}/occurrences", headers=alice)).json()
    assert (plain["recurrence"], plain["upcoming"]) == (None, ["2027-03-22T08:00:00Z"])


async def test_a_recurring_task_that_moves_on_still_emits_task_due_for_the_occurrence_it_left(
    client: httpx.AsyncClient, settings: Settings, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    hook = {"url": "https://93.184.215.14/hooks/tm", "events": ["task.due"]}  # a public address: no DNS
    assert (await client.post("/webhooks", headers=alice, json=hook)).status_code == 201
    due = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)
    task = await create(client, settings, alice, due_at=due.isoformat(), recurrence="FREQ=DAILY")
    pool = open_redis(settings)
    try:
        ctx = cast(JobContext, {"db": db, "redis": pool, "settings": settings})
        await arm_all(ctx)
        await ring_due(ctx, datetime.now(UTC))  # the occurrence passes: the task moves to tomorrow
    finally:
        await pool.aclose()
    moved = (await client.get(f"/tasks/{task['id']}", headers=alice)).json()
    assert moved["due_at"] == (due + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    # The task.due sweep, which looks for tasks whose due time has passed, would never see this one.
    events = await db.fetch_all("SELECT event_id FROM webhook_deliveries WHERE event_type = 'task.due'")
    assert [row["event_id"] for row in events] == [f"task.due:{task['id']}:{int(due.timestamp())}"]
