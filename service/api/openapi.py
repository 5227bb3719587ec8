"""OpenAPI 3.1 generated from the routes and the pydantic models each endpoint declares with @operation."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Route

from service.api.routing import IdConvertor
from service.core.schemas import BIGINT_DIGITS

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Mode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "OAuth2PasswordBearer"

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: the work runs in the background",
    204: "No content",
    304: "Not modified: the representation you hold (If-None-Match) is current; no body",
    401: "Missing, invalid or expired token",
    403: "Not allowed",
    404: "Not found, or not yours",
    409: "Conflicts with an existing resource",
    413: "Request body too large",
    422: "Invalid input",
    429: "Too many requests",
    503: "A dependency is unavailable; retry later",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False  # the response is a list of `response`
    events: type[BaseModel] | None = None  # a text/event-stream of these, one per event's data
    status: int = 200
    errors: tuple[int, ...] = ()
    auth: bool = True
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()  # request headers it reads, by their names in HEADER_PARAMETERS
    location: bool = True  # a 202 says in Location where to follow its job
    etag: bool = False  # its 200 carries an ETag; a matching If-None-Match is answered 304


def operation(**spec: Any) -> Callable[[Endpoint], Endpoint]:
    """Declare an endpoint's inputs and outputs for the OpenAPI document."""

    def attach(endpoint: Endpoint) -> Endpoint:
        endpoint.__openapi__ = Operation(**spec)  # type: ignore[attr-defined]
        return endpoint

    return attach


def _operations(routes: Iterable[BaseRoute]) -> Iterable[tuple[Route, str, Operation]]:
    for route in routes:
        if not isinstance(route, Route):
            continue
        # A route merged by service.api.routing keeps the route each method came from.
        by_method: dict[str, Route] = getattr(route.endpoint, "__methods__", {})
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            origin = by_method.get(method, route)
            spec = getattr(origin.endpoint, "__openapi__", None)
            if isinstance(spec, Operation):
                yield origin, method.lower(), spec


def _event_schema(data: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event: its name, and its data as JSON."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


def _models(specs: Iterable[Operation]) -> list[tuple[type[BaseModel], Mode]]:
    seen: dict[tuple[type[BaseModel], Mode], None] = {}
    for spec in specs:
        for model in (spec.body, spec.form, spec.query):
            if model is not None:
                seen[model, "validation"] = None
        for model in (spec.response, spec.events):
            if model is not None:
                seen[model, "serialization"] = None
    return list(seen)


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    def schema(convertor: object) -> dict[str, Any]:
        if isinstance(convertor, IdConvertor):
            return {"type": "integer", "minimum": 0, "maximum": 10**BIGINT_DIGITS - 1}
        if isinstance(convertor, IntegerConvertor):
            return {"type": "integer", "minimum": 0}
        return {"type": "number"} if isinstance(convertor, FloatConvertor) else {"type": "string"}

    return [
        {"name": name, "in": "path", "required": True, "schema": schema(convertor)}
        for name, convertor in route.param_convertors.items()
    ]


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _content(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


# Request headers, declared once and referred to by the operations that read them.
HEADER_PARAMETERS: dict[str, Any] = {
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Your id for this request (1-64 of A-Z a-z 0-9 . _ : -); echoed back, and in the logs of "
        "the jobs it starts. One is made up when absent or unfit.",
        "schema": {"type": "string"},
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Sent again with a retried request, the same key returns the same job instead of a second "
        "one (422 if the body differs).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "The ETag(s) of the representation you hold (RFC 9110, weak comparison; `*` for any): "
        "304 without a body if one of them is current.",
        "schema": {"type": "string"},
    },
}
# Response headers, declared once, by their names.
RESPONSE_HEADERS: dict[str, Any] = {
    "X-Request-ID": {"description": "The request's id (yours, or one made up)", "required": True,
                     "schema": {"type": "string"}},
    "Location": {"description": "Where to follow the job", "required": True, "schema": {"type": "string"}},
    "ETag": {"description": "The representation's entity tag, for If-None-Match", "required": True,
             "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again", "required": True,
                    "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "The authentication scheme: Bearer", "required": True,
                         "schema": {"type": "string"}},
}  # fmt: skip


def _headers(status: int, spec: Operation | None = None) -> dict[str, Any]:
    """The headers a response with this status carries (of this operation, for its own statuses)."""
    names = ["X-Request-ID"]
    names += ["Location"] if status == 202 and spec is not None and spec.location else []
    names += ["ETag"] if status in (200, 304) and spec is not None and spec.etag else []
    names += ["Retry-After"] if status in (429, 503) else []
    names += ["WWW-Authenticate"] if status == 401 else []
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _operation(route: Route, spec: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": spec.summary, "tags": [spec.tag], "operationId": route.name}
    params = _path_parameters(route) + (_query_parameters(spec.query) if spec.query else [])
    headers = (*spec.headers, "IfNoneMatch") if spec.etag else spec.headers
    params += [{"$ref": f"#/components/parameters/{name}"} for name in (*headers, "RequestId")]
    op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {"required": True, "content": _content(refs[spec.body, "validation"])}
    if spec.form is not None:
        form = refs[spec.form, "validation"]
        op["requestBody"] = {"required": True, "content": _content(form, "application/x-www-form-urlencoded")}
    success: dict[str, Any] = {
        "description": STATUS_TEXT.get(spec.status, "OK"),
        "headers": _headers(spec.status, spec),
    }
    if spec.events is not None:
        success["content"] = _content(_event_schema(refs[spec.events, "serialization"]), "text/event-stream")
    elif spec.response is not None:
        schema = refs[spec.response, "serialization"]
        success["content"] = _content({"type": "array", "items": schema} if spec.many else schema, spec.media_type)
    elif spec.media_type != "application/json":
        success["content"] = {spec.media_type: {"schema": {"type": "string"}}}
    op["responses"] = {str(spec.status): success}
    if spec.etag:
        op["responses"]["304"] = {"description": STATUS_TEXT[304], "headers": _headers(304, spec)}
    errors = set(spec.errors) | {503}  # any operation may find PostgreSQL or Redis away
    errors |= {401} if spec.auth else set()
    errors |= {422} if spec.body or spec.form or spec.query else set()
    errors |= {413} if spec.body or spec.form else set()
    for status in sorted(errors):
        schema_name = "ValidationErrorDetail" if status == 422 else "ErrorDetail"
        op["responses"][str(status)] = {
            "description": STATUS_TEXT[status],
            "headers": _headers(status),
            "content": _content({"$ref": REF.format(model=schema_name)}),
        }
    if spec.auth:
        op["security"] = [{SECURITY_SCHEME: []}]
    return op


ERROR_SCHEMAS: dict[str, Any] = {
    "ErrorDetail": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string", "description": "What went wrong, for a person"}},
    },
    "ValidationErrorDetail": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["loc", "msg", "type"],
                    "properties": {
                        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            }
        },
    },
}


def openapi_document(routes: Iterable[BaseRoute], *, title: str, version: str) -> dict[str, Any]:
    operations = list(_operations(routes))
    refs, definitions = models_json_schema(_models(spec for _, _, spec in operations), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route, method, spec in operations:
        paths.setdefault(route.path_format, {})[method] = _operation(route, spec, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {**definitions.get("$defs", {}), **ERROR_SCHEMAS},
            "parameters": HEADER_PARAMETERS,
            "headers": RESPONSE_HEADERS,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "oauth2", "flows": {"password": {"tokenUrl": "/auth/token", "scopes": {}}}}
            },
        },
    }
