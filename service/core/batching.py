"""Group commit: the writes of concurrent callers go out together, one statement or pipeline per batch."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """While one batch is being written, the next one collects; it goes as soon as the write before
    it returns. An idle process writes at once; a busy one, in batches as large as its concurrency
    makes them. `flush` gets the items in order and returns one result per item, in the same order:
    an exception in an item's place is raised to its caller; if flush raises, every caller of that
    batch gets the error."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]) -> None:
        self._flush = flush
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_while_pending())
        return await future

    async def _write_while_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write(batch)
        finally:
            self._writing = None

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
