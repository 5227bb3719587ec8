"""Each worker's own heartbeat: who it is and what it has done, refreshed every few seconds.

arq has one health-check key per queue, refreshed hourly by default and overwritten by every
worker; the dashboard needs each worker, alive or not, within seconds.
"""

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field

from arq.cron import CronJob
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.core import keys

BEAT_SECONDS = keys.WORKER_BEAT_SECONDS
EXPIRES_SECONDS = keys.WORKER_EXPIRES_SECONDS


@dataclass
class WorkerStats:
    """Counted by the job lifecycle in this worker process."""

    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    queue: str = keys.QUEUE
    started_at: float = field(default_factory=time.time)
    complete: int = 0
    failed: int = 0
    retried: int = 0
    ongoing: int = 0


def describe(entry: CronJob) -> str:
    """A cron entry's schedule in words: "every minute at :00", or its fields."""
    fields = {name: getattr(entry, name) for name in ("month", "day", "weekday", "hour", "minute", "second")}
    given = {name: value for name, value in fields.items() if value is not None}
    if set(given) == {"second"}:
        seconds = sorted(given["second"]) if isinstance(given["second"], set) else [given["second"]]
        return "every minute at " + ", ".join(f":{second:02d}" for second in seconds)
    if set(given) == {"minute", "second"} and all(isinstance(given[name], int) for name in given):
        return f"every hour at :{given['minute']:02d}:{given['second']:02d}"
    return ", ".join(f"{name} {value}" for name, value in given.items())


async def beat(redis: Redis, stats: WorkerStats, schedule: list[CronJob], told: dict[str, str]) -> None:
    """One heartbeat: three commands in one round trip, and the cron entries whose next run changed since
    the last beat (told: what the last beats said of each). Workers gone quiet leave the list when the
    reconciler or the dashboard reads it (service.core.queuestats), not here at every beat."""
    now = time.time()
    key = keys.WORKER + stats.worker_id
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={**{k: str(v) for k, v in asdict(stats).items()}, "last_beat": str(now)})
        pipe.expire(key, EXPIRES_SECONDS)
        pipe.zadd(keys.WORKERS, {stats.worker_id: int(now * 1000)})
        for entry in schedule:
            next_run = entry.next_run.timestamp() if entry.next_run else None
            said = json.dumps({"schedule": describe(entry), "next_run": next_run})
            if told.get(entry.name) != said:
                pipe.hset(keys.CRON, entry.name, said)
                told[entry.name] = said
        await pipe.execute()


async def run_heartbeat(redis: Redis, stats: WorkerStats, schedule: list[CronJob], stopping: asyncio.Event) -> None:
    """Beat until stopping is set, then leave the list. A Redis outage skips beats, it does not stop
    them. Stopped by the event rather than cancelled, so that no beat cut off in flight (sent, its
    reply not yet read) can land after the worker left and list it again."""
    told: dict[str, str] = {}
    while not stopping.is_set():
        with contextlib.suppress(RedisError, OSError):
            await beat(redis, stats, schedule, told)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BEAT_SECONDS):
                await stopping.wait()
    await leave(redis, stats)


async def leave(redis: Redis, stats: WorkerStats) -> None:
    """Stopping cleanly: off the list at once rather than after EXPIRES_SECONDS."""
    with contextlib.suppress(RedisError, OSError):
        await redis.zrem(keys.WORKERS, stats.worker_id)
        await redis.delete(keys.WORKER + stats.worker_id)
