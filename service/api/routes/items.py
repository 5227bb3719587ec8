from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import current_user
from service.api.background import within_write_quota
from service.api.errors import NotFound
from service.api.http import parse_body, parse_query
from service.api.openapi import operation
from service.api.owned import OwnedEndpoints
from service.api.responses import respond
from service.api.state import app_state
from service.core.queries.items import items
from service.core.schemas import ItemCreate, ItemPublic, ItemUpdate, Page

endpoints = OwnedEndpoints(noun="item", tag="items", store=items, update_model=ItemUpdate, query_model=Page)


@operation(summary="Create an item", tag="items", body=ItemCreate, response=ItemPublic, status=201, errors=(429,))
async def create_item(request: Request) -> Response:
    user = await current_user(request)
    data = await parse_body(request, ItemCreate)
    await within_write_quota(app_state(request), user)
    item = await items.create(app_state(request).db, owner_id=user.id, values=data.model_dump())
    return respond(item, status_code=201)


@operation(
    summary="A user's items: your own only", tag="items", query=Page, response=ItemPublic, many=True, errors=(404,)
)
async def user_items(request: Request) -> Response:
    user = await current_user(request)
    if request.path_params["user_id"] != user.id:
        raise NotFound("User not found")
    page = parse_query(request, Page)
    return respond(await items.page(app_state(request).db, owner_id=user.id, limit=page.limit, offset=page.offset))


routes = [
    Route("/items", create_item, methods=["POST"]),
    *endpoints.routes("/items"),
    Route("/users/{user_id:id}/items", user_items, methods=["GET"]),
]
