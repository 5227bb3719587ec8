"""ASGI middleware of our own."""

import asyncio
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
log = logging.getLogger(__name__)

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


class SecurityHeaders:
    """`nosniff` on every response. On HTML pages also a Content-Security-Policy (the service's own
    scripts and styles only, no plugins, no framing by any site), X-Frame-Options for browsers that
    predate frame-ancestors, and a same-origin Referrer-Policy. A page may bring a policy of its own."""

    PAGE_POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-content-type-options"] = "nosniff"
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("content-security-policy", self.PAGE_POLICY)
                    headers["x-frame-options"] = "DENY"
                    headers["referrer-policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Deadline:
    """Every request answered within `seconds`. A handler that has not begun its response by then (it
    waits on PostgreSQL or Redis, frozen or cut off) is cancelled, and the client gets 503 with
    Retry-After at once, while the handler's clean-up (a database connection waiting for its query's
    cancellation) finishes in the background; if it was waiting for the client's own body, 408. A
    response once begun (a stream of events) runs on. Work a cancelled handler had handed on (a job
    row being written with others') completes: a client retrying with its Idempotency-Key gets that job.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reading = False
        late = False
        begun = asyncio.Event()

        async def receive_watched() -> Message:
            nonlocal reading
            reading = True
            try:
                return await receive()
            finally:
                reading = False

        async def send_watched(message: Message) -> None:
            if late:
                return  # answered already, with 503: whatever the cancelled handler still sends is dropped
            if message["type"] == "http.response.start":
                begun.set()
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive_watched, send_watched))
        response_begun = asyncio.ensure_future(begun.wait())
        await asyncio.wait({handler, response_begun}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED)
        response_begun.cancel()
        if handler.done() or begun.is_set():
            return await handler
        late = True
        handler.cancel()
        handler.add_done_callback(_retrieve)
        await self._late(scope, receive, send, client_slow=reading)

    async def _late(self, scope: Scope, receive: Receive, send: Send, *, client_slow: bool) -> None:
        if client_slow:
            status, detail, headers = 408, "Request body not received in time", {"Connection": "close"}
        else:
            status, detail, headers = 503, "Service temporarily unavailable", {"Retry-After": "1"}
            log.warning("no answer within %.1f s to %s %s: 503", self.seconds, scope["method"], scope["path"])
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Collect what a handler cancelled at its deadline ended with, so that it is not reported as lost."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("a handler cancelled at its deadline ended with %r", error)


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
