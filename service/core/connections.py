"""The connections a process opens to PostgreSQL and Redis: the API's and the workers' alike."""

import asyncio
import logging

import asyncpg
from arq.connections import ArqRedis
from databases import Database
from redis.asyncio import ConnectionPool

from service.core import jobcodec
from service.core.errors import DEPENDENCY_ERRORS
from service.core.settings import Settings

log = logging.getLogger(__name__)


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


class PoolTooLarge(RuntimeError):
    """This process's pool could never fit within what PostgreSQL accepts."""


_CAPACITY = """
SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
       AS available,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use
"""


async def check_pool_fits(db: Database, settings: Settings, *, process: str) -> None:
    """Refuse to start with a pool PostgreSQL could never serve; warn when the server is nearly full.

    Every API process and every worker holds up to DB_POOL_MAX connections: together they must stay
    within max_connections (less the superuser's reserve). A PostgreSQL that does not answer is not
    checked here: the process starts, and /readyz says what is down."""
    try:
        async with asyncio.timeout(settings.db_connect_timeout + 1):
            row = await db.fetch_one(_CAPACITY)
    except DEPENDENCY_ERRORS as exc:
        log.warning("PostgreSQL did not answer the pool-size check (%r); starting anyway", exc)
        return
    assert row is not None
    available, in_use = int(row["available"]), int(row["in_use"])
    if settings.db_pool_max > available:
        raise PoolTooLarge(
            f"DB_POOL_MAX={settings.db_pool_max} for one {process} process, but PostgreSQL accepts {available}"
            " connections in all (max_connections less superuser_reserved_connections): lower DB_POOL_MAX, or"
            " raise max_connections"
        )
    if in_use + settings.db_pool_max > available:
        log.warning(
            "PostgreSQL has %d of %d connections in use: this %s process may open %d more (DB_POOL_MAX), and"
            " will wait for connections when it does; size DB_POOL_MAX x processes to fit max_connections",
            in_use, available, process, settings.db_pool_max,
        )  # fmt: skip


def open_redis(settings: Settings) -> ArqRedis:
    # Not arq's create_pool, which pings at creation and so would not start while Redis is down.
    # Bounded: a Redis that does not answer (frozen, or its host gone) fails a command within
    # redis_timeout, well inside the API's request deadline, instead of holding the request.
    timeout = settings.redis_timeout
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
    )
    return ArqRedis(pool, job_serializer=jobcodec.serialize, job_deserializer=jobcodec.deserialize)
