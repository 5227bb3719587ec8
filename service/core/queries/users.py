from collections.abc import Mapping
from typing import Any

import asyncpg
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql import ARRAY

from service.core.batching import Batcher
from service.core.errors import AlreadyExists
from service.core.queries.prepared import Prepared, param
from service.core.queries.rows import as_dict
from service.core.schemas import UserRecord
from service.core.tables import users

_TAKEN = {"uq_users_email": "Email already registered", "uq_users_username_lower": "Username already taken"}


def _user(row: Any) -> UserRecord:
    return UserRecord.model_validate(as_dict(row))


def _conflict(exc: asyncpg.UniqueViolationError) -> AlreadyExists:
    return AlreadyExists(_TAKEN.get(exc.constraint_name or "", "Already exists"))


async def create_user(db: Database, *, email: str, username: str, hashed_password: str) -> UserRecord:
    query = users.insert().values(email=email, username=username, hashed_password=hashed_password)
    try:
        return _user(await db.fetch_one(query.returning(*users.c)))
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None


async def get_user(db: Database, *, user_id: int) -> UserRecord | None:
    row = await db.fetch_one(users.select().where(users.c.id == user_id))
    return None if row is None else _user(row)


_GET_USERS = Prepared(users.select().where(users.c.id == sa.func.any(param("user_ids", type_=ARRAY(sa.BigInteger)))))


class UserLookup:
    """Users by id, for authentication: every authenticated request asks for its user, so the users
    of concurrent requests are read together, one prepared statement per batch (service.core.batching)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batch = Batcher(self._read)

    async def get(self, user_id: int) -> UserRecord | None:
        return await self._batch.submit(user_id)

    async def _read(self, user_ids: list[int]) -> list[UserRecord | None]:
        rows = await _GET_USERS.fetch_all(self._db, user_ids=list(set(user_ids)))
        found = {row["id"]: UserRecord.model_validate(row) for row in rows}
        return [found.get(user_id) for user_id in user_ids]


async def find_by_login(db: Database, *, login: str) -> UserRecord | None:
    """The user whose username (in any case) or email is login."""
    login = login.strip()
    where = sa.or_(sa.func.lower(users.c.username) == login.lower(), users.c.email == login.lower())
    row = await db.fetch_one(users.select().where(where))
    return None if row is None else _user(row)


async def list_users(db: Database, *, limit: int, offset: int) -> list[UserRecord]:
    query = users.select().order_by(users.c.id).limit(limit).offset(offset)
    return [_user(row) for row in await db.fetch_all(query)]


async def update_user(
    db: Database, *, user_id: int, changes: Mapping[str, Any], revoke_tokens: bool = False
) -> UserRecord | None:
    """Apply changes. revoke_tokens refuses every token and session issued before (a new password);
    a new email is unverified until its link is followed."""
    values: dict[str, Any] = {**changes, "updated_at": sa.func.now()}
    if revoke_tokens:
        values["token_version"] = users.c.token_version + 1
    if "email" in changes:
        values["email_verified_at"] = sa.case((users.c.email == changes["email"], users.c.email_verified_at))
    query = users.update().where(users.c.id == user_id).values(**values)
    try:
        row = await db.fetch_one(query.returning(*users.c))
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    return None if row is None else _user(row)


async def delete_user(db: Database, *, user_id: int) -> bool:
    return await db.fetch_val(users.delete().where(users.c.id == user_id).returning(users.c.id)) is not None


async def promote_admin(db: Database, *, email: str) -> bool:
    query = users.update().where(users.c.email == email.strip().lower()).values(is_admin=True, updated_at=sa.func.now())
    return await db.fetch_val(query.returning(users.c.id)) is not None


async def verify_email(db: Database, *, user_id: int, email: str) -> UserRecord | None:
    """Mark the user's email verified, if it is still this one; None otherwise."""
    query = (
        users.update()
        .where(users.c.id == user_id, users.c.email == email)
        .values(email_verified_at=sa.func.coalesce(users.c.email_verified_at, sa.func.now()))
        .returning(*users.c)
    )
    row = await db.fetch_one(query)
    return None if row is None else _user(row)
