"""The job system against a real Redis, PostgreSQL, SMTP server and arq worker (in process)."""

import asyncio
import csv
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from databases import Database
from redis.asyncio import Redis

from service.core import keys
from service.core.dispatch import Dispatcher
from service.core.schemas import JobRecord
from service.core.settings import Settings
from tests.conftest import MailBox, background_worker, drain, login, register, verify

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
# alice's own address, verified: the demo email goes to no one else.
OWN_ADDRESS = {"recipient_email": "alice@example.com", "username": "X"}


async def status(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def submit(client: httpx.AsyncClient, headers: dict[str, str], path: str, **body: object) -> str:
    """POST a job and return its id."""
    response = await client.post(path, headers=headers, json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def wait_for(client: httpx.AsyncClient, headers: dict[str, str], job_id: str, *states: str) -> dict[str, Any]:
    for _ in range(500):
        current = await status(client, headers, job_id)
        if current["state"] in states:
            return current
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {states}: {current}")


async def test_post_task_is_accepted_then_created_by_the_worker(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    due = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    body = {"title": "Write report", "description": "Q3", "due_at": due.isoformat(), "priority": "high"}
    response = await client.post("/tasks", headers=alice, json=body)

    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status_url"] == f"/tasks/background/{accepted['job_id']}/status"
    assert response.headers["location"] == accepted["status_url"]
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 0  # answered before the row exists
    pending = (await client.get(accepted["status_url"], headers=alice)).json()
    assert pending["state"] == "PENDING"
    assert pending["name"] == "process_new_task"
    assert pending["tries"] == 0 and pending["result"] is None and pending["started_at"] is None

    await drain(settings)

    done = (await client.get(accepted["status_url"], headers=alice)).json()
    assert done["state"] == "SUCCESS"
    assert done["tries"] == 1
    assert done["error"] is None
    assert done["finished_at"] >= done["started_at"] >= done["enqueued_at"]
    task = (await client.get(f"/tasks/{done['result']['task_id']}", headers=alice)).json()
    assert (task["title"], task["description"], task["priority"], task["status"]) == (
        "Write report",
        "Q3",
        "high",
        "todo",
    )
    assert datetime.fromisoformat(task["due_at"]) == due


async def test_idempotency_key_gives_one_job_and_one_row(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    headers = {**alice, "Idempotency-Key": "order-42"}
    first = await client.post("/tasks", headers=headers, json={"title": "once"})
    second = await client.post("/tasks", headers=headers, json={"title": "once"})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]

    await drain(settings)
    again = await client.post("/tasks", headers=headers, json={"title": "once"})  # after it ran, too
    assert again.json()["job_id"] == first.json()["job_id"]
    await drain(settings)
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 1

    different = await client.post("/tasks", headers=headers, json={"title": "something else"})
    assert different.status_code == 422
    message = "This Idempotency-Key was already used for a different request"
    assert different.json() == {
        "detail": [{"loc": ["header", "Idempotency-Key"], "msg": message, "type": "idempotency_mismatch"}]
    }
    too_long = await client.post("/tasks", headers={**alice, "Idempotency-Key": "k" * 256}, json={"title": "x"})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

    bob = await make_user("bob")  # the same key from someone else is their own job
    theirs = await client.post("/tasks", headers={**bob, "Idempotency-Key": "order-42"}, json={"title": "once"})
    assert theirs.json()["job_id"] != first.json()["job_id"]


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: httpx.AsyncClient, db: Database, redis: Redis, make_user: MakeUser
) -> None:
    """Arriving together, they share batches (service.core.batching): still one row and one queued job."""
    alice = await make_user("alice")
    headers = {**alice, "Idempotency-Key": "order-7"}
    same = [client.post("/tasks", headers=headers, json={"title": "once"}) for _ in range(20)]
    other = client.post("/tasks", headers=headers, json={"title": "twice"})
    *answers, different = await asyncio.gather(*same, other)
    # Whichever body used the key first has its job; the other body is refused, every time it comes.
    if different.status_code == 202:
        assert {answer.status_code for answer in answers} == {422}
    else:
        assert different.status_code == 422
        assert {answer.status_code for answer in answers} == {202}
        assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert await db.fetch_val("SELECT count(*) FROM jobs WHERE name = 'process_new_task'") == 1
    assert await redis.zcard(keys.QUEUE) == 2  # that job and alice's welcome email


async def test_a_job_that_fails_its_batch_fails_alone(db: Database, redis: Redis, make_user: MakeUser) -> None:
    """A row the batch's statement cannot take (here: an owner that does not exist) fails its own
    request only; the jobs batched with it are accepted."""
    await make_user("alice")
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'alice'")
    dispatcher = Dispatcher(db, cast(ArqRedis, redis))
    args = {"title": "batched"}
    submissions = [dispatcher.submit(name="process_new_task", owner_id=owner, args=args) for _ in range(9)]
    submissions.insert(5, dispatcher.submit(name="process_new_task", owner_id=owner + 1000, args=args))
    results = await asyncio.gather(*submissions, return_exceptions=True)
    assert isinstance(results.pop(5), asyncpg.ForeignKeyViolationError)
    assert all(isinstance(result, JobRecord) and result.owner_id == owner for result in results)
    assert await db.fetch_val("SELECT count(*) FROM jobs WHERE name = 'process_new_task'") == 9
    assert await redis.zcard(keys.QUEUE) == 10  # those nine and the welcome email


async def test_a_rerun_of_process_new_task_inserts_no_second_row(
    client: httpx.AsyncClient, db: Database, redis: Redis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = (await client.post("/tasks", headers=alice, json={"title": "at least once"})).json()["job_id"]
    await drain(settings)
    first = await status(client, alice, job_id)

    # A worker that crashed after the insert but before recording the outcome: the row says STARTED,
    # and arq still has the job, so it runs the whole function again.
    await db.execute("UPDATE jobs SET state = 'STARTED', result = NULL WHERE job_id = :id", {"id": job_id})
    await redis.delete(keys.ARQ_RESULT + job_id)
    await redis.zadd(keys.QUEUE, {job_id: timestamp_ms()})
    await redis.set(keys.ARQ_JOB + job_id, await _job_payload(db, job_id))
    await drain(settings)

    second = await status(client, alice, job_id)
    assert second["state"] == "SUCCESS"
    assert second["tries"] == 1
    assert second["result"] == first["result"]
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 1


async def _job_payload(db: Database, job_id: str) -> bytes:
    row = await db.fetch_one("SELECT name, args FROM jobs WHERE job_id = :id", {"id": job_id})
    assert row is not None
    args = row["args"] if isinstance(row["args"], dict) else json.loads(row["args"])
    return json.dumps({"t": None, "f": row["name"], "a": [], "k": args, "et": 0}).encode()


async def test_welcome_send_email_and_remind_deliver_real_mail(
    client: httpx.AsyncClient, db: Database, settings: Settings, mail: MailBox
) -> None:
    await register(client, "alice")
    await verify(db, "alice")
    alice = await login(client, "alice")
    await client.post(
        "/jobs/send-email", headers=alice, json={"recipient_email": "alice@example.com", "username": "Pat"}
    )
    create = await client.post("/tasks", headers=alice, json={"title": "Water the plants"})
    await drain(settings)
    task_id = (await status(client, alice, create.json()["job_id"]))["result"]["task_id"]
    remind = await client.post(f"/tasks/{task_id}/remind", headers=alice)
    assert remind.status_code == 202
    await drain(settings)

    [welcome] = [m for m in mail.to("alice@example.com") if m.subject.endswith("alice!")]
    assert welcome.subject == "Welcome to Task Manager, alice!"
    assert welcome.message["From"] == settings.smtp_from
    assert "Hi alice," in welcome.body

    [demo] = [m for m in mail.to("alice@example.com") if m.subject.endswith("Pat!")]
    assert demo.subject == "Welcome to Task Manager, Pat!"
    assert "Hi Pat," in demo.body

    [reminder] = [m for m in mail.to("alice@example.com") if m.subject.startswith("Reminder")]
    assert reminder.subject == "Reminder: Water the plants"
    assert 'your task "Water the plants"' in reminder.body
    assert "no due date" in reminder.body
    assert (await status(client, alice, remind.json()["job_id"]))["result"] == {
        "task_id": task_id,
        "recipient": "alice@example.com",
        "sent": True,
    }
    assert len(mail.messages) == 3


async def _events(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    events = []
    async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


async def test_long_calc_reports_progress_by_polling_and_by_sse(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    async with background_worker(settings):
        polled = (
            await client.post("/jobs/long-calc", headers=alice, json={"a": 2, "b": 3, "step_seconds": 0.2})
        ).json()
        streamed = (
            await client.post("/jobs/long-calc", headers=alice, json={"a": 1.5, "b": 1, "step_seconds": 0.1})
        ).json()
        events_task = asyncio.create_task(_events(client, alice, streamed["job_id"]))
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["state"] not in ("SUCCESS", "FAILURE"):
            seen.append(await status(client, alice, polled["job_id"]))
            await asyncio.sleep(0.02)
        events = await asyncio.wait_for(events_task, 10)

    for history, total in ((seen, 5), (events, 2.5)):
        percents = [s["progress"]["percent"] for s in history if s["state"] == "PROGRESS"]
        assert percents, history
        assert percents == sorted(percents)
        assert set(percents) <= {20, 40, 60, 80, 100}
        assert history[-1]["state"] == "SUCCESS"
        assert history[-1]["result"] == total
        assert history[-1]["progress"]["percent"] == 100
    assert len({s["progress"]["percent"] for s in events if s["progress"]}) == 5  # SSE misses no step
    assert events[0]["state"] in ("PENDING", "STARTED")


async def test_abort_revokes_a_running_job(client: httpx.AsyncClient, settings: Settings, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    async with background_worker(settings, slow=True) as worker:
        job_id = (
            await client.post("/jobs/long-calc", headers=alice, json={"a": 1, "b": 1, "step_seconds": 0.3})
        ).json()["job_id"]
        running = await wait_for(client, alice, job_id, "PROGRESS")
        aborted = await client.delete(f"/jobs/{job_id}", headers=alice)
        assert aborted.status_code == 200
        assert aborted.json()["state"] == "REVOKED"
        await asyncio.sleep(1.0)  # more than three steps' worth: the job would have moved on
        final = await status(client, alice, job_id)
        assert worker.jobs_failed == 1  # arq counts an aborted job as failed: it was cancelled, not finished
    assert final["state"] == "REVOKED"
    assert final["result"] is None
    assert final["progress"]["percent"] <= running["progress"]["percent"] + 20
    assert (await client.delete(f"/jobs/{job_id}", headers=alice)).status_code == 409


async def test_abort_before_start_means_it_never_runs(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = (await client.post("/jobs/long-calc", headers=alice, json={"a": 1, "b": 1, "step_seconds": 0})).json()[
        "job_id"
    ]
    assert (await client.delete(f"/jobs/{job_id}", headers=alice)).json()["state"] == "REVOKED"
    await drain(settings)
    final = await status(client, alice, job_id)
    assert (final["state"], final["tries"], final["result"]) == ("REVOKED", 0, None)


async def test_transient_smtp_failures_retry_then_succeed(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await drain(settings)  # the welcome email
    mail.messages.clear()
    mail.refuse_next = ["421 4.3.2 Service busy, try again later"] * 2  # N - 1 = 2 transient failures
    job_id = (await client.post("/jobs/send-email", headers=alice, json=OWN_ADDRESS)).json()["job_id"]

    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.job_events(job_id))
    await drain(settings)
    states: list[str] = []
    for _ in range(50):  # everything published during the run is buffered on the subscription
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            states.append(json.loads(message["data"])["status"]["state"])
    await pubsub.aclose()

    final = await status(client, alice, job_id)
    assert final["state"] == "SUCCESS"
    assert final["tries"] == 3
    assert states == ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert len(mail.to("alice@example.com")) == 1


async def test_permanent_failure_fails_once_with_its_error(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    create = await client.post("/tasks", headers=alice, json={"title": "short-lived"})
    await drain(settings)
    task_id = (await status(client, alice, create.json()["job_id"]))["result"]["task_id"]
    remind = (await client.post(f"/tasks/{task_id}/remind", headers=alice)).json()
    await client.delete(f"/tasks/{task_id}", headers=alice)
    worker = await drain(settings)

    failed = await status(client, alice, remind["job_id"])
    assert failed["state"] == "FAILURE"
    assert failed["tries"] == 1
    assert failed["error"] == {"type": "PermanentError", "message": f"task {task_id} no longer exists"}
    assert worker.jobs_failed == 1 and worker.jobs_retried == 0
    assert "Traceback" not in json.dumps(failed)


async def test_smtp_refusal_is_permanent(
    client: httpx.AsyncClient, settings: Settings, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await drain(settings)
    mail.refuse_next = ["550 5.1.1 No such mailbox"]
    job_id = (
        await client.post(
            "/jobs/send-email", headers=alice, json={"recipient_email": "alice@example.com", "username": "G"}
        )
    ).json()["job_id"]
    await drain(settings)
    failed = await status(client, alice, job_id)
    assert failed["state"] == "FAILURE"
    assert failed["tries"] == 1
    assert failed["error"]["type"] == "SMTPDataError"
    assert "No such mailbox" in failed["error"]["message"]


async def test_due_task_gets_exactly_one_reminder_across_three_cron_runs(
    client: httpx.AsyncClient, db: Database, redis: Redis, settings: Settings, mail: MailBox, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    now = datetime.now(UTC)
    for title, due, status_ in (
        ("due soon", now + timedelta(minutes=10), "todo"),
        ("due later", now + timedelta(days=3), "todo"),
        ("already done", now + timedelta(minutes=5), "done"),
    ):
        await client.post("/tasks", headers=alice, json={"title": title, "due_at": due.isoformat()})
        await drain(settings)
        if status_ == "done":
            await db.execute("UPDATE tasks SET status = 'done' WHERE title = :t", {"t": title})
    mail.messages.clear()

    for _ in range(3):  # each new worker runs the cron at startup, under arq's unique id for that time
        await drain(settings, cron=True)
    cron_runs = await db.fetch_val("SELECT count(*) FROM jobs WHERE name = 'send_due_reminders' AND state = 'SUCCESS'")
    assert cron_runs >= 3
    # Each run reads only the tasks not yet handed a reminder for their due date: one task in all runs.
    handed = "SELECT sum((result->>'reminders')::int) FROM jobs WHERE name = 'send_due_reminders' AND state = 'SUCCESS'"
    assert await db.fetch_val(handed) == 1

    reminders = [m for m in mail.messages if m.subject.startswith("Reminder")]
    assert [m.subject for m in reminders] == ["Reminder: due soon"]
    assert "It is due" in reminders[0].body
    assert await db.fetch_val("SELECT count(*) FROM emails WHERE key LIKE 'remind:%' AND sent_at IS NOT NULL") == 1


async def test_jobs_of_another_user_are_404(client: httpx.AsyncClient, settings: Settings, make_user: MakeUser) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    report_job = (await client.post("/jobs/generate-report", headers=alice, json={})).json()["job_id"]
    await drain(settings)
    report_url = (await status(client, alice, report_job))["result"]["report_url"]
    assert (await client.get(report_url, headers=alice)).status_code == 200

    for method, path in (
        ("GET", f"/jobs/{report_job}"),
        ("GET", f"/tasks/background/{report_job}/status"),
        ("GET", f"/jobs/{report_job}/events"),
        ("DELETE", f"/jobs/{report_job}"),
        ("GET", report_url),
        ("GET", "/jobs/no-such-job"),
        ("GET", "/jobs/bad%20id"),
    ):
        response = await client.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path)
    assert [job["job_id"] for job in (await client.get("/jobs", headers=bob)).json()] == ["welcome-2"]


async def test_report_is_a_csv_of_your_tasks(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    for title in ("first, with a comma", 'second "quoted"'):
        await client.post("/tasks", headers=alice, json={"title": title})
    await drain(settings)
    job_id = (await client.post("/jobs/generate-report", headers=alice, json={})).json()["job_id"]
    await drain(settings)
    result = (await status(client, alice, job_id))["result"]
    assert result["rows"] == 2
    report = await client.get(result["report_url"], headers=alice)
    assert report.headers["content-type"] == "text/csv; charset=utf-8"
    assert report.headers["content-disposition"].startswith("attachment;")
    lines = report.text.splitlines()
    assert lines[0] == "id,title,description,status,priority,due_at,created_at,updated_at"
    rows = sorted(csv.reader(lines[1:]), key=lambda row: row[1])
    assert [row[1:6] for row in rows] == [
        ["first, with a comma", "", "todo", "normal", ""],
        ['second "quoted"', "", "todo", "normal", ""],
    ]
    assert '"second ""quoted"""' in report.text  # quoted as CSV, not mangled


async def test_list_jobs_newest_first_and_filtered(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await client.post("/tasks", headers=alice, json={"title": "one"})
    await client.post("/jobs/long-calc", headers=alice, json={"a": 1, "b": 2, "step_seconds": 0})
    await drain(settings)
    listed = (await client.get("/jobs", headers=alice)).json()
    assert [job["name"] for job in listed] == ["long_running_calculation", "process_new_task", "send_welcome_email"]
    assert all(job["state"] == "SUCCESS" for job in listed)
    only = (await client.get("/jobs", headers=alice, params={"name": "process_new_task"})).json()
    assert [job["name"] for job in only] == ["process_new_task"]
    assert (await client.get("/jobs", headers=alice, params={"state": "FAILURE"})).json() == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs/long-calc", {"a": 1}),
        ("/jobs/long-calc", {"a": 1, "b": "two"}),
        ("/jobs/long-calc", {"a": 1, "b": 2, "step_seconds": 60}),
        ("/jobs/long-calc", {"a": 1e300, "b": 2}),
        ("/jobs/send-email", {"recipient_email": "nope", "username": "x"}),
        ("/jobs/generate-report", {"owner_id": 1}),
        ("/tasks", {"title": "x", "due_at": "2030-01-01T00:00:00"}),  # no time zone
        ("/tasks", {"title": "x", "priority": "whenever"}),
    ],
)
async def test_bad_job_input_is_422_and_enqueues_nothing(
    client: httpx.AsyncClient, db: Database, redis: Redis, make_user: MakeUser, path: str, body: dict[str, Any]
) -> None:
    alice = await make_user("alice")
    before = await db.fetch_val("SELECT count(*) FROM jobs")
    response = await client.post(path, headers=alice, json=body)
    assert response.status_code == 422
    assert await db.fetch_val("SELECT count(*) FROM jobs") == before
    assert await redis.zcard(keys.QUEUE) == before  # only the welcome email is queued
