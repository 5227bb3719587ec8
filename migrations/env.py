"""Alembic environment: async, asyncpg, schema from service.core.tables.

The URL comes from the caller (`service.dev.migrate`) or, for the plain `alembic` CLI, from Settings.
"""

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.core.dsn import PostgresDSN
from service.core.settings import Settings
from service.core.tables import metadata

config = context.config


def _async_url() -> str:
    url = config.attributes.get("database_url") or Settings().database_url
    return PostgresDSN.parse(url).for_sqlalchemy().render_as_string(hide_password=False)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_async_url(), poolclass=sa.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_async_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
