"""The connections a process opens to PostgreSQL and Redis: the API's and the workers' alike."""

import asyncpg
from arq.connections import ArqRedis
from databases import Database
from redis.asyncio import ConnectionPool

from service.core import jobcodec
from service.core.settings import Settings


async def _keep_session(connection: asyncpg.Connection) -> None:
    """In place of asyncpg's session reset when a connection goes back to the pool: that reset is one
    more round trip per use (without it, POST /tasks handled 30 % more requests a second), for state
    we never leave behind (LISTEN, SET, advisory locks, open cursors). An open transaction is still
    rolled back before this."""


def open_database(settings: Settings, *, max_size: int | None = None) -> Database:
    # min_size 0 by default: the app starts (and /readyz answers 503) while PostgreSQL is down;
    # connections open on demand.
    return Database(
        settings.database_url,
        min_size=min(settings.db_pool_min, max_size or settings.db_pool_max),
        max_size=max_size or settings.db_pool_max,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        reset=_keep_session,
    )


def open_redis(settings: Settings) -> ArqRedis:
    # Not arq's create_pool, which pings at creation and so would not start while Redis is down.
    # Bounded: a Redis that does not answer (frozen, or its host gone) fails a command within
    # redis_timeout, well inside the API's request deadline, instead of holding the request.
    timeout = settings.redis_timeout
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
    )
    return ArqRedis(pool, job_serializer=jobcodec.serialize, job_deserializer=jobcodec.deserialize)
