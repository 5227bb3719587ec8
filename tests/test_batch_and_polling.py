"""POST /tasks/batch (all or none, one statement, one Redis round trip), ETag / If-None-Match on job and
task reads, and the long-poll GET /jobs/{id}?wait= (in process, against the real PostgreSQL and Valkey)."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from arq.connections import ArqRedis
from databases import Database
from redis.asyncio import Connection, ConnectionPool, Redis

from service.core import keys
from service.core.dispatch import Dispatcher, user_caps
from service.core.settings import Settings
from tests.conftest import api_client, drain, login, register

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


def _tasks(count: int, **extra: Any) -> dict[str, Any]:
    return {"tasks": [{"title": f"task {n}", **extra} for n in range(count)]}


async def _task_jobs(db: Database) -> int:
    return int(await db.fetch_val("SELECT count(*) FROM jobs WHERE name = 'process_new_task'"))


async def _queued(redis: Redis) -> list[bytes]:
    return list(await redis.zrange(keys.QUEUE, 0, -1))


# Batches


async def test_a_batch_of_100_is_one_job_per_task_in_order_all_done_by_a_worker(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    response = await client.post("/tasks/batch", headers=alice, json=_tasks(100, priority="high"))

    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 100
    assert all(job["status_url"] == f"/tasks/background/{job['job_id']}/status" for job in jobs)
    assert len({job["job_id"] for job in jobs}) == 100

    await drain(settings)

    rows = await db.fetch_all("SELECT title, job_id, priority FROM tasks ORDER BY id")
    by_job = {row["job_id"]: row["title"] for row in rows}
    assert [by_job[job["job_id"]] for job in jobs] == [f"task {n}" for n in range(100)]  # item n is job n
    assert {row["priority"] for row in rows} == {"high"}
    states = await db.fetch_all("SELECT DISTINCT state FROM jobs WHERE name = 'process_new_task'")
    assert [row["state"] for row in states] == ["SUCCESS"]


class CountingConnection(Connection):
    """A real Redis connection that counts what it sends: one send is one round trip (a pipeline packs all
    its commands into one)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


async def test_a_batch_is_one_statement_and_one_redis_round_trip(
    db: Database, redis: Redis, settings: Settings, make_user: MakeUser
) -> None:
    await make_user("alice")
    alice_id = await db.fetch_val("SELECT id FROM users WHERE username = 'alice'")
    pool = ConnectionPool.from_url(settings.redis_url, connection_class=CountingConnection)
    counted = ArqRedis(pool)
    async with Database(settings.database_url) as database, database.connection() as connection:
        statements: list[str] = []
        # The connection this task's statements go through (databases binds one per task).
        connection.raw_connection.add_query_logger(lambda query: statements.append(query.query))
        dispatcher = Dispatcher(database, counted, caps=user_caps(settings))
        # A first batch, outside the count: the connections made, the statement prepared (and asyncpg's
        # one-off introspection of the types it takes).
        await dispatcher.submit_all(
            name="process_new_task", owner_id=alice_id, args=[{"owner_id": alice_id, "title": "0"}]
        )
        before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        CountingConnection.sends, already = 0, len(statements)

        args = [{"owner_id": alice_id, "title": f"t{n}"} for n in range(100)]
        records = await dispatcher.submit_all(name="process_new_task", owner_id=alice_id, args=args)

        sends, during = CountingConnection.sends, statements[already:]
    await counted.aclose()
    await pool.aclose()
    assert len(records) == 100
    assert len(during) == 1 and during[0].lstrip().startswith("WITH incoming"), during
    assert "INSERT INTO jobs" in during[0]
    assert sends == 1
    after = (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert after - before == 100  # every job enqueued, by that one round trip
    queued = set(await _queued(redis))
    assert {record.job_id.encode() for record in records} <= queued
    assert await _task_jobs(db) == 101


async def test_a_bad_item_is_a_422_naming_it_and_nothing_is_written(
    client: httpx.AsyncClient, db: Database, redis: Redis, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    queued = await _queued(redis)  # alice's welcome email
    body = _tasks(100)
    body["tasks"][37]["title"] = ""
    body["tasks"][80]["priority"] = "whenever"
    response = await client.post("/tasks/batch", headers={**alice, "Idempotency-Key": "b-1"}, json=body)

    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["detail"]]
    assert locations == [["body", "tasks", 37, "title"], ["body", "tasks", 80, "priority"]]
    assert await _task_jobs(db) == 0
    assert await _queued(redis) == queued

    too_many = await client.post("/tasks/batch", headers=alice, json=_tasks(101))
    assert too_many.status_code == 422
    assert [(e["loc"], e["type"]) for e in too_many.json()["detail"]] == [(["body", "tasks"], "too_long")]
    empty = await client.post("/tasks/batch", headers=alice, json={"tasks": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["type"] == "too_short"
    unknown = await client.post("/tasks/batch", headers=alice, json={"tasks": [{"title": "x", "owner_id": 2}]})
    assert unknown.json()["detail"][0]["loc"] == ["body", "tasks", 0, "owner_id"]
    assert await _task_jobs(db) == 0


async def test_a_batch_over_the_job_quota_is_429_and_nothing_is_accepted(settings: Settings, db: Database) -> None:
    async with api_client(settings.model_copy(update={"enqueue_quota_per_minute": 10})) as client:
        await register(client, "busy")
        headers = await login(client, "busy")
        for n in range(5):
            assert (await client.post("/tasks", headers=headers, json={"title": f"t{n}"})).status_code == 202
        refused = await client.post("/tasks/batch", headers=headers, json=_tasks(10))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await _task_jobs(db) == 5
        # A refused batch counted as one refused request: 4 of the 5 are left.
        assert (await client.post("/tasks/batch", headers=headers, json=_tasks(4))).status_code == 202
        assert (await client.post("/tasks/batch", headers=headers, json=_tasks(1))).status_code == 429
    assert await _task_jobs(db) == 9


async def test_a_batch_past_the_active_jobs_cap_is_429_and_nothing_is_written(
    settings: Settings, db: Database, redis: Redis
) -> None:
    async with api_client(settings.model_copy(update={"user_jobs_active": 5})) as client:
        await register(client, "capped")
        headers = await login(client, "capped")  # their welcome email is one active job: 4 more fit
        queued = await _queued(redis)
        refused = await client.post("/tasks/batch", headers=headers, json=_tasks(5))
        assert refused.status_code == 429
        assert await _task_jobs(db) == 0 and await _queued(redis) == queued
        assert (await client.post("/tasks/batch", headers=headers, json=_tasks(4))).status_code == 202
    assert await _task_jobs(db) == 4


async def test_a_retried_batch_returns_the_same_jobs_and_makes_none(
    client: httpx.AsyncClient, db: Database, redis: Redis, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    headers = {**alice, "Idempotency-Key": "import-2024-11"}
    first = await client.post("/tasks/batch", headers=headers, json=_tasks(3))
    queued = await _queued(redis)
    again = await client.post("/tasks/batch", headers=headers, json=_tasks(3))
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert await _task_jobs(db) == 3 and await _queued(redis) == queued

    await drain(settings)
    after_run = await client.post("/tasks/batch", headers=headers, json=_tasks(3))
    assert after_run.json() == first.json()
    await drain(settings)
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 3

    changed = _tasks(3)
    changed["tasks"][1]["title"] = "something else"
    for body in (changed, _tasks(2), _tasks(4)):  # another body: other items, fewer or more of them
        refused = await client.post("/tasks/batch", headers=headers, json=body)
        assert refused.status_code == 422, body
        assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await _task_jobs(db) == 3
    # The key's single-task job is another job: a batch's jobs are named by the key and their index.
    single = await client.post("/tasks", headers=headers, json={"title": "task 0"})
    assert single.status_code == 202 and single.json()["job_id"] not in {j["job_id"] for j in first.json()["jobs"]}


async def test_concurrent_retries_of_a_batch_make_one_set_of_jobs(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    headers = {**alice, "Idempotency-Key": "together"}
    answers = await asyncio.gather(*(client.post("/tasks/batch", headers=headers, json=_tasks(20)) for _ in range(5)))
    assert {answer.status_code for answer in answers} == {202}
    assert len({tuple(job["job_id"] for job in answer.json()["jobs"]) for answer in answers}) == 1
    assert await _task_jobs(db) == 20


# ETag / If-None-Match


async def test_job_reads_answer_304_to_their_etag_and_200_after_a_change(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id = (await client.post("/tasks", headers=alice, json={"title": "tagged"})).json()["job_id"]
    for url in (f"/jobs/{job_id}", f"/tasks/background/{job_id}/status"):
        first = await client.get(url, headers=alice)
        tag = first.headers["etag"]
        assert first.status_code == 200 and tag.startswith('"') and tag.endswith('"')
        for held in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            again = await client.get(url, headers={**alice, "If-None-Match": held})
            assert again.status_code == 304, held
            assert again.content == b"" and again.headers["etag"] == tag
        for held in ('"other"', tag[:-2] + '"', "garbage"):
            assert (await client.get(url, headers={**alice, "If-None-Match": held})).status_code == 200, held

    await drain(settings)
    for url in (f"/jobs/{job_id}", f"/tasks/background/{job_id}/status"):
        changed = await client.get(url, headers={**alice, "If-None-Match": tag})
        assert changed.status_code == 200 and changed.json()["state"] == "SUCCESS"
        assert changed.headers["etag"] != tag

    bob = await make_user("bob")  # someone else's job stays a 404, whatever they hold
    for held in ("*", tag):
        assert (await client.get(f"/jobs/{job_id}", headers={**bob, "If-None-Match": held})).status_code == 404


async def test_task_reads_answer_304_to_their_etag_until_the_task_changes(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await client.post("/tasks", headers=alice, json={"title": "tagged"})
    await drain(settings)
    read = await client.get("/tasks/1", headers=alice)
    tag = read.headers["etag"]
    assert (await client.get("/tasks/1", headers={**alice, "If-None-Match": tag})).status_code == 304
    await client.patch("/tasks/1", headers=alice, json={"status": "done"})
    changed = await client.get("/tasks/1", headers={**alice, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["status"] == "done" and changed.headers["etag"] != tag
    bob = await make_user("bob")
    assert (await client.get("/tasks/1", headers={**bob, "If-None-Match": "*"})).status_code == 404


# Long-poll


async def _pending_job(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, str]:
    job_id = (await client.post("/tasks", headers=headers, json={"title": "watched"})).json()["job_id"]
    return job_id, (await client.get(f"/jobs/{job_id}", headers=headers)).headers["etag"]


async def _subscribed(redis: Redis, job_id: str) -> None:
    """Until the job is followed (this process subscribes to its channel once, however many follow it)."""
    for _ in range(200):
        subscribers = dict(await redis.pubsub_numsub(keys.job_events(job_id)))
        if subscribers.get(keys.job_events(job_id).encode(), 0) >= 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing follows {job_id}")


async def test_a_long_poll_answers_at_the_change_not_at_the_deadline(
    client: httpx.AsyncClient, redis: Redis, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    job_id, tag = await _pending_job(client, alice)
    poll = asyncio.create_task(client.get(f"/jobs/{job_id}?wait=20", headers={**alice, "If-None-Match": tag}))
    await _subscribed(redis, job_id)
    await asyncio.sleep(0.2)
    assert not poll.done()  # waiting: the job has not changed

    changed_at = time.monotonic()
    assert (await client.delete(f"/jobs/{job_id}", headers=alice)).status_code == 200
    answer = await asyncio.wait_for(poll, 5)
    took = time.monotonic() - changed_at

    assert answer.status_code == 200 and answer.json()["state"] == "REVOKED"
    assert answer.headers["etag"] != tag
    assert took < 0.3, took


async def test_a_long_poll_of_an_unchanged_job_is_304_at_its_deadline_past_the_request_deadline(
    settings: Settings, db: Database
) -> None:
    async with api_client(settings.model_copy(update={"request_timeout": 0.5})) as client:
        await register(client, "patient")
        headers = await login(client, "patient")
        job_id, tag = await _pending_job(client, headers)
        started = time.monotonic()
        answer = await client.get(f"/jobs/{job_id}?wait=1", headers={**headers, "If-None-Match": tag})
        took = time.monotonic() - started
        assert answer.status_code == 304 and answer.headers["etag"] == tag, answer.text
        assert 1 <= took < 1.5, took  # the wait asked, beyond the usual deadline (0.5 s): not a 503
        # Without If-None-Match, or with `*`, or another tag, the answer is at once.
        for held in ({}, {"If-None-Match": "*"}, {"If-None-Match": '"old"'}):
            started = time.monotonic()
            answer = await client.get(f"/jobs/{job_id}?wait=30", headers={**headers, **held})
            assert time.monotonic() - started < 0.5 and answer.status_code in (200, 304), held
            assert (answer.status_code == 304) == bool(held and held["If-None-Match"] == "*")
        await client.delete(f"/jobs/{job_id}", headers=headers)
        finished = (await client.get(f"/jobs/{job_id}", headers=headers)).headers["etag"]
        started = time.monotonic()
        answer = await client.get(f"/jobs/{job_id}?wait=30", headers={**headers, "If-None-Match": finished})
        assert answer.status_code == 304 and time.monotonic() - started < 0.5  # a finished job changes no more


async def test_wait_is_0_to_60_seconds(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    job_id, _ = await _pending_job(client, alice)
    for wait in ("61", "-1", "60.5", "soon", "nan", "inf"):
        answer = await client.get(f"/jobs/{job_id}?wait={wait}", headers=alice)
        assert answer.status_code == 422, wait
        assert answer.json()["detail"][0]["loc"] == ["query", "wait"]
    for wait in ("0", "60", "1.5"):
        assert (await client.get(f"/jobs/{job_id}?wait={wait}", headers=alice)).status_code == 200, wait


async def test_long_polls_beyond_the_stream_caps_are_429(settings: Settings, redis: Redis) -> None:
    async with api_client(settings.model_copy(update={"sse_max_streams_per_user": 2})) as client:
        await register(client, "greedy")
        headers = await login(client, "greedy")
        job_id, tag = await _pending_job(client, headers)
        url, held = f"/jobs/{job_id}?wait=20", {**headers, "If-None-Match": tag}
        polls = [asyncio.create_task(client.get(url, headers=held)) for _ in range(2)]
        await _subscribed(redis, job_id)
        await asyncio.sleep(0.2)  # both admitted and waiting
        refused = await client.get(url, headers=held)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "long-polls" in refused.json()["detail"]
        assert not any(poll.done() for poll in polls)
        assert (await client.get(url, headers=headers)).status_code == 200  # a read that waits for nothing
        await client.delete(f"/jobs/{job_id}", headers=headers)
        answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
    assert [answer.status_code for answer in answers] == [200, 200]
