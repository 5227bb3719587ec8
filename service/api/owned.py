"""Read, change, delete and list endpoints for rows a user owns (items, tasks): one shape, one code."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import current_user
from service.api.background import within_write_quota
from service.api.conditional import respond_tagged
from service.api.errors import NotFound
from service.api.http import parse_body, parse_query
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import app_state
from service.core.queries.owned import Owned
from service.core.schemas import Page, Patch

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound=Page)


def _no_filters(query: Page) -> Sequence[sa.ColumnElement[bool]]:
    return ()


@dataclass(frozen=True)
class OwnedEndpoints(Generic[M, Q]):
    noun: str  # "item"
    tag: str
    store: Owned[M]
    update_model: type[Patch]
    query_model: type[Q]
    filters: Callable[[Q], Sequence[sa.ColumnElement[bool]]] = field(default=_no_filters)

    def _missing(self) -> NotFound:
        return NotFound(f"{self.noun.capitalize()} not found")

    def routes(self, path: str) -> list[Route]:
        """GET path, and GET / PATCH / DELETE path/{id}."""
        store, public, noun, tag = self.store, self.store.model, self.noun, self.tag

        @operation(summary=f"Your {noun}s", tag=tag, query=self.query_model, response=public, many=True)
        async def page(request: Request) -> Response:
            user = await current_user(request)
            query = parse_query(request, self.query_model)
            found = await store.page(
                app_state(request).db,
                owner_id=user.id,
                limit=query.limit,
                offset=query.offset,
                filters=self.filters(query),
            )
            return respond(found)

        @operation(summary=f"One of your {noun}s", tag=tag, response=public, errors=(404,), etag=True)
        async def read(request: Request) -> Response:
            user = await current_user(request)
            row = await store.get(app_state(request).db, owner_id=user.id, row_id=request.path_params["id"])
            if row is None:
                raise self._missing()
            return respond_tagged(request, row)

        @operation(
            summary=f"Change one of your {noun}s", tag=tag, body=self.update_model, response=public, errors=(404, 429)
        )
        async def update(request: Request) -> Response:
            user = await current_user(request)
            await within_write_quota(app_state(request), user)
            changes = (await parse_body(request, self.update_model)).changes()
            db, row_id = app_state(request).db, request.path_params["id"]
            if changes:
                row = await store.update(db, owner_id=user.id, row_id=row_id, changes=changes)
            else:
                row = await store.get(db, owner_id=user.id, row_id=row_id)
            if row is None:
                raise self._missing()
            return respond(row)

        @operation(summary=f"Delete one of your {noun}s", tag=tag, status=204, errors=(404, 429))
        async def delete(request: Request) -> Response:
            user = await current_user(request)
            await within_write_quota(app_state(request), user)
            if not await store.delete(app_state(request).db, owner_id=user.id, row_id=request.path_params["id"]):
                raise self._missing()
            return Response(status_code=204)

        item_path = path + "/{id:id}"
        return [
            Route(path, page, methods=["GET"], name=f"list_{noun}s"),
            Route(item_path, read, methods=["GET"], name=f"read_{noun}"),
            Route(item_path, update, methods=["PATCH"], name=f"update_{noun}"),
            Route(item_path, delete, methods=["DELETE"], name=f"delete_{noun}"),
        ]
