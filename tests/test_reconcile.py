"""The reconciler puts arq's state in Redis back in line with the job history in PostgreSQL."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.utils import timestamp_ms
from databases import Database

from jobs.reconcile import reconcile
from jobs.worker import max_tries_by_name
from service.core import keys
from service.core.connections import open_redis
from service.core.dispatch import Dispatcher
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
    done = await reconcile(db, pool, max_tries=max_tries_by_name(settings))
    assert (done.requeued, done.freed, done.failed) == (1, 0, 0)
    await drain(settings)
    assert (await _state(client, alice, job_id))["state"] == "SUCCESS"
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 1
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).requeued == 0  # nothing left to do


async def test_young_jobs_are_left_alone(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await _task_job(client, alice, "just accepted")
    await pool.flushdb()
    # Within the grace period the API may still be enqueueing.
    assert not await reconcile(db, pool, max_tries=max_tries_by_name(settings))


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

    first = await reconcile(db, pool, max_tries=max_tries_by_name(settings), confirm_after=0)
    assert first.freed == 0  # silent once: noted, not yet freed (a frozen Redis silences everyone)
    done = await reconcile(db, pool, max_tries=max_tries_by_name(settings), confirm_after=0)
    assert done.freed == 1
    assert not await pool.exists(keys.ARQ_IN_PROGRESS + job_id)
    assert await pool.exists(keys.ARQ_IN_PROGRESS + live_id)  # its worker is alive: not touched
    await pool.delete(keys.ARQ_IN_PROGRESS + live_id)
    await drain(settings)
    final = await _state(client, alice, job_id)
    assert (final["state"], final["tries"]) == ("SUCCESS", 2)
    assert await db.fetch_val("SELECT count(*) FROM tasks WHERE title = 'orphaned'") == 1


async def _arq_result(pool: ArqRedis, job_id: str) -> dict[str, Any]:
    raw = await pool.get(keys.ARQ_RESULT + job_id)
    assert raw is not None, "arq wrote no result"
    result: dict[str, Any] = orjson.loads(raw)  # as stored, before jobcodec makes the error an exception again
    return result


async def test_a_job_whose_payload_redis_lost_before_it_was_read_runs_again(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    """Redis emptied between a worker's claim and its read of the job: arq records "job expired"."""
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "claimed, then forgotten")
    await pool.delete(keys.ARQ_JOB + job_id)  # the queue entry remains, the payload is gone
    await drain(settings)
    assert (await _arq_result(pool, job_id))["r"] == {"error": "JobExecutionFailed", "message": "job expired"}
    await _age(db, job_id)
    done = await reconcile(db, pool, max_tries=max_tries_by_name(settings))
    assert (done.requeued, done.failed) == (1, 0)
    await drain(settings)
    assert (await _state(client, alice, job_id))["state"] == "SUCCESS"
    assert await db.fetch_val("SELECT count(*) FROM tasks WHERE title = 'claimed, then forgotten'") == 1


async def test_a_job_a_worker_had_no_function_for_runs_where_it_belongs(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    """A worker that lacks the function (another version, another queue) makes arq record "not found"."""
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "on the wrong queue")
    await pool.zrem(keys.QUEUE, job_id)
    await pool.zadd(keys.SLOW_QUEUE, {job_id: timestamp_ms()})
    await drain(settings)
    result = await _arq_result(pool, job_id)
    assert result["r"]["message"] == "function 'process_new_task' not found"
    await _age(db, job_id)
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).requeued == 1
    await drain(settings)
    assert (await _state(client, alice, job_id))["state"] == "SUCCESS"


async def test_a_failure_whose_record_was_lost_runs_again_and_our_code_decides(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    """arq holds the failure our lifecycle raised, but the row never got it (PostgreSQL lost the write):
    the job runs again and our lifecycle, not arq's record, settles it."""
    alice = await make_user("alice")
    owner_id = (await client.get("/users/me", headers=alice)).json()["id"]
    dispatcher = Dispatcher(db, pool)
    record = await dispatcher.submit(name="send_task_reminder_email", owner_id=owner_id, args={"task_id": 999})
    await drain(settings)
    assert (await _arq_result(pool, record.job_id))["r"]["error"] == "PermanentError"
    await _age(db, record.job_id, state="STARTED", worker_id="any", tries=1, error=None, finished_at=None)
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).requeued == 1
    await drain(settings)
    final = await _state(client, alice, record.job_id)
    assert (final["state"], final["tries"]) == ("FAILURE", 2)
    assert final["error"] == {"type": "PermanentError", "message": "task 999 no longer exists"}


async def test_a_job_arq_gave_up_on_after_all_its_tries_ends_failure_not_stuck(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "crashed on its last try")
    # Our lifecycle started it 8 times (the last run's worker was killed); arq picks it a ninth time.
    await pool.set(retry_key_prefix + job_id, settings.job_max_tries)
    await _age(db, job_id, state="STARTED", worker_id="killed", tries=settings.job_max_tries)
    await drain(settings)
    assert (await _arq_result(pool, job_id))["r"]["message"] == f"max {settings.job_max_tries} retries exceeded"
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).failed == 1
    final = await _state(client, alice, job_id)
    assert final["state"] == "FAILURE"
    tries = settings.job_max_tries
    assert final["error"] == {
        "type": "JobExecutionFailed",
        "message": f"gave up after {tries} tries: arq: max {tries} retries exceeded",
    }
    # A dead letter, as when the lifecycle itself runs out of tries: the dashboard lists it apart.
    assert await db.fetch_val("SELECT error->>'exhausted' FROM jobs WHERE job_id = :id", {"id": job_id}) == "true"
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 0


async def test_tries_arq_counted_but_never_ran_are_given_back(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    """arq counts a try at every pickup, also those lost before our code ran (a Redis flush between
    claim and read); only the tries our lifecycle started count against the job."""
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "unlucky, not failing")
    await pool.set(retry_key_prefix + job_id, settings.job_max_tries)
    await _age(db, job_id, state="RETRY", tries=2)
    await drain(settings)
    assert (await _arq_result(pool, job_id))["r"]["message"] == f"max {settings.job_max_tries} retries exceeded"
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).requeued == 1
    await drain(settings)
    final = await _state(client, alice, job_id)
    assert (final["state"], final["tries"]) == ("SUCCESS", 3)


async def test_a_job_aborted_through_arq_before_it_started_is_revoked(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "aborted with arq's Job.abort")
    await pool.zadd(keys.ARQ_ABORT, {job_id: timestamp_ms()})
    await drain(settings)
    assert (await _arq_result(pool, job_id))["r"]["error"] == "CancelledError"
    await _age(db, job_id)
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).revoked == 1
    assert (await _state(client, alice, job_id))["state"] == "REVOKED"
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 0


async def test_a_running_job_redis_forgot_runs_again_counting_its_tries(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "mid-flight")
    await pool.flushdb()
    await _age(db, job_id, state="STARTED", worker_id="any", tries=2)
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings))).requeued == 1
    await drain(settings)
    final = await _state(client, alice, job_id)
    assert (final["state"], final["tries"]) == ("SUCCESS", 3)


async def test_workers_silent_only_while_redis_was_away_keep_their_jobs(
    client: httpx.AsyncClient, db: Database, pool: ArqRedis, settings: Settings, make_user: MakeUser
) -> None:
    """After a frozen Redis every heartbeat is old: the first round notes the silence, and a worker that
    beats again before the next round keeps its job."""
    alice = await make_user("alice")
    job_id = await _task_job(client, alice, "held through a pause")
    await pool.psetex(keys.ARQ_IN_PROGRESS + job_id, 60_000, b"1")
    await _age(db, job_id, state="STARTED", worker_id="paused", tries=1)
    await pool.zadd(keys.WORKERS, {"paused": timestamp_ms() - 60_000})  # its last beat, before the pause
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings), confirm_after=0)).freed == 0
    await pool.zadd(keys.WORKERS, {"paused": timestamp_ms()})  # Redis is back: it beats again
    assert (await reconcile(db, pool, max_tries=max_tries_by_name(settings), confirm_after=0)).freed == 0
    assert await pool.exists(keys.ARQ_IN_PROGRESS + job_id)
