"""Client errors as small exception classes, and the handlers that turn every error (the core's domain
errors and dependency failures included) into {"detail": ...} with its status."""

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from service.api.responses import JSONResponse
from service.core.errors import (
    DEPENDENCY_ERRORS,
    AlreadyExists,
    DomainError,
    IdempotencyMismatch,
    InvalidField,
    QueueFull,
    is_dependency_failure,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 400
    detail = "Bad request"
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.detail)
        if detail is not None:
            self.detail = detail


class NotFound(APIError):
    status_code = 404
    detail = "Not found"


class Conflict(APIError):
    status_code = 409
    detail = "Conflict"


class Forbidden(APIError):
    status_code = 403
    detail = "Not allowed"


class Unauthorized(APIError):
    status_code = 401
    detail = "Not authenticated"
    headers = MappingProxyType({"WWW-Authenticate": "Bearer"})


class InvalidCredentials(Unauthorized):
    detail = "Incorrect username or password"


class InvalidAuthToken(Unauthorized):
    detail = "Invalid or expired token"
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Unavailable(APIError):
    status_code = 503
    detail = "Service temporarily unavailable"
    headers = MappingProxyType({"Retry-After": "1"})


class InvalidRequest(APIError):
    """Field-level validation errors, each located in the body, the query, the path or a header:
    {"detail": [{"loc": [...], "msg": ..., "type": ...}]}."""

    status_code = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("Invalid request")
        self.errors = errors

    @classmethod
    def of(cls, error: ValidationError, location: str) -> "InvalidRequest":
        """pydantic's errors, located."""
        return cls(
            [
                {"loc": [location, *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in error.errors(include_url=False, include_input=False, include_context=False)
            ]
        )

    @classmethod
    def header(cls, name: str, message: str, kind: str) -> "InvalidRequest":
        return cls([{"loc": ["header", name], "msg": message, "type": kind}])


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    detail: Any = exc.errors if isinstance(exc, InvalidRequest) else exc.detail
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


# The status of each refusal the core can raise; the message is the core's own.
DOMAIN_STATUS: Mapping[type[DomainError], int] = MappingProxyType({AlreadyExists: 409, QueueFull: 429})


def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    if isinstance(exc, IdempotencyMismatch):  # a 422 like any other: located, in a list
        return _api_error(request, InvalidRequest.header("Idempotency-Key", exc.message, "idempotency_mismatch"))
    if isinstance(exc, InvalidField):
        located = [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]
        return _api_error(request, InvalidRequest(located))
    status = next(code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind))
    headers = {"Retry-After": "5"} if status == 429 else None
    return JSONResponse({"detail": exc.message}, status_code=status, headers=headers)


def _dependency_error(request: Request, exc: Exception) -> Response:
    if not is_dependency_failure(exc):
        return _server_error(request, exc)
    # The client should retry; nothing was half-done.
    log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
    return _api_error(request, Unavailable())


def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left before its body arrived: nothing was done, and nobody is there to answer.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)  # nginx's "client closed request", for the access log and metrics


def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


exception_handlers: dict[Any, ExceptionHandler] = {
    APIError: _api_error,
    DomainError: _domain_error,
    HTTPException: _http_error,
    **dict.fromkeys(DEPENDENCY_ERRORS, _dependency_error),
    ClientDisconnect: _client_gone,
    Exception: _server_error,
}
