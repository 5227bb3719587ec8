"""The one ASGI middleware of our own: what every HTTP request gets at the edge.

Its parts are separate concerns, but one layer: each middleware layer costs every request a coroutine
frame that every resumption of the handler passes through, and a wrapper around `send`; five of them
were a tenth of the API's CPU under `POST /tasks`.
"""

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import HttpMetrics
from service.api.responses import JSONResponse
from service.core.requestid import request_id

access_log = logging.getLogger("service.access")
log = logging.getLogger(__name__)

TOO_LARGE = "Content Too Large"
REQUEST_ID_HEADER = b"x-request-id"
CONTENT_LENGTH = b"content-length"
DEADLINE = "edge.extend_deadline"  # the scope key of a callable that gives this request more time
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]
# The service's own scripts and styles only, no plugins, no framing by any site.
PAGE_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass
class _Request:
    """What the edge knows of one request while it is served."""

    request_id: str
    reading: bool = False  # the handler waits for the client's body
    body_received: bool = False  # all of it: a handler receiving after that waits for a disconnect
    begun: bool = False  # the response has begun
    status: int = 500  # what the client was answered; 500 until a response begins
    late: asyncio.Task[None] | None = None  # the answer sent when the deadline passed


class Edge:
    """For every HTTP request:

    - a request id (the client's X-Request-ID when sane, else a new one): in the response, the log
      lines and the jobs the request enqueues;
    - security headers: `nosniff` on every response; on HTML pages also a Content-Security-Policy
      (unless the page brings its own), X-Frame-Options for browsers that predate frame-ancestors, and
      a same-origin Referrer-Policy;
    - a body size limit: 413 {"detail": ...} before reading a body whose Content-Length is over it, else
      as soon as the streamed bytes pass it (the endpoint reading it gets an HTTPException, which the
      app's handler renders; Starlette's own `max_body_size` answers in plain text);
    - a deadline: a handler that has not begun its response within `deadline` seconds (it waits on
      PostgreSQL or Redis, frozen or cut off) is cancelled, and the client gets 503 with Retry-After
      at once, while the handler's clean-up (a connection waiting for its query's cancellation)
      finishes in the background; 408 if it was waiting for the client's own body. A response once
      begun (a stream of events) runs on. A handler that waits on purpose (a long-poll) extends its own
      deadline (`extend_deadline`). Work a cancelled handler had handed on (a job row being
      written with others') completes: a client retrying with its Idempotency-Key gets that job;
    - telemetry: the HTTP metrics by route template, and one access log line.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        route_names: Mapping[Any, str],
        deadline: float,
        max_body_size: int,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_names = route_names
        self.deadline = deadline
        self.max_body_size = max_body_size
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = content_length = ""
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER:
                given = value.decode("latin-1")
            elif key == CONTENT_LENGTH:
                content_length = value.decode("latin-1")
        this = _Request(given if _SANE_REQUEST_ID.match(given) else os.urandom(16).hex())
        token = request_id.set(this.request_id)
        header = (REQUEST_ID_HEADER, this.request_id.encode())

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                this.status = message["status"]
                headers = [*message.get("headers", ()), header, NOSNIFF]
                if any(name == b"content-type" and value.startswith(b"text/html") for name, value in headers):
                    if not any(name == b"content-security-policy" for name, _ in headers):
                        headers.append((b"content-security-policy", PAGE_POLICY))
                    headers += PAGE_HEADERS
                message["headers"] = headers
            await send(message)

        try:
            if content_length.isdigit() and int(content_length) > self.max_body_size:
                response = JSONResponse({"detail": TOO_LARGE}, status_code=413, headers={"Connection": "close"})
                await response(scope, receive, answer)
            else:
                await self._serve(scope, receive, answer, this)
        finally:
            seconds = time.perf_counter() - started
            route = self.route_names.get(scope.get("endpoint"), "unmatched")
            self.metrics.observe(scope["method"], route, this.status, seconds)
            if self.access_log:
                extra = {"route": route, "duration_ms": round(seconds * 1000, 1)}
                access_log.info("%s %s %d", scope["method"], scope["path"], this.status, extra=extra)
            request_id.reset(token)

    async def _serve(self, scope: Scope, receive: Receive, answer: Send, this: _Request) -> None:
        """The app, within the body limit and the deadline."""
        request = asyncio.current_task()
        loop = asyncio.get_running_loop()
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            this.reading = not this.body_received
            try:
                message = await receive()
            finally:
                this.reading = False
            if message["type"] == "http.request" and not message.get("more_body", False):
                this.body_received = True
            received += len(message.get("body", b""))
            if received > self.max_body_size:
                raise HTTPException(413, TOO_LARGE)
            return message

        async def send_unless_late(message: Message) -> None:
            if this.late is not None:
                return  # answered already, with 503: whatever the cancelled handler still sends is dropped
            if message["type"] == "http.response.start":
                this.begun = True
            await answer(message)

        def expire() -> None:
            if this.begun or request is None:
                return
            # The answer goes out from a task of its own, now; the handler, cancelled, cleans up meanwhile.
            this.late = loop.create_task(self._late(scope, receive, answer, client_slow=this.reading))
            request.cancel()

        timer = loop.call_later(self.deadline, expire)  # a timer, not a task: next to nothing per request

        def extend(seconds: float) -> None:
            nonlocal timer
            timer.cancel()
            timer = loop.call_later(seconds + self.deadline, expire)

        scope[DEADLINE] = extend
        try:
            await self.app(scope, receive_within_limit, send_unless_late)
        except asyncio.CancelledError:
            if this.late is None or request is None:
                raise
            request.uncancel()
        finally:
            timer.cancel()
        if this.late is not None:
            await this.late

    async def _late(self, scope: Scope, receive: Receive, send: Send, *, client_slow: bool) -> None:
        if client_slow:
            status, detail, headers = 408, "Request body not received in time", {"Connection": "close"}
        else:
            status, detail, headers = 503, "Service temporarily unavailable", {"Retry-After": "1"}
            log.warning("no answer within %.1f s to %s %s: 503", self.deadline, scope["method"], scope["path"])
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def extend_deadline(scope: Scope, seconds: float) -> None:
    """Give this request `seconds` from now, plus the usual deadline, to begin its response (a long-poll
    that waits that long on purpose); no-op outside the Edge."""
    extend = scope.get(DEADLINE)
    if extend is not None:
        extend(seconds)
