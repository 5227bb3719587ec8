"""The alembic revisions: a round trip on an empty database, and no drift from service.core.tables."""

import asyncio
import uuid

import asyncpg
import sqlalchemy as sa
from alembic import command

from service.dev import migrate
from service.dev.servers import ensure_database
from tests.conftest import Servers


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


def test_upgrade_downgrade_upgrade_on_an_empty_database(servers: Servers) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(ensure_database(url))
    assert asyncio.run(_tables(url)) == set()

    migrate.upgrade(url)
    assert asyncio.run(_tables(url)) >= {"users", "items", "tasks", "jobs", "alembic_version"}
    migrate.downgrade(url)
    assert asyncio.run(_tables(url)) == {"alembic_version"}
    migrate.upgrade(url)
    assert asyncio.run(_tables(url)) >= {"users", "items", "tasks", "jobs"}
    # `alembic check` raises when service.core.tables and the revisions disagree.
    command.check(migrate.alembic_config(url))
