"""Core statements compiled once, for the hot paths.

`databases` compiles a SQLAlchemy statement on every call; on the job lifecycle and the
`POST /tasks` path that cost more CPU than everything else (a third of a worker's time in a
py-spy profile). A `Prepared` statement is compiled once, at import, for asyncpg, and runs on the
asyncpg connection under the `databases` one (so it joins the caller's transaction), where
asyncpg's own statement cache prepares it once per connection.
"""

from collections.abc import Mapping, Set
from typing import Any, cast

import orjson
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import JSON

_DIALECT = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]


def param(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    """A value given when the statement runs (a placeholder None meanwhile, so it compiles once)."""
    return sa.bindparam(name, value=None, type_=type_)


def _encode(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def decoded(record: Any, json_columns: Set[str]) -> dict[str, Any]:
    """An asyncpg record as a dict, its JSON columns (which asyncpg returns as text) decoded."""
    row = dict(record)
    for name in json_columns & row.keys():
        if isinstance(row[name], str):
            row[name] = orjson.loads(row[name])
    return row


class Prepared:
    def __init__(self, statement: sa.ClauseElement) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True}))
        self.sql = str(compiled)
        self.order: list[str] = list(compiled.positiontup or ())
        self.constants: dict[str, Any] = dict(compiled.params)  # binds fixed when the statement was built
        self.json_params = {name for bind, name in compiled.bind_names.items() if isinstance(bind.type, JSON)}
        returned: Any = getattr(statement, "selected_columns", None) or getattr(statement, "_returning", None) or ()
        self.json_columns = {column.name for column in returned if isinstance(column.type, JSON)}

    def _arguments(self, values: Mapping[str, Any]) -> list[Any]:
        merged = {**self.constants, **values}
        return [_encode(merged[name]) if name in self.json_params else merged[name] for name in self.order]

    async def fetch_one(self, db: Database, **values: Any) -> dict[str, Any] | None:
        async with db.connection() as connection:
            record = await connection.raw_connection.fetchrow(self.sql, *self._arguments(values))
        return None if record is None else decoded(record, self.json_columns)

    async def fetch_all(self, db: Database, **values: Any) -> list[dict[str, Any]]:
        async with db.connection() as connection:
            records = await connection.raw_connection.fetch(self.sql, *self._arguments(values))
        return [decoded(record, self.json_columns) for record in records]

    async def fetch_val(self, db: Database, **values: Any) -> Any:
        async with db.connection() as connection:
            return await connection.raw_connection.fetchval(self.sql, *self._arguments(values))
