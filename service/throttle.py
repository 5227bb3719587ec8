"""Rate limits kept in Redis, shared by every API process: fixed windows counted with INCR."""

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from service import keys
from service.errors import APIError


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


async def count(redis: Redis, rule: Limit, subject: str) -> tuple[int, int]:
    """Add one event for subject; (events in the current window, milliseconds until it ends)."""
    key = rule.key(subject)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.pexpire(key, rule.window * 1000, nx=True)
        pipe.pttl(key)
        events, _, ttl = await pipe.execute()
    return int(events), int(ttl)


async def check(redis: Redis, rule: Limit, subject: str, message: str) -> None:
    """Count one event and refuse it (429, with Retry-After) beyond the limit."""
    events, ttl = await count(redis, rule, subject)
    if events > rule.limit:
        raise TooManyRequests(message, ttl / 1000)


async def forget(redis: Redis, rule: Limit, subject: str) -> None:
    await redis.delete(rule.key(subject))
