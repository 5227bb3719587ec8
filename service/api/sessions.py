"""Dashboard sessions: a random id in the browser's cookie, the session itself in Redis.

The cookie is not an API token (it opens nothing but /dashboard), logging out ends it on the server,
and a password change ends it (the session holds the user's token version of its login).
"""

import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from service.core import keys


@dataclass(frozen=True)
class Session:
    session_id: str
    user_id: int
    token_version: int


class Sessions:
    def __init__(self, redis: Redis, lifetime_seconds: int) -> None:
        self._redis = redis
        self.lifetime_seconds = lifetime_seconds

    async def start(self, user_id: int, token_version: int) -> str:
        session_id = secrets.token_urlsafe(32)
        value = f"{user_id}:{token_version}"
        await self._redis.set(keys.SESSION + session_id, value, ex=self.lifetime_seconds)
        return session_id

    async def get(self, session_id: str) -> Session | None:
        if not 20 <= len(session_id) <= 64:
            return None
        value = await self._redis.get(keys.SESSION + session_id)
        if value is None:
            return None
        user_id, _, version = value.decode().partition(":")
        return Session(session_id, int(user_id), int(version))

    async def end(self, session_id: str) -> None:
        await self._redis.delete(keys.SESSION + session_id)
