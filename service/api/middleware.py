"""ASGI middleware of our own."""

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import HttpMetrics
from service.api.responses import JSONResponse
from service.core.requestid import request_id

access_log = logging.getLogger("service.access")

TOO_LARGE = "Content Too Large"
REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestId:
    """A request id per HTTP request (the client's X-Request-ID when sane), in the response, the log
    lines and the jobs the request enqueues."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = REQUEST_ID_HEADER.encode()
        given = next((value.decode("latin-1") for key, value in scope["headers"] if key == header), "")
        current = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(current)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = current
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class BodySizeLimit:
    """A 413 {"detail": ...} for a body over the limit: before reading it when Content-Length says so,
    else as soon as the streamed bytes pass the limit (the endpoint reading it gets an HTTPException,
    which the app's handler renders). Starlette's own `max_body_size` answers in plain text instead.
    """

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_size:
            response = JSONResponse({"detail": TOO_LARGE}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_size:
                raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited_receive, send)


class Telemetry:
    """Per request: one access log line (with the request id) and the HTTP metrics, by route template."""

    def __init__(
        self, app: ASGIApp, metrics: HttpMetrics, route_names: Mapping[Any, str], access_log: bool = True
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_names = route_names
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - started
            route = self.route_names.get(scope.get("endpoint"), "unmatched")
            self.metrics.observe(scope["method"], route, status, seconds)
            if self.access_log:
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"route": route, "duration_ms": round(seconds * 1000, 1)},
                )
