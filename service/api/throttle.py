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


@dataclass(frozen=True)
class Check:
    """One event to count against a limit, and what to say when it is over."""

    rule: Limit
    subject: str
    message: str
    cost: int = 1  # events it counts as: a batch of N jobs is N


# For each key (ARGV: its window in ms, its limit and its cost, by thirds): `cost` more events in its
# window, which starts with the first; the events so far and the milliseconds left. A count that this
# takes over the limit keeps only one of its cost: a refused batch counts as one refused request, so a
# user with 5 left who asks for 10 still has 4. One command for a batch, where a pipeline of INCRBY,
# PEXPIRE NX and PTTL would be three a key, each packed and parsed by the client.
COUNT = """
local counted = {}
local n = #KEYS
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 * n + i])
  local events = redis.call('INCRBY', key, cost)
  if cost > 1 and events > tonumber(ARGV[n + i]) then redis.call('DECRBY', key, cost - 1) end
  counted[2 * i - 1] = events
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, ARGV[i])
    ttl = tonumber(ARGV[i])
  end
  counted[2 * i] = ttl
end
return counted
"""


class Throttle:
    """Counts events against limits, in Redis, for every API process alike. The counts of concurrent
    requests go to Redis together, one script call per batch (service.core.batching): a request under
    its limits shares its round trip with the others."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(COUNT)
        self._counts = Batcher(self._count_many)

    async def check(self, *checks: Check) -> None:
        """Count each check's events (its cost), together, and refuse (429, with Retry-After) if any is
        beyond its limit: the first such, in the order given."""
        counted = await self._counts.submit(checks)
        for check, (events, ttl_ms) in zip(checks, counted, strict=True):
            if events > check.rule.limit:
                raise TooManyRequests(check.message, ttl_ms / 1000)

    async def forget(self, rule: Limit, subject: str) -> None:
        await self._redis.delete(rule.key(subject))

    async def _count_many(self, batch: list[tuple[Check, ...]]) -> list[list[tuple[int, int]]]:
        """For each request's checks: the events in each one's current window, and the milliseconds
        until that window ends."""
        checks = [check for checks in batch for check in checks]
        counters = [check.rule.key(check.subject) for check in checks]
        windows = [check.rule.window * 1000 for check in checks]
        limits = [check.rule.limit for check in checks]
        costs = [check.cost for check in checks]
        replies = await self._script(keys=counters, args=[*windows, *limits, *costs])
        pairs = iter(zip(replies[0::2], replies[1::2], strict=True))
        return [[(int(events), int(ttl)) for events, ttl in (next(pairs) for _ in checks)] for checks in batch]
