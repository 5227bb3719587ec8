"""Keeping time, measured: how late a worker starts what falls due when no wake-up message announces
it (jobs enqueued with plain arq, deferred jobs, retries, aborts, cron runs), and what it costs in
idle Redis traffic.

    python -m tests.bench.timing ours   # our worker (jobs.fastworker), as `python -m jobs` runs it
    python -m tests.bench.timing arq    # arq's own worker, polling every 50 ms (WORKER_POLL_DELAY)

The worker runs probe functions that note when they start (RPUSH to a list per job); `measure`
drives it from the benchmark with a plain arq pool and reads those lists.
"""

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.cron import cron
from arq.jobs import Job
from arq.worker import Worker, func

from jobs.fastworker import FastWorker
from service.core import jobcodec

QUEUE = "bench:timing"
STARTS = "bench:starts:"  # + job id: a list of the times (time.time()) each run of it began
POLL_DELAY = 0.05  # the WORKER_POLL_DELAY default


async def _noted(ctx: dict[str, Any]) -> None:
    await ctx["redis"].rpush(STARTS + ctx["job_id"], repr(time.time()))


async def note(ctx: dict[str, Any]) -> None:
    await _noted(ctx)


async def retry_once(ctx: dict[str, Any]) -> None:
    await _noted(ctx)
    if ctx["job_try"] == 1:
        raise Retry(defer=0.05)


async def linger(ctx: dict[str, Any]) -> None:
    await _noted(ctx)
    await asyncio.sleep(60)


async def tick(ctx: dict[str, Any]) -> None:
    await ctx["redis"].rpush(STARTS + "tick", repr(time.time()))


def worker(kind: str, redis_url: str) -> Worker:
    cls = FastWorker if kind == "ours" else Worker
    return cls(
        functions=[func(note, name="note"), func(retry_once, name="retry_once"), func(linger, name="linger")],
        cron_jobs=[cron(tick, name="tick", second=set(range(60)), microsecond=0)],  # on the second exactly
        queue_name=QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url),
        poll_delay=POLL_DELAY,
        allow_abort_jobs=True,
        max_jobs=50,
        keep_result=60,
        job_serializer=jobcodec.serialize,
        job_deserializer=jobcodec.deserialize,
    )


async def _started(pool: ArqRedis, job_id: str, run: int = 1, timeout: float = 10) -> float:
    key = STARTS + job_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = await pool.lrange(key, 0, -1)
        if len(starts) >= run:
            return float(starts[run - 1])
        await asyncio.sleep(0.002)
    raise RuntimeError(f"job {job_id} did not start {run} time(s) within {timeout} s")


async def _enqueued(pool: ArqRedis, name: str, **options: Any) -> tuple[Job, float]:
    at = time.time()
    job = await pool.enqueue_job(name, _queue_name=QUEUE, **options)
    assert job is not None
    return job, at


async def _plain(pool: ArqRedis) -> float:
    job, at = await _enqueued(pool, "note")
    return await _started(pool, job.job_id) - at


async def _deferred(pool: ArqRedis) -> float:
    job, at = await _enqueued(pool, "note", _defer_by=0.2)
    return await _started(pool, job.job_id) - (at + 0.2)


async def _retried(pool: ArqRedis) -> float:
    job, _ = await _enqueued(pool, "retry_once")
    first = await _started(pool, job.job_id)
    return await _started(pool, job.job_id, run=2) - first - 0.05


async def _aborted(pool: ArqRedis) -> float:
    job, _ = await _enqueued(pool, "linger")
    await _started(pool, job.job_id)
    asked = time.time()
    await job.abort(timeout=10, poll_delay=0.002)
    return time.time() - asked


PROBES: dict[str, Callable[[ArqRedis], Awaitable[float]]] = {
    "a job enqueued by plain arq starts after": _plain,
    "a job deferred by 0.2 s starts late by": _deferred,
    "the try after `Retry(defer=0.05)` starts late by": _retried,
    "aborting a running job takes effect after": _aborted,
}


async def measure(redis_url: str, samples: int = 30) -> dict[str, list[float]]:
    """Each probe `samples` times, a few hundred ms apart (so the worker is idle each time); then
    the cron's lateness over the seconds that took."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=jobcodec.serialize,
                             job_deserializer=jobcodec.deserialize, default_queue_name=QUEUE)  # fmt: skip
    try:
        await pool.delete(STARTS + "tick")
        began = time.time()
        found: dict[str, list[float]] = {}
        for label, probe in PROBES.items():
            found[label] = []
            for _ in range(samples):
                # A random phase: a poller's lateness depends on where in its period the job arrives.
                await asyncio.sleep(0.3 + random.random() * POLL_DELAY)
                found[label].append(await probe(pool))
        ticks = [float(at) for at in await pool.lrange(STARTS + "tick", 0, -1) if float(at) > began + 2]
        found["cron runs (every second) start late by"] = [at - int(at) for at in ticks]
        return found
    finally:
        await pool.aclose()


if __name__ == "__main__":
    import os

    worker(sys.argv[1], os.environ["REDIS_URL"]).run()
