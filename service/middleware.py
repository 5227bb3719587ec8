"""ASGI middleware of our own."""

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.responses import JSONResponse

TOO_LARGE = "Content Too Large"


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
