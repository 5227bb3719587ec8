"""End to end: reminder offsets and recurring tasks through uvicorn and `arq jobs.worker.WorkerSettings` as
real processes, mail counted in the catcher."""

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from databases import Database

from tests.conftest import PASSWORD, Deployment, MailBox, verify
from tests.processes import python, start, stopped_at_exit

pytestmark = pytest.mark.e2e
BERLIN = ZoneInfo("Europe/Berlin")


async def _signed_up(client: httpx.AsyncClient, db: Database, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    await verify(db, name)
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await client.patch("/users/me", headers=headers, json={"time_zone": "Europe/Berlin"})).status_code == 200
    return headers


async def _task(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    created = await client.post("/tasks", headers=headers, json=body)
    assert created.status_code == 202, created.text
    for _ in range(300):
        job = (await client.get(created.headers["location"], headers=headers)).json()
        if job["state"] == "SUCCESS":
            task: dict[str, Any] = (await client.get(f"/tasks/{job['result']['task_id']}", headers=headers)).json()
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"the task was never inserted: {job}")


def _reminders(mail: MailBox, address: str) -> list[str]:
    return [message.body for message in mail.to(address) if message.subject.startswith("Reminder")]


async def _until(condition: Any, what: str, seconds: float = 90) -> None:
    for _ in range(int(seconds * 10)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_each_reminder_offset_is_sent_once_across_a_worker_crash_and_two_workers(
    deployment: Deployment, db: Database, mail: MailBox, tmp_path: Path
) -> None:
    # The deployment's fast worker makes way for workers whose reminder cron runs every second.
    deployment.worker.signal_group(signal.SIGTERM)
    await asyncio.to_thread(deployment.worker.wait_group_gone, 15)
    env = {**deployment.env, "REMINDER_EVERY_SECONDS": "1"}
    arq = python("-m", "arq", "jobs.worker.WorkerSettings")
    address = "rhea@example.com"
    async with await deployment.client() as client:
        with stopped_at_exit(start(arq, env, tmp_path / "first-worker.log")) as first:
            headers = await _signed_up(client, db, "rhea")
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)
            task = await _task(client, headers, title="Board meeting", due_at=due.isoformat(),
                               remind_before=["PT50S", "PT20S"])  # fmt: skip
            await _until(lambda: _count(mail, address, 1), "the first reminder")
            first.signal_group(signal.SIGKILL)  # a crash: no shutdown, whatever it was doing is cut short
            await asyncio.to_thread(first.wait_group_gone, 15)
        assert len(_reminders(mail, address)) == 1
        with (
            stopped_at_exit(start(arq, env, tmp_path / "second-worker.log")),
            stopped_at_exit(start(arq, env, tmp_path / "third-worker.log")),
        ):
            await _until(lambda: _count(mail, address, 2), "the second reminder")
            # Both workers go on running the cron until the task falls due: nothing more is sent.
            await _until(lambda: _fell_due(db, task["id"]), "the task falling due")
    bodies = _reminders(mail, address)
    assert len(bodies) == 2, bodies
    local = due.astimezone(BERLIN)
    assert all(f"at {local:%H:%M} {local:%Z} (Europe/Berlin)" in body for body in bodies), bodies
    sent = await db.fetch_all("SELECT key FROM emails WHERE key LIKE 'remind:%' AND sent_at IS NOT NULL ORDER BY key")
    assert len(sent) == 2
    states = await db.fetch_all(
        "SELECT extract(epoch FROM ahead)::int AS ahead, state FROM alarms WHERE task_id = :id AND kind = 'remind'"
        " ORDER BY ahead DESC",
        {"id": task["id"]},
    )
    assert [(row["ahead"], row["state"]) for row in states] == [(50, "handed"), (20, "handed")]


async def _count(mail: MailBox, address: str, expected: int) -> bool:
    return len(_reminders(mail, address)) >= expected


async def _fell_due(db: Database, task_id: int) -> bool:
    query = "SELECT state FROM alarms WHERE task_id = :id AND kind = 'due'"
    return bool(await db.fetch_val(query, {"id": task_id}) == "handed")


async def test_a_weekly_recurrence_keeps_its_local_hour_across_the_dst_change(
    deployment: Deployment, db: Database
) -> None:
    async with await deployment.client() as client:
        headers = await _signed_up(client, db, "otto")
        # Mondays at 09:00 in Berlin: the 22nd of March 2027 in winter time (UTC+1), then summer time (UTC+2).
        task = await _task(client, headers, title="Standup", due_at="2027-03-22T08:00:00Z",
                           recurrence="FREQ=WEEKLY;BYDAY=MO;BYHOUR=9", remind_before=["PT15M"])  # fmt: skip
        url = f"/tasks/{task['id']}"
        listed = (await client.get(f"{url}/occurrences?count=4", headers=headers)).json()
        assert listed["upcoming"] == [
            "2027-03-22T08:00:00Z", "2027-03-29T07:00:00Z", "2027-04-05T07:00:00Z", "2027-04-12T07:00:00Z"
        ]  # fmt: skip
        seen = [task["due_at"]]
        for _ in range(2):
            done = await client.patch(url, headers=headers, json={"status": "done"})
            assert done.status_code == 200 and done.json()["status"] == "todo"
            seen.append(done.json()["due_at"])
        past = (await client.get(f"{url}/occurrences", headers=headers)).json()["past"]
    assert seen == listed["upcoming"][:3]
    local = [datetime.fromisoformat(due).astimezone(BERLIN) for due in seen]
    assert {(moment.hour, moment.minute, moment.strftime("%a")) for moment in local} == {(9, 0, "Mon")}
    assert [moment.strftime("%Z") for moment in local] == ["CET", "CEST", "CEST"]
    assert [(entry["due_at"], entry["outcome"]) for entry in past] == [
        ("2027-03-29T07:00:00Z", "done"), ("2027-03-22T08:00:00Z", "done")
    ]  # fmt: skip
