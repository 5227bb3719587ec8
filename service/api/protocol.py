"""uvicorn's HTTP protocol with a deadline on each request's head.

uvicorn limits idle keep-alive connections and concurrent requests, but a client that opens a
connection and sends nothing, or sends its headers a line at a time (slowloris), holds a file handle
for as long as it likes: 1,100 such connections made /healthz answer nothing for 20 s. Here a client
must send a request's line and headers within HEADER_TIMEOUT seconds of connecting, or of the first
byte of its next request on a kept-alive connection; otherwise it gets 408 and is disconnected.

    uvicorn --factory service.app:create_app --http service.api.protocol:TimelyHttpProtocol

(what `make run`, compose.yaml and the Dockerfile run). Behind a reverse proxy, the proxy's own
header timeout is the first line (compose.yaml's nginx has one); this one holds without it.
"""

import asyncio
import functools
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.settings import Settings

log = logging.getLogger(__name__)
TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@functools.cache
def header_timeout() -> float:
    return Settings().header_timeout


class TimelyHttpProtocol(HttpToolsProtocol):
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect_head()

    def on_headers_complete(self) -> None:
        self._head_received()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(header_timeout(), self._too_slow)

    def _head_received(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        log.info("dropped %s: no request head within %.0f s", self.client, header_timeout())
        if not self.transport.is_closing():
            self.transport.write(TOO_SLOW)
            self.transport.close()
