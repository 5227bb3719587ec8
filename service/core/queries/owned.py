"""Queries on rows that belong to a user: the owner is part of every WHERE, so a foreign id finds nothing."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from databases import Database
from pydantic import BaseModel

from service.core.queries.rows import as_dict

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Owned(Generic[M]):
    table: sa.Table
    model: type[M]

    def _where(self, owner_id: int, row_id: int) -> sa.ColumnElement[bool]:
        return sa.and_(self.table.c.id == row_id, self.table.c.owner_id == owner_id)

    def _one(self, row: Any) -> M:
        return self.model.model_validate(as_dict(row))

    async def create(self, db: Database, *, owner_id: int, values: Mapping[str, Any]) -> M:
        query = self.table.insert().values(owner_id=owner_id, **values).returning(*self.table.c)
        return self._one(await db.fetch_one(query))

    async def get(self, db: Database, *, owner_id: int, row_id: int) -> M | None:
        row = await db.fetch_one(self.table.select().where(self._where(owner_id, row_id)))
        return None if row is None else self._one(row)

    async def page(
        self,
        db: Database,
        *,
        owner_id: int,
        limit: int,
        offset: int,
        filters: Sequence[sa.ColumnElement[bool]] = (),
    ) -> list[M]:
        query = (
            self.table.select()
            .where(self.table.c.owner_id == owner_id, *filters)
            .order_by(self.table.c.id)
            .limit(limit)
            .offset(offset)
        )
        return [self._one(row) for row in await db.fetch_all(query)]

    async def update(self, db: Database, *, owner_id: int, row_id: int, changes: Mapping[str, Any]) -> M | None:
        query = (
            self.table.update()
            .where(self._where(owner_id, row_id))
            .values(**changes, updated_at=sa.func.now())
            .returning(*self.table.c)
        )
        row = await db.fetch_one(query)
        return None if row is None else self._one(row)

    async def delete(self, db: Database, *, owner_id: int, row_id: int) -> bool:
        query = self.table.delete().where(self._where(owner_id, row_id)).returning(self.table.c.id)
        return await db.fetch_val(query) is not None
