"""Webhooks: a user's endpoints for events, their secrets, and their delivery logs (owner-scoped: another
user's webhook is a 404). Delivery itself is the worker's (jobs/webhooks.py)."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import current_user
from service.api.background import within_write_quota
from service.api.errors import Conflict, InvalidRequest, NotFound
from service.api.http import parse_body, parse_query
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import AppState, app_state
from service.core import ssrf
from service.core.queries import webhooks as queries
from service.core.schemas import (
    DeliveryPublic,
    DeliveryQuery,
    Page,
    UserRecord,
    WebhookCreate,
    WebhookPublic,
    WebhookUpdate,
    WebhookWithSecret,
)
from service.core.webhooks import new_secret

TAG = "webhooks"


def _missing() -> NotFound:
    return NotFound("Webhook not found")


async def _checked_url(state: AppState, url: str) -> str:
    """The URL if a webhook may be sent there (its host resolved, every address public or allowed); a 422
    located at the url field otherwise, saying why."""
    try:
        await ssrf.check(url, ssrf.Policy.parse(state.settings.webhook_allowed_hosts))
    except ssrf.UnsafeTarget as refused:
        raise InvalidRequest([{"loc": ["body", "url"], "msg": refused.message, "type": "unsafe_url"}]) from None
    return url


async def _writer(request: Request) -> tuple[AppState, UserRecord]:
    state, user = app_state(request), await current_user(request)
    await within_write_quota(state, user)
    return state, user


@operation(summary="Register a webhook (its secret is shown once, here)", tag=TAG, body=WebhookCreate,
           response=WebhookWithSecret, status=201, errors=(409, 429))  # fmt: skip
async def create_webhook(request: Request) -> Response:
    state, user = await _writer(request)
    data = await parse_body(request, WebhookCreate)
    values = {**data.model_dump(mode="json"), "url": await _checked_url(state, data.url), "secret": new_secret()}
    cap = state.settings.webhooks_per_user
    created = await queries.create(state.db, owner_id=user.id, values=values, cap=cap)
    if created is None:
        raise Conflict(f"You have {cap} webhooks, as many as one user may: delete one first")
    return respond(created, status_code=201)


@operation(summary="Your webhooks", tag=TAG, query=Page, response=WebhookPublic, many=True)
async def list_webhooks(request: Request) -> Response:
    user = await current_user(request)
    page = parse_query(request, Page)
    found = await queries.hooks.page(app_state(request).db, owner_id=user.id, limit=page.limit, offset=page.offset)
    return respond(found)


@operation(summary="One of your webhooks", tag=TAG, response=WebhookPublic, errors=(404,))
async def read_webhook(request: Request) -> Response:
    user = await current_user(request)
    found = await queries.hooks.get(app_state(request).db, owner_id=user.id, row_id=request.path_params["id"])
    if found is None:
        raise _missing()
    return respond(found)


@operation(summary="Change one of your webhooks (URL, events, description, active)", tag=TAG, body=WebhookUpdate,
           response=WebhookPublic, errors=(404, 429))  # fmt: skip
async def update_webhook(request: Request) -> Response:
    state, user = await _writer(request)
    changes = (await parse_body(request, WebhookUpdate)).changes()
    row_id = request.path_params["id"]
    if await queries.hooks.get(state.db, owner_id=user.id, row_id=row_id) is None:
        raise _missing()  # before the URL check: someone else's webhook tells nothing
    if "url" in changes:
        await _checked_url(state, changes["url"])
    if "events" in changes:
        changes["events"] = [event.value for event in changes["events"]]
    found = await queries.hooks.update(state.db, owner_id=user.id, row_id=row_id, changes=changes)
    if found is None:
        raise _missing()
    return respond(found)


@operation(summary="Delete one of your webhooks, and its delivery log", tag=TAG, status=204, errors=(404, 429))
async def delete_webhook(request: Request) -> Response:
    state, user = await _writer(request)
    if not await queries.hooks.delete(state.db, owner_id=user.id, row_id=request.path_params["id"]):
        raise _missing()
    return Response(status_code=204)


@operation(summary="A new signing secret (shown once); the old one signs beside it for a grace period", tag=TAG,
           response=WebhookWithSecret, errors=(404, 429))  # fmt: skip
async def rotate_secret(request: Request) -> Response:
    state, user = await _writer(request)
    grace = state.settings.webhook_secret_grace_hours * 3600
    rotated = await queries.rotate(
        state.db, owner_id=user.id, webhook_id=request.path_params["id"], secret=new_secret(), grace_seconds=grace
    )
    if rotated is None:
        raise _missing()
    return respond(rotated)


@operation(summary="A webhook's delivery log, newest first", tag=TAG, query=DeliveryQuery, response=DeliveryPublic,
           many=True, errors=(404,))  # fmt: skip
async def list_deliveries(request: Request) -> Response:
    user = await current_user(request)
    query = parse_query(request, DeliveryQuery)
    state, webhook_id = app_state(request), request.path_params["id"]
    if await queries.hooks.get(state.db, owner_id=user.id, row_id=webhook_id) is None:
        raise _missing()
    return respond(await queries.deliveries(state.db, owner_id=user.id, webhook_id=webhook_id, query=query))


@operation(summary="Send a delivered or failed event again (same webhook-id), from its first attempt", tag=TAG,
           response=DeliveryPublic, errors=(404, 409, 429))  # fmt: skip
async def replay_delivery(request: Request) -> Response:
    state, user = await _writer(request)
    ids = {
        "owner_id": user.id,
        "webhook_id": request.path_params["id"],
        "delivery_id": request.path_params["delivery_id"],
    }
    replayed = await queries.replay(state.db, **ids)
    if replayed is not None:
        return respond(replayed)
    found = await queries.get_delivery(state.db, **ids)
    if found is None:
        raise NotFound("Delivery not found")
    raise Conflict(f"This delivery is {found.status} already: it will be sent without a replay")


routes = [
    Route("/webhooks", create_webhook, methods=["POST"]),
    Route("/webhooks", list_webhooks, methods=["GET"], name="list_webhooks"),
    Route("/webhooks/{id:id}", read_webhook, methods=["GET"], name="read_webhook"),
    Route("/webhooks/{id:id}", update_webhook, methods=["PATCH"], name="update_webhook"),
    Route("/webhooks/{id:id}", delete_webhook, methods=["DELETE"], name="delete_webhook"),
    Route("/webhooks/{id:id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/webhooks/{id:id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/webhooks/{id:id}/deliveries/{delivery_id:id}/replay", replay_delivery, methods=["POST"]),
]
