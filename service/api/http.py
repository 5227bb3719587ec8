"""Request parsing into pydantic models: a 422 with field errors, located, on anything invalid; and
waiting on something for as long as the client stays."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from service.api.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")


async def parse_body(request: Request, model: type[Model]) -> Model:
    """The JSON body validated by model (an oversize body raises 413 while it is read)."""
    body = await request.body()
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise InvalidRequest.of(exc, "body") from None


def parse_query(request: Request, model: type[Model]) -> Model:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise InvalidRequest.of(exc, "query") from None


async def parse_form(request: Request, model: type[Model]) -> Model:
    async with request.form(max_files=0, max_fields=20) as form:
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest.of(exc, "body") from None


async def while_connected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The work's result; if the client disconnects first, the work is cancelled (what it holds is let
    go before this returns) and ClientDisconnect raised. For a request whose body is read, or has none."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        task.cancel()  # a no-op once it is done
        await asyncio.wait((task,))
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()
