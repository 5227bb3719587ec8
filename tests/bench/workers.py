"""Baseline workers for the benchmark, run as `python -m tests.bench.workers KIND N`: they take N
jobs that the benchmark queued and print, as JSON, when the first started and the last finished
and each job's pickup delay, as recorded in process (no extra Redis or SQL on the hot path).

    arq-default   arq with its defaults (max_jobs 10, poll_delay 0.5 s)
    arq-tuned     arq with max_jobs 100, poll_delay 0.01 s
    saq           SAQ's worker (blocking dequeue), concurrency 100, max_concurrent_ops 100
"""

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

import asyncpg

DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]
INSERT = "INSERT INTO bench_tasks (title) VALUES ($1)"


class Clock:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.first_start = 0.0
        self.last_finish = 0.0
        self.done = 0
        self.pickups: list[float] = []
        self.finished = asyncio.Event()

    def started(self, enqueued_at: float) -> None:
        now = time.time()
        self.first_start = self.first_start or now
        self.pickups.append(now - enqueued_at)

    def ended(self) -> None:
        self.last_finish = time.time()
        self.done += 1
        if self.done >= self.expected:
            self.finished.set()

    def report(self) -> dict[str, Any]:
        return {
            "first_start": self.first_start,
            "last_finish": self.last_finish,
            "done": self.done,
            "pickups": self.pickups,
        }


async def run_arq(kind: str, expected: int) -> Clock:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    clock = Clock(expected)

    async def noop(ctx: dict[str, Any], title: str) -> None:
        clock.started(ctx["enqueue_time"].timestamp())
        clock.ended()

    async def insert(ctx: dict[str, Any], title: str) -> None:
        clock.started(ctx["enqueue_time"].timestamp())
        async with ctx["pg"].acquire() as conn:
            await conn.execute(INSERT, title)
        clock.ended()

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["pg"] = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=20)

    tuned = kind == "arq-tuned"
    worker = Worker(
        [func(noop, name="noop"), func(insert, name="insert")],
        redis_settings=RedisSettings.from_dsn(REDIS_URL),
        on_startup=startup,
        max_jobs=100 if tuned else 10,
        poll_delay=0.01 if tuned else 0.5,
        handle_signals=False,
        keep_result=0,
    )
    task = asyncio.create_task(worker.async_run())
    await clock.finished.wait()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)  # let arq record the last ones
    with contextlib.suppress(asyncio.CancelledError):
        await worker.close()
    task.cancel()
    return clock


async def run_saq(expected: int) -> Clock:
    from saq import Queue, Worker

    clock = Clock(expected)
    pg = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=20)

    async def noop(ctx: dict[str, Any], *, title: str) -> None:
        clock.started(ctx["job"].queued / 1000)
        clock.ended()

    async def insert(ctx: dict[str, Any], *, title: str) -> None:
        clock.started(ctx["job"].queued / 1000)
        async with pg.acquire() as conn:
            await conn.execute(INSERT, title)
        clock.ended()

    # Its default of 20 Redis operations at once would cap a worker of concurrency 100.
    queue = Queue.from_url(REDIS_URL, max_concurrent_ops=100)
    worker = Worker(queue, functions=[("noop", noop), ("insert", insert)], concurrency=100)
    task = asyncio.create_task(worker.start())
    await clock.finished.wait()
    await worker.stop()
    task.cancel()
    await queue.disconnect()
    await pg.close()
    return clock


async def main(kind: str, expected: int) -> None:
    clock = await (run_saq(expected) if kind == "saq" else run_arq(kind, expected))
    print(json.dumps(clock.report()))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
