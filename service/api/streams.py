"""Server-Sent Events of job status changes, and long-polls for the next one, for every stream of this
process from one Redis subscription.

The worker publishes each change of a job on its channel (service.core.events). Each API process
subscribes once, to the channels of the jobs its streams follow, and hands every message to those
streams: 2,000 streams cost one Redis connection, not 2,000. Streams are capped per process and per
user (429 beyond). A stream that misses a message (a full queue, Redis reconnecting) reads the job's
row again; it also reads it every few quiet seconds, so the final state always arrives. A long-poll
(GET /jobs/{id}?wait=) is a stream too, for the caps, that ends at the job's first change.
"""

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from databases import Database
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from service.api.conditional import Tagged
from service.api.throttle import TooManyRequests
from service.core import keys
from service.core.events import JobEvent
from service.core.queries import job_records
from service.core.schemas import JobRecord, JobStatus

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.0  # a stream with no message for this long sends nothing, or a keep-alive
RECHECK_EVERY = 5  # quiet periods between two reads of the job's row
KEEPALIVE_EVERY = 15  # quiet periods between keep-alive comments, which keep proxies from closing the stream
QUEUE_SIZE = 64
RESYNC = b""  # put in a stream's queue when messages may have been lost: read the row again


def sse(status: JobStatus) -> bytes:
    return b"event: status\ndata: " + status.model_dump_json().encode() + b"\n\n"


class StreamHub:
    def __init__(self, redis: Redis, *, max_streams: int, max_per_user: int) -> None:
        self._redis = redis
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self._followers: dict[bytes, set[asyncio.Queue[bytes]]] = {}
        self._per_user: Counter[int] = Counter()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        return sum(self._per_user.values())

    def admit(self, user_id: int) -> None:
        """TooManyRequests (429) when this process, or this user, has as many streams as allowed. Checked
        before the response begins; `follow` itself, inside the stream, admits (the caps are soft by the
        few streams that may start between the two)."""
        if self.streams >= self.max_streams:
            raise TooManyRequests("Too many event streams on this server; poll GET /jobs/{id} instead", 5)
        if self._per_user[user_id] >= self.max_per_user:
            raise TooManyRequests(f"At most {self.max_per_user} event streams and long-polls per user", 5)

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, user_id: int) -> AsyncIterator[asyncio.Queue[bytes]]:
        """A queue of the job's published changes (JSON of JobEvent), while the block lasts."""
        channel = keys.job_events(job_id).encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self._per_user[user_id] += 1
        self._followers.setdefault(channel, set()).add(queue)
        try:
            if len(self._followers[channel]) == 1:
                await self._subscribe(channel)
            yield queue
        finally:
            self._per_user[user_id] -= 1
            followers = self._followers[channel]
            followers.discard(queue)
            if not followers:
                del self._followers[channel]
                await self._unsubscribe(channel)

    async def _subscribe(self, channel: bytes) -> None:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        with contextlib.suppress(RedisError, OSError):  # the reader subscribes again when Redis is back
            await self._pubsub.subscribe(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

    async def _unsubscribe(self, channel: bytes) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        """Hand each message to the streams of its channel, for as long as any stream follows one."""
        while self._followers:
            try:
                assert self._pubsub is not None
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=QUIET_SECONDS)
            except (RedisError, OSError) as exc:
                log.warning("job events subscription lost (%r); subscribing again", exc)
                await self._resubscribe()
                continue
            if message is not None and message["type"] == "message":
                for queue in self._followers.get(message["channel"], ()):
                    with contextlib.suppress(asyncio.QueueFull):  # a slow stream reads the row instead
                        queue.put_nowait(message["data"])

    async def _resubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, self._redis.pubsub()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        for followers in self._followers.values():
            for queue in followers:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(RESYNC)
        try:
            if self._followers:
                await self._pubsub.subscribe(*self._followers)
        except (RedisError, OSError):
            await asyncio.sleep(QUIET_SECONDS)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]


async def _read_row(db: Database, job_id: str) -> JobEvent | None:
    record = await job_records.get(db, job_id=job_id)
    return None if record is None else JobEvent(version=record.version, status=record.status())


async def status_events(db: Database, changes: asyncio.Queue[bytes], job_id: str) -> AsyncIterator[bytes]:
    """One event per change of the job's status, ending after a final state. Subscribed before the
    first read of the row (the caller's `follow`), so no change can slip in between."""
    last_version, quiet = 0, 0
    event = await _read_row(db, job_id)
    while event is not None:
        if event.version > last_version:
            last_version = event.version
            yield sse(event.status)
            if event.status.state.is_final:
                return
        try:
            async with asyncio.timeout(QUIET_SECONDS):
                data = await changes.get()
        except TimeoutError:
            quiet += 1
            if quiet % KEEPALIVE_EVERY == 0:
                yield b": keep-alive\n\n"
            if quiet % RECHECK_EVERY == 0:
                event = await _read_row(db, job_id)
            continue
        event = await _read_row(db, job_id) if data == RESYNC else JobEvent.model_validate_json(data)


async def changed(
    db: Database, changes: asyncio.Queue[bytes], job_id: str, etag: str, within: float
) -> JobRecord | None:
    """The job as soon as its status is no longer the one tagged etag, or it is final; as it was last
    read once `within` seconds have passed (None if it is gone). Subscribed before the first read of the
    row (the caller's `follow`), so no change can slip in between; the row is read again only when a
    change of the job is published, never on a timer."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        record = await job_records.get(db, job_id=job_id)
        if record is None or record.state.is_final or Tagged(record.status()).etag != etag:
            return record
        try:
            async with asyncio.timeout_at(deadline):
                await changes.get()
        except TimeoutError:
            return record
