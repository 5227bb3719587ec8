"""Rate limits kept in Redis, shared by every API process: fixed windows counted with INCR."""

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from service.api.errors import APIError
from service.core import keys
from service.core.batching import Batcher


class TooManyRequests(APIError):
    status_code = 429
    detail = "Too many requests"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


@dataclass(frozen=True)
class Limit:
    name: str  # part of the Redis key
    limit: int  # events allowed per window
    window: int  # seconds

    def key(self, subject: str) -> str:
        return f"{keys.THROTTLE}{self.name}:{subject}"


class Throttle:
    """Counts events against limits, in Redis, for every API process alike. The counts of concurrent
    requests go to Redis together, in one MULTI/EXEC per batch (service.core.batching): a request under a
    limit shares its round trip with the others."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._counts = Batcher(self._count_many)

    async def check(self, rule: Limit, subject: str, message: str) -> None:
        """Count one event and refuse it (429, with Retry-After) beyond the limit."""
        events, ttl_ms = await self._counts.submit((rule, subject))
        if events > rule.limit:
            raise TooManyRequests(message, ttl_ms / 1000)

    async def forget(self, rule: Limit, subject: str) -> None:
        await self._redis.delete(rule.key(subject))

    async def _count_many(self, batch: list[tuple[Limit, str]]) -> list[tuple[int, int]]:
        """Add one event per (rule, subject); for each, the events in its current window and the
        milliseconds until that window ends."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for rule, subject in batch:
                key = rule.key(subject)
                pipe.incr(key)
                pipe.pexpire(key, rule.window * 1000, nx=True)
                pipe.pttl(key)
            replies = await pipe.execute()
        return [(int(events), int(ttl)) for events, ttl in zip(replies[0::3], replies[2::3], strict=True)]
