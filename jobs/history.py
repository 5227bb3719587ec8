"""Job-history writes batched across the jobs a worker runs at once.

Every job marks its row STARTED before it runs and SUCCESS after; as one statement each, those two
writes were most of a job's cost. Here the writes of concurrent jobs go to PostgreSQL together, one
statement per batch, each job still awaiting its own row.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from databases import Database

from service.queries import jobs
from service.schemas import JobRecord

Flush = Callable[[dict[str, Any]], Awaitable[dict[str, JobRecord]]]


class Batcher:
    """Group commit: while one batch is being written, the next one collects; it goes as soon as the
    write before it returns. An idle worker writes at once; a busy one, in batches as large as its
    concurrency makes them. Each caller gets its job's row (None if the row was already final)."""

    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._pending: dict[str, tuple[Any, asyncio.Future[JobRecord | None]]] = {}
        self._writing: asyncio.Task[None] | None = None

    async def submit(self, job_id: str, value: Any) -> JobRecord | None:
        future: asyncio.Future[JobRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = (value, future)
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_while_pending())
        return await future

    async def _write_while_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                await self._write(batch)
        finally:
            self._writing = None

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
