"""One user's flood does not starve the others: a cap on each user's jobs waiting or running per queue,
and workers that take turns between users."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from databases import Database

from service.core.settings import Settings
from tests.conftest import api_client, background_worker, drain, login, register, verify
from tests.test_dashboard import make_admin

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


async def test_each_user_has_a_cap_of_jobs_waiting_or_running(settings: Settings, db: Database) -> None:
    capped = settings.model_copy(update={"user_slow_jobs_active": 3, "user_jobs_active": 5})
    async with api_client(capped) as client:
        await register(client, "flo")
        flo = await login(client, "flo")
        calcs = [(await client.post("/jobs/long-calc", headers=flo, json={"a": 1, "b": n})) for n in range(4)]
        assert [answer.status_code for answer in calcs] == [202, 202, 202, 429]
        assert calcs[3].headers["retry-after"] == "5"
        assert "waiting or running" in calcs[3].json()["detail"]
        # The fast queue has a cap of its own (the welcome email counts: it is flo's job too).
        tasks = [
            (await client.post("/tasks", headers=flo, json={"title": f"t{n}"}, params={})).status_code for n in range(5)
        ]
        assert tasks == [202, 202, 202, 202, 429]
        # A retry of an accepted task is that task, cap or no cap.
        again = await client.post("/tasks", headers={**flo, "Idempotency-Key": "k"}, json={"title": "t9"})
        assert again.status_code == 429
        await drain(capped)
        assert (await client.post("/jobs/long-calc", headers=flo, json={"a": 1, "b": 9})).status_code == 202


async def test_workers_take_turns_between_users(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    """A backlog of one user's jobs ahead of another's: the other's job is in the worker's first batch."""
    ann, bob = await make_user("ann"), await make_user("bob")
    await drain(settings)  # the welcome emails
    for n in range(20):
        await client.post("/tasks", headers=ann, json={"title": f"ann {n}"})
    bobs = (await client.post("/tasks", headers=bob, json={"title": "bob's"})).json()["job_id"]
    await drain(settings, max_jobs=2)
    order = [
        row["job_id"]
        for row in await db.fetch_all("SELECT job_id FROM jobs WHERE name = 'process_new_task' ORDER BY started_at")
    ]
    assert bobs in order[:2], order.index(bobs)


async def test_a_flood_of_slow_jobs_adds_seconds_not_minutes_to_another_users_report(
    settings: Settings, db: Database
) -> None:
    """The pen test: 100 long calculations by one user held another's report for 99 s."""
    async with api_client(settings) as client:
        for name in ("flood", "quiet"):
            await register(client, name)
            await verify(db, name)
        flood, quiet = await login(client, "flood"), await login(client, "quiet")
        # A slow worker runs 20 at once here (50 by default); one user may hold 10 of them (USER_SLOW_JOBS_ACTIVE).
        async with background_worker(settings, slow=True, max_jobs=20):
            slow = {"a": 1, "b": 2, "step_seconds": 2}
            answers = [(await client.post("/jobs/long-calc", headers=flood, json=slow)).status_code for _ in range(30)]
            asked = time.monotonic()
            report = (await client.post("/jobs/generate-report", headers=quiet, json={})).json()["job_id"]
            while (await client.get(f"/jobs/{report}", headers=quiet)).json()["state"] != "SUCCESS":
                assert time.monotonic() - asked < 5, "the report waited behind the flood"
                await asyncio.sleep(0.05)
    assert answers.count(202) == settings.user_slow_jobs_active
    assert answers.count(429) == 30 - settings.user_slow_jobs_active


async def test_the_dashboard_shows_who_holds_the_queues(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    admin = await make_admin(client, db)
    ann = await make_user("ann")
    for n in range(3):
        await client.post("/jobs/long-calc", headers=ann, json={"a": 1, "b": n})
    share = (await client.get("/dashboard/api/overview", headers=admin)).json()["share"]
    assert {"username": "ann", "queue_name": "tm:queue:slow", "active": 3, "cap": 10} in share
