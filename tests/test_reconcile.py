"""The reconciler puts arq's state in Redis back in line with the job history in PostgreSQL."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.utils import timestamp_ms
from databases import Database

from jobs.reconcile import reconcile
from service.core import jobcodec, keys
from service.core.connections import open_redis
from service.core.settings import Settings
from tests.conftest import drain

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = open_redis(settings)
    yield redis
    await redis.aclose()


async def _task_job(client: httpx.AsyncClient, headers: dict[str, str], title: str) -> str:
    job_id: str = (await client.post("/tasks", headers=headers, json={"title": title})).json()["job_id"]
    return job_id


async def _age(db: Database, job_id: str, **row: Any) -> None:
    """Make the row look as if nothing had touched it for a minute."""
    sets = ", ".join(f"{column} = :{column}" for column in row)
    query = "UPDATE jobs SET enqueued_at = now() - interval '60 s', started_at = now() - interval '60 s'"
    await db.execute(query + (f", {sets}" if sets else "") + " WHERE job_id = :job_id", {"job_id": job_id, **row})


async def _state(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
    return body


async def test_a_job_redis_lost_is_enqueued_again(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "survives a flush")
    await pool.flushdb()  # Redis restarted without persistence: the queued job is gone
    await _age(db, job_id)
    done = await reconcile(db, pool)
    assert (done.requeued, done.freed, done.failed) == (1, 0, 0)
    await drain(settings)
    assert (await _state(client, alice, job_id))["state"] == "SUCCESS"
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 1
    assert (await reconcile(db, pool)).requeued == 0  # nothing left to do


async def test_young_jobs_are_left_alone(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await _task_job(client, alice, "just accepted")
    await pool.flushdb()
    assert not await reconcile(db, pool)  # within the grace period the API may still be enqueueing


async def test_a_dead_workers_job_is_freed_for_another(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "orphaned")
    # A worker took it and was killed: arq's in-progress key stays for its timeout, nobody beats.
    await pool.psetex(keys.ARQ_IN_PROGRESS + job_id, 60_000, b"1")
    await pool.set(retry_key_prefix + job_id, 1)  # arq counted that first try
    await _age(db, job_id, state="STARTED", worker_id="gone-worker", tries=1)
    await pool.zadd(keys.WORKERS, {"live-worker": timestamp_ms()})
    live_id = await _task_job(client, alice, "in good hands")
    await pool.psetex(keys.ARQ_IN_PROGRESS + live_id, 60_000, b"1")
    await _age(db, live_id, state="STARTED", worker_id="live-worker", tries=1)

    done = await reconcile(db, pool)
    assert done.freed == 1
    assert not await pool.exists(keys.ARQ_IN_PROGRESS + job_id)
    assert await pool.exists(keys.ARQ_IN_PROGRESS + live_id)  # its worker is alive: not touched
    await pool.delete(keys.ARQ_IN_PROGRESS + live_id)
    await drain(settings)
    final = await _state(client, alice, job_id)
    assert (final["state"], final["tries"]) == ("SUCCESS", 2)
    assert await db.fetch_val("SELECT count(*) FROM tasks WHERE title = 'orphaned'") == 1


async def test_a_job_arq_gave_up_on_ends_failure_not_stuck(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "crashed on its last try")
    await pool.delete(keys.ARQ_JOB + job_id)
    await pool.zrem(keys.QUEUE, job_id)
    verdict = {"s": False, "r": {"error": "JobExecutionFailed", "message": "max 8 retries exceeded"}}
    await pool.set(keys.ARQ_RESULT + job_id, jobcodec.serialize(verdict))
    await _age(db, job_id, state="RETRY", tries=8)
    assert (await reconcile(db, pool)).failed == 1
    final = await _state(client, alice, job_id)
    assert final["state"] == "FAILURE"
    assert final["error"] == {"type": "JobExecutionFailed", "message": "arq: max 8 retries exceeded"}


async def test_a_running_job_redis_forgot_runs_again_counting_its_tries(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "mid-flight")
    await pool.flushdb()
    await _age(db, job_id, state="STARTED", worker_id="any", tries=2)
    assert (await reconcile(db, pool)).requeued == 1
    await drain(settings)
    final = await _state(client, alice, job_id)
    assert (final["state"], final["tries"]) == ("SUCCESS", 3)
