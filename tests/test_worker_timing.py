"""The worker keeps time with no wake-up message: jobs other arq producers enqueue, deferred jobs,
retries, aborts and cron runs happen when due, not at the next idle poll.

Each bound (300 ms) is far below the idle wait it would take otherwise (arq's health-check interval,
30 s, is the longest an idle worker sleeps) and far above the measured lateness (a few ms, see
`make bench`), so it holds on a loaded machine.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.cron import cron
from arq.jobs import Job
from arq.worker import func
from redis.asyncio import Redis

from jobs.fastworker import FastWorker, Finished
from service.core import jobcodec
from service.core.settings import Settings

QUEUE = "test:timing"
BOUND = 0.3  # seconds


class Starts:
    """When each run of the test functions began (time.time()), by job id."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}
        self.changed = asyncio.Event()

    def record(self, ctx: dict[str, Any]) -> None:
        self.at.setdefault(ctx["job_id"], []).append(time.time())
        self.changed.set()

    async def wait(self, job_id: str, runs: int = 1, timeout: float = 5) -> list[float]:
        async with asyncio.timeout(timeout):
            while len(self.at.get(job_id, [])) < runs:
                self.changed.clear()
                await self.changed.wait()
        return self.at[job_id]


@pytest.fixture
def starts() -> Starts:
    return Starts()


def _functions(starts: Starts) -> list[Any]:
    async def note(ctx: dict[str, Any]) -> None:
        starts.record(ctx)

    async def retry_once(ctx: dict[str, Any]) -> None:
        starts.record(ctx)
        if ctx["job_try"] == 1:
            raise Retry(defer=0.05)

    async def linger(ctx: dict[str, Any]) -> None:
        starts.record(ctx)
        await asyncio.sleep(30)

    return [func(note, name="note"), func(retry_once, name="retry_once"), func(linger, name="linger")]


def _settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


@asynccontextmanager
async def idle_worker(
    settings: Settings, starts: Starts, *, redis_url: str | None = None, cron_jobs: list[Any] | None = None
) -> AsyncIterator[FastWorker]:
    """A worker with our production options on a queue of its own, already idle when the block starts."""
    worker = FastWorker(
        functions=_functions(starts),
        cron_jobs=cron_jobs or [],
        queue_name=QUEUE,
        redis_settings=_settings(redis_url or settings.redis_url),
        burst=False,
        handle_signals=False,
        poll_delay=settings.worker_poll_delay,
        allow_abort_jobs=True,
        keep_result=60,
        job_serializer=jobcodec.serialize,
        job_deserializer=jobcodec.deserialize,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(1.3)  # long enough to be waiting, not polling
        yield worker
    finally:
        await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[ArqRedis]:
    """Plain arq: its enqueue_job publishes no wake-up message."""
    pool = await create_pool(_settings(settings.redis_url), job_serializer=jobcodec.serialize,
                             job_deserializer=jobcodec.deserialize, default_queue_name=QUEUE)  # fmt: skip
    yield pool
    await pool.aclose()


async def _enqueue(producer: ArqRedis, name: str, **options: Any) -> tuple[Job, float]:
    enqueued = time.time()
    job = await producer.enqueue_job(name, _queue_name=QUEUE, **options)
    assert job is not None
    return job, enqueued


async def test_a_job_another_producer_enqueues_starts_at_once(
    settings: Settings, starts: Starts, producer: ArqRedis
) -> None:
    async with idle_worker(settings, starts) as worker:
        assert worker.notified, "this test's Redis allows keyspace notifications"
        job, enqueued = await _enqueue(producer, "note")
        [started] = await starts.wait(job.job_id)
    assert started - enqueued < BOUND


async def test_a_deferred_job_starts_on_time(settings: Settings, starts: Starts, producer: ArqRedis) -> None:
    async with idle_worker(settings, starts):
        job, enqueued = await _enqueue(producer, "note", _defer_by=0.5)
        [started] = await starts.wait(job.job_id)
    due = enqueued + 0.5
    assert due - 0.01 <= started < due + BOUND


async def test_a_retry_runs_after_its_defer_not_at_the_next_poll(
    settings: Settings, starts: Starts, producer: ArqRedis
) -> None:
    async with idle_worker(settings, starts):
        job, _ = await _enqueue(producer, "retry_once")
        first, second = await starts.wait(job.job_id, runs=2)
    assert 0.05 <= second - first < 0.05 + BOUND


async def test_aborting_a_queued_job_takes_effect_at_once(
    settings: Settings, starts: Starts, producer: ArqRedis
) -> None:
    async with idle_worker(settings, starts):
        job, _ = await _enqueue(producer, "note", _defer_by=60)
        asked = time.monotonic()
        assert await job.abort(timeout=BOUND, poll_delay=0.01)
        took = time.monotonic() - asked
    assert took < BOUND
    assert job.job_id not in starts.at


async def test_aborting_a_running_job_takes_effect_at_once(
    settings: Settings, starts: Starts, producer: ArqRedis
) -> None:
    async with idle_worker(settings, starts):
        job, _ = await _enqueue(producer, "linger")
        await starts.wait(job.job_id)
        await asyncio.sleep(0.5)  # idle again, with a job running
        asked = time.monotonic()
        assert await job.abort(timeout=BOUND, poll_delay=0.01)
    assert time.monotonic() - asked < BOUND


async def test_cron_runs_start_on_their_second(settings: Settings, starts: Starts) -> None:
    every_other_second = set(range(0, 60, 2))

    async def ticked(ctx: dict[str, Any]) -> None:
        starts.record({"job_id": "tick"})

    tick = cron(ticked, name="tick", second=every_other_second, microsecond=0)  # arq adds 0.123456 s by default
    async with idle_worker(settings, starts, cron_jobs=[tick]):
        await starts.wait("tick", runs=2, timeout=8)
    for started in starts.at["tick"]:
        scheduled = datetime.fromtimestamp(started).replace(microsecond=0).timestamp()
        scheduled -= scheduled % 2
        assert started - scheduled < BOUND


async def test_without_keyspace_notifications_it_polls_every_poll_delay(
    settings: Settings, starts: Starts, producer: ArqRedis, redis: Redis
) -> None:
    """A Redis that refuses CONFIG (a managed one, say): the worker falls back to arq's polling."""
    await redis.execute_command("ACL", "SETUSER", "no-config", "on", ">secret", "~*", "&*", "+@all", "-config")
    url = settings.redis_url.replace("redis://", "redis://no-config:secret@", 1)
    try:
        await redis.config_set("notify-keyspace-events", "")
        async with idle_worker(settings, starts, redis_url=url) as worker:
            assert not worker.notified
            job, enqueued = await _enqueue(producer, "note")
            [started] = await starts.wait(job.job_id)
        assert started - enqueued < BOUND
    finally:
        await redis.execute_command("ACL", "DELUSER", "no-config")


async def test_one_failed_finish_does_not_strand_the_rest_of_its_batch(settings: Settings, redis: Redis) -> None:
    """arq's per-job result writes go to Redis in one MULTI/EXEC per batch: a job whose write fails
    fails alone, and the others' keys are still cleared."""
    worker = FastWorker(functions=_functions(Starts()), queue_name=QUEUE, redis_settings=_settings(settings.redis_url),
                        handle_signals=False, burst=True)  # fmt: skip
    worker._pool = await create_pool(_settings(settings.redis_url))
    try:
        for job_id in ("good", "bad"):
            await redis.zadd(QUEUE, {job_id: 1})
            await redis.set(f"arq:in-progress:{job_id}", 1)
        good = Finished("good", True, b"{}", 60, False, None, None)
        bad = Finished("bad", True, b"{}", -1, False, None, None)  # an expiry Redis refuses
        outcomes: list[Any] = await asyncio.gather(
            worker.finish_job(*good), worker.finish_job(*bad), return_exceptions=True
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], Exception)
        assert await redis.zscore(QUEUE, "good") is None
        assert not await redis.exists("arq:in-progress:good")
        assert await redis.get("arq:result:good") == b"{}"
    finally:
        await worker.pool.aclose()
