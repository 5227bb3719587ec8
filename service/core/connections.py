"""The connections a process opens to PostgreSQL and Redis: the API's and the workers' alike."""

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from arq.connections import ArqRedis
from databases import Database
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel

from service.core import jobcodec
from service.core.dsn import PostgresDSN
from service.core.errors import DEPENDENCY_ERRORS
from service.core.packing import pack_with_hiredis
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
    # Several hosts (a primary and its standby) reach asyncpg as options: `databases` reads one host.
    url, hosts = PostgresDSN.parse(settings.database_url).for_databases()
    return Database(
        url,
        **hosts,
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
    """The Redis primary: REDIS_URL's server, or the one the sentinels (REDIS_SENTINELS) name, followed
    through failovers. Not arq's create_pool, which pings at creation and so would not start while
    Redis is down. Bounded: a Redis that does not answer (frozen, or its host gone) fails a command
    within redis_timeout, well inside the API's request deadline, instead of holding the request."""
    timeout = settings.redis_timeout
    bounded: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if not settings.redis_sentinels:
        pool = ConnectionPool.from_url(settings.redis_url, health_check_interval=30, **bounded)
        client = ArqRedis(pool, job_serializer=jobcodec.serialize, job_deserializer=jobcodec.deserialize)
        return pack_with_hiredis(client)
    credentials = redis_credentials(settings)
    sentinel = Sentinel(settings.sentinel_hosts, sentinel_kwargs=bounded, **credentials, **bounded)  # type: ignore[no-untyped-call]
    redis: ArqRedis = sentinel.master_for(settings.redis_sentinel_master, redis_class=ArqRedis)
    redis.job_serializer, redis.job_deserializer = jobcodec.serialize, jobcodec.deserialize
    return pack_with_hiredis(redis)


def redis_credentials(settings: Settings) -> dict[str, Any]:
    """The database number and credentials REDIS_URL gives, for connections the sentinels point to."""
    parts = urlsplit(settings.redis_url)
    database = parse_qs(parts.query).get("db", [parts.path.lstrip("/") or "0"])[0]
    return {"db": int(database), "username": parts.username or None, "password": parts.password or None}
