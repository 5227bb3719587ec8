"""A server that stops answering (SIGSTOP: a stalled host, a long pause) costs clients seconds at most,
and costs jobs no tries. On servers of this module's own, since it freezes them."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from databases import Database
from redis.asyncio import Redis

from service.core import keys
from service.core.settings import Settings
from service.dev import migrate
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey
from service.dev.servers import ensure_database
from tests.conftest import api_client, background_worker, login, register
from tests.processes import frozen, process_tree

ANSWER_WITHIN = 3.0  # seconds: the promise; the request deadline is 2.5 s


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, EmbeddedValkey]]:
    base = tmp_path_factory.mktemp("frozen")
    postgres, valkey = EmbeddedPostgres(base / "postgres"), EmbeddedValkey(base / "valkey")
    postgres.start()
    valkey.start()
    try:
        yield postgres, valkey
    finally:
        valkey.stop()
        postgres.stop()


@pytest.fixture
async def own_settings(settings: Settings, own_servers: tuple[EmbeddedPostgres, EmbeddedValkey]) -> Settings:
    postgres, valkey = own_servers
    url = sa.make_url(postgres.url).set(database="frozen").render_as_string(hide_password=False)
    await ensure_database(url)
    await asyncio.to_thread(migrate.upgrade, url)
    async with Database(url) as db:
        await db.execute("TRUNCATE users, jobs, tasks RESTART IDENTITY CASCADE")
    await valkey_flush(valkey)
    # Statements time out after 1 s here (10 s by default) to keep the test short.
    return settings.model_copy(update={"database_url": url, "redis_url": valkey.url, "db_command_timeout": 1.0})


async def valkey_flush(valkey: EmbeddedValkey) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(valkey.url) as redis:
        await redis.flushdb()


@pytest.fixture
async def user(own_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    async with api_client(own_settings) as client:
        await register(client, "ida")
        yield client, await login(client, "ida")


def _pid(server: EmbeddedPostgres | EmbeddedValkey) -> int:
    assert server.process is not None
    return server.process.pid


async def _timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_a_frozen_redis_still_gets_an_answer_within_seconds(
    own_servers: tuple[EmbeddedPostgres, EmbeddedValkey], user: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    client, headers = user
    with frozen(_pid(own_servers[1])):
        # The job quota is counted in Redis: no count, no job (503, nothing written).
        refused, refused_took = await _timed(client.post("/tasks", headers=headers, json={"title": "not counted"}))
        ready, ready_took = await _timed(client.get("/readyz"))
        health, health_took = await _timed(client.get("/healthz"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1" and refused_took < ANSWER_WITHIN
    assert ready.status_code == 503 and ready.json()["detail"] == "unavailable: redis" and ready_took < 1.5
    assert health.status_code == 200 and health_took < 0.1


async def test_without_a_quota_a_frozen_redis_still_lets_tasks_in(
    own_servers: tuple[EmbeddedPostgres, EmbeddedValkey], own_settings: Settings
) -> None:
    no_quota = {"enqueue_quota_per_minute": 0, "enqueue_quota_per_address_per_minute": 0}
    async with api_client(own_settings.model_copy(update=no_quota)) as client:
        await register(client, "una")
        headers = await login(client, "una")
        with frozen(_pid(own_servers[1])):
            created, took = await _timed(client.post("/tasks", headers=headers, json={"title": "while Redis sleeps"}))
    # Accepted: the row is in PostgreSQL, and the reconciler enqueues what Redis did not take.
    assert created.status_code == 202 and took < ANSWER_WITHIN


async def test_a_frozen_postgres_is_a_quick_503(
    own_servers: tuple[EmbeddedPostgres, EmbeddedValkey], user: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    client, headers = user
    with frozen(_pid(own_servers[0])):
        answers = await asyncio.gather(
            *(_timed(client.post("/tasks", headers=headers, json={"title": f"t{n}"})) for n in range(20)),
            _timed(client.get("/readyz")),
        )
    *created, (ready, _) = answers
    assert {response.status_code for response, _ in created} <= {202, 503}
    assert all(response.headers.get("retry-after") == "1" for response, _ in created if response.status_code == 503)
    assert max(took for _, took in created) < ANSWER_WITHIN
    assert ready.json()["detail"] == "unavailable: database"
    # Thawed, it answers again by itself.
    assert (await client.post("/tasks", headers=headers, json={"title": "after"})).status_code == 202


async def test_jobs_that_meet_a_frozen_postgres_keep_their_tries(
    own_servers: tuple[EmbeddedPostgres, EmbeddedValkey],
    own_settings: Settings,
    user: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, headers = user  # registering queued a welcome email too
    job_id = (await client.post("/tasks", headers=headers, json={"title": "patient"})).json()["job_id"]
    with contextlib.ExitStack() as freeze:
        freeze.enter_context(frozen(_pid(own_servers[0])))
        async with background_worker(own_settings) as worker:
            # The worker's start waits 3 s for PostgreSQL (its pool check), then takes the jobs and fails
            # to reach PostgreSQL, again and again.
            await asyncio.sleep(7)
            freeze.close()  # thawed, with the worker still running
            await _until_final(client, headers, job_id)
            jobs = await _when_all_final(own_settings)
    assert worker.jobs_retried >= 1  # they did meet the frozen server
    assert jobs == [("process_new_task", "SUCCESS", 1), ("send_welcome_email", "SUCCESS", 1)]


async def test_a_job_that_finishes_while_redis_is_frozen_is_released_when_it_thaws(
    own_servers: tuple[EmbeddedPostgres, EmbeddedValkey],
    own_settings: Settings,
    user: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """The worker's last word on a job (clear its in-progress key, take it off the queue) is said again
    once Redis answers: lost, it left the job held by a live worker until arq's in-progress key expired
    (the job's timeout), with nothing running it."""
    client, headers = user
    calc = await client.post("/jobs/long-calc", headers=headers, json={"a": 1, "b": 2, "step_seconds": 1})
    job_id = calc.json()["job_id"]
    worker_of = background_worker(own_settings, slow=True, redis_command_timeout=2.0)  # 30 s by default
    async with worker_of as worker, Redis.from_url(own_settings.redis_url) as redis:
        await _until_state(own_settings, job_id, {"PROGRESS"}, step=4)  # of 5, one second apart
        with frozen(_pid(own_servers[1])):  # its last progress goes unannounced, then its end is refused
            await _until_state(own_settings, job_id, {"SUCCESS"})
            for _ in range(300):
                if job_id in worker.unfinished.jobs:
                    break
                await asyncio.sleep(0.05)
        thawed = time.monotonic()
        while await redis.exists(keys.ARQ_IN_PROGRESS + job_id, keys.ARQ_JOB + job_id):
            assert time.monotonic() - thawed < 5, "the job is still held in Redis by a worker not running it"
            await asyncio.sleep(0.05)
        assert await redis.zscore(keys.SLOW_QUEUE, job_id) is None
        assert await redis.exists(keys.ARQ_RESULT + job_id)


async def _until_state(settings: Settings, job_id: str, states: set[str], *, step: int = 0) -> None:
    async with Database(settings.database_url) as db:
        for _ in range(400):
            query = "SELECT state, (progress->>'current')::int AS step FROM jobs WHERE job_id = :job_id"
            row = await db.fetch_one(query, {"job_id": job_id})
            state = row and row["state"]
            if state in states and (row["step"] or 0) >= step:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} is {state}, not one of {states}")


async def _until_final(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    for _ in range(300):
        job: dict[str, Any] = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
        if job["state"] in ("SUCCESS", "FAILURE"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never finished: {job}")


async def _when_all_final(settings: Settings) -> list[tuple[str, str, int]]:
    async with Database(settings.database_url) as db:
        for _ in range(300):
            rows = await db.fetch_all("SELECT name, state, tries FROM jobs ORDER BY name")
            if all(row["state"] in ("SUCCESS", "FAILURE") for row in rows):
                return [(row["name"], row["state"], row["tries"]) for row in rows]
            await asyncio.sleep(0.05)
    raise AssertionError(f"jobs still active: {rows}")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _states(pids: list[int], wanted: set[str]) -> bool:
    for _ in range(100):  # a signal is delivered soon, not at once
        if all((_state(pid) in wanted) for pid in pids):
            return True
        time.sleep(0.01)
    return False


def test_frozen_stops_and_continues_every_process_of_a_server(tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "postgres")
    postgres.start()
    try:
        tree = process_tree(_pid(postgres))
        assert len(tree) > 1  # the postmaster and its helpers
        with frozen(_pid(postgres)):
            assert _states(tree, {"T"})
        assert _states(tree, {"R", "S", "D", "I"})
    finally:
        postgres.stop()
