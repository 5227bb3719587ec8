"""ASGI middleware of our own."""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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


NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]


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
                headers = list(message.get("headers", ()))
                headers.append(NOSNIFF)
                if any(name == b"content-type" and value.startswith(b"text/html") for name, value in headers):
                    if not any(name == b"content-security-policy" for name, _ in headers):
                        headers.append((b"content-security-policy", self.PAGE_POLICY.encode()))
                    headers += PAGE_HEADERS
                message["headers"] = headers
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
        watch = _Watch()
        request = asyncio.current_task()
        loop = asyncio.get_running_loop()

        async def receive_watched() -> Message:
            watch.reading = True
            try:
                return await receive()
            finally:
                watch.reading = False

        async def send_watched(message: Message) -> None:
            if watch.answer is not None:
                return  # answered already, with 503: whatever the cancelled handler still sends is dropped
            if message["type"] == "http.response.start":
                watch.begun = True
            await send(message)

        def expire() -> None:
            if watch.begun or request is None:
                return
            # The answer goes out from a task of its own, now; the handler, cancelled, cleans up meanwhile.
            watch.answer = loop.create_task(self._late(scope, receive, send, client_slow=watch.reading))
            request.cancel()

        timer = loop.call_later(self.seconds, expire)  # a timer, not a task: next to nothing per request
        try:
            await self.app(scope, receive_watched, send_watched)
        except asyncio.CancelledError:
            if watch.answer is None or request is None:
                raise
            request.uncancel()
        finally:
            timer.cancel()
        if watch.answer is not None:
            await watch.answer

    async def _late(self, scope: Scope, receive: Receive, send: Send, *, client_slow: bool) -> None:
        if client_slow:
            status, detail, headers = 408, "Request body not received in time", {"Connection": "close"}
        else:
            status, detail, headers = 503, "Service temporarily unavailable", {"Retry-After": "1"}
            log.warning("no answer within %.1f s to %s %s: 503", self.seconds, scope["method"], scope["path"])
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


@dataclass
class _Watch:
    """What Deadline knows of one request: the client's body being read, the response begun, the 503."""

    reading: bool = False
    begun: bool = False
    answer: asyncio.Task[None] | None = None


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
