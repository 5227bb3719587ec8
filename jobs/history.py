"""A worker's bookkeeping, batched across the jobs it runs at once.

Every job marks its row STARTED before it runs and SUCCESS after, and announces each change (a
status message for live followers, counts for the metrics). One statement or pipeline each, those
were most of a job's cost. Here the writes of concurrent jobs go together, one PostgreSQL statement
or Redis pipeline per batch, each job still awaiting its own.
"""

from typing import Any

from databases import Database
from redis.asyncio import Redis

from service.core.batching import Batcher
from service.core.events import Announcement, announce
from service.core.queries import job_records
from service.core.schemas import JobRecord


class History:
    """A worker's batched writes: job starts and successes to PostgreSQL, announcements to Redis."""

    def __init__(self, db: Database, redis: Redis) -> None:
        async def start_many(started: list[dict[str, Any]]) -> list[JobRecord | None]:
            rows = await job_records.start_many(db, started)
            return [rows.get(job["job_id"]) for job in started]

        async def succeed_many(results: list[tuple[str, Any]]) -> list[JobRecord | None]:
            rows = await job_records.succeed_many(db, dict(results))
            return [rows.get(job_id) for job_id, _ in results]

        async def announce_many(announcements: list[Announcement]) -> list[None]:
            await announce(redis, announcements)
            return [None] * len(announcements)

        self._starts = Batcher(start_many)
        self._successes = Batcher(succeed_many)
        self._announcements = Batcher(announce_many)

    async def start(
        self, *, job_id: str, name: str, queue_name: str, args: dict[str, Any], tries: int, worker_id: str
    ) -> JobRecord | None:
        """The job's row, now STARTED; None if it was final already (so it must not run)."""
        started = {"job_id": job_id, "name": name, "queue_name": queue_name, "args": args, "tries": tries}
        return await self._starts.submit({**started, "worker_id": worker_id})

    async def succeeded(self, *, job_id: str, result: Any) -> JobRecord | None:
        """The job's row, now SUCCESS; None if it was final already."""
        return await self._successes.submit((job_id, result))

    async def announce(self, record: JobRecord, *, metric: str, seconds: float | None = None) -> None:
        """Publish the change for live followers and count it in the metrics (best effort)."""
        await self._announcements.submit(Announcement(record, metric, seconds))
