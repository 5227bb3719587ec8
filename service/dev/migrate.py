"""Applying the alembic revisions in migrations/ from Python (the `alembic` CLI works too)."""

from alembic import command
from alembic.config import Config

from service.core.settings import PROJECT_DIR


def alembic_config(database_url: str) -> Config:
    return Config(toml_file=PROJECT_DIR / "pyproject.toml", attributes={"database_url": database_url})


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
