"""Job-history writes batched across the jobs a worker runs at once.

Every job marks its row STARTED before it runs and SUCCESS after; as one statement each, those two
writes were most of a job's cost. Here the writes of concurrent jobs wait a couple of milliseconds
and go to PostgreSQL together, one statement per batch, each job still awaiting its own row.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from databases import Database

from service.queries import jobs
from service.schemas import JobRecord

Flush = Callable[[dict[str, Any]], Awaitable[dict[str, JobRecord]]]


class Batcher:
    """Collects (job id, value) pairs for up to `delay` seconds or `size` of them, then flushes them
    in a task of its own; each caller gets its job's row (None if the row was already final)."""

    def __init__(self, flush: Flush, *, delay: float = 0.002, size: int = 200) -> None:
        self._flush = flush
        self._delay = delay
        self._size = size
        self._pending: dict[str, tuple[Any, asyncio.Future[JobRecord | None]]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._writing: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    async def submit(self, job_id: str, value: Any) -> JobRecord | None:
        future: asyncio.Future[JobRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = (value, future)
        if len(self._pending) >= self._size:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._after_delay())
        return await future

    async def _after_delay(self) -> None:
        await asyncio.sleep(self._delay)
        self._timer = None
        self._send()

    def _send(self) -> None:
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.create_task(self._write(batch))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write(self, batch: dict[str, tuple[Any, asyncio.Future[JobRecord | None]]]) -> None:
        try:
            rows = await self._flush({job_id: value for job_id, (value, _) in batch.items()})
        except Exception as exc:  # each job meets the error in its own lifecycle (and retries if transient)
            for _, future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for job_id, (_, future) in batch.items():
            if not future.done():
                future.set_result(rows.get(job_id))


class History:
    """A worker's batched writes of job starts and successes."""

    def __init__(self, db: Database) -> None:
        self.starts = Batcher(lambda batch: jobs.start_many(db, list(batch.values())))
        self.successes = Batcher(lambda batch: jobs.succeed_many(db, batch))

    async def start(
        self, *, job_id: str, name: str, queue_name: str, args: dict[str, Any], tries: int, worker_id: str
    ) -> JobRecord | None:
        started = {"job_id": job_id, "name": name, "queue_name": queue_name, "args": args, "tries": tries}
        return await self.starts.submit(job_id, {**started, "worker_id": worker_id})

    async def succeeded(self, *, job_id: str, result: Any) -> JobRecord | None:
        return await self.successes.submit(job_id, result)
