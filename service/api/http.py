"""Request parsing into pydantic models: a 422 with field errors, located, on anything invalid."""

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.api.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)


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
