"""A worker that sleeps while idle and wakes when a job is enqueued, instead of polling Redis.

arq polls its queue every `poll_delay` seconds: pickup latency costs idle Redis traffic. This is
arq's Worker with one change (arq itself is untouched): after a poll that started nothing, it
waits for a message on the queue's wake-up channel (published with every enqueue, see
service.dispatch), for one of its own jobs to finish (a slot frees up), or at most `idle_poll`
seconds (retries coming due, cron), whichever comes first.
"""

import asyncio
import contextlib
import logging
from typing import Any

from arq.worker import Worker
from redis.exceptions import RedisError

from service import keys

log = logging.getLogger(__name__)


class WakeableWorker(Worker):
    def __init__(self, *args: Any, idle_poll: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_delay_s = 0  # our wait takes the place of arq's sleep between polls
        self.idle_poll = idle_poll
        self._nudge = asyncio.Event()
        self._idle = False
        self._listener: asyncio.Task[None] | None = None

    async def _poll_iteration(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        if self._idle:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_poll):
                    await self._nudge.wait()
        self._nudge.clear()  # before polling: a wake-up during the poll is kept for the next wait
        started = self._jobs_started()
        await super()._poll_iteration()
        self._idle = self._jobs_started() == started

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._nudge.set()  # a slot is free: take waiting jobs now, not at the next idle poll

    async def _listen(self) -> None:
        """Set the nudge on every wake-up message; across Redis restarts, subscribe again."""
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(keys.wake(self.queue_name))
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._nudge.set()
            except (RedisError, OSError) as exc:
                log.debug("wake-up channel lost (%r); polling until it is back", exc)
                await asyncio.sleep(self.idle_poll)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await super().close()
