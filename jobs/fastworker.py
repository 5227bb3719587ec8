"""arq's Worker, quicker to pick up and finish work; arq itself is untouched (a subclass, a few overrides).

- It sleeps while idle and wakes when something is due, instead of polling Redis. arq polls its
  queue every `poll_delay` seconds, so pickup latency costs idle Redis traffic. After a poll that
  started nothing, this one waits until the first of:
  - a message on the queue's wake-up channel (published with each of our enqueues and aborts, see
    service.core.dispatch);
  - Redis's own notice that the queue or arq's abort set changed (keyspace notifications, which it
    turns on where the server allows it): jobs enqueued or aborted by plain arq;
  - one of its own jobs finishing (a slot frees up);
  - the time something falls due: the earliest deferred job or retry in the queue, the next cron
    run, arq's next health record.
  Where Redis refuses keyspace notifications, it also polls every `poll_delay` seconds, as arq does.
- It claims ready jobs in one round trip. arq claims them one at a time, each with WATCH, EXISTS,
  ZSCORE and MULTI/EXEC (three round trips, in its poll loop, one job after the other), which caps
  a worker at about a thousand jobs a second whatever the jobs do. A Lua script does the same
  checks and sets the same in-progress keys, atomically, for a batch.
- It finishes jobs together: arq writes each job's result and clears its keys in a MULTI/EXEC of
  its own; here the jobs finishing while one such write is under way go in the next one (group
  commit, service.core.batching), each job's commands the same as arq's. A job whose commands
  fail fails alone.
- A job's end that Redis did not take (frozen, unreachable, failing over) is said again once Redis
  answers, if the job is still this worker's (its token in the in-progress key): arq would leave the
  job held, with nothing running it, until the key expired (the job's timeout). Commands to Redis
  are bounded (arq's settings give no command timeout), so that they fail rather than hang.
- Its close() runs the shutdown hook even when it has cancelled a running job (arq's skips it).
- It remembers the signal that stopped it, so that `python -m jobs` does not start it again.
"""

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from datetime import datetime
from signal import Signals
from typing import Any, NamedTuple

from arq.connections import create_pool
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError, WatchError

from service.core import keys
from service.core.batching import Batcher
from service.core.packing import pack_with_hiredis

log = logging.getLogger(__name__)


# For each candidate: still queued and due, nobody running it -> take it (arq's in-progress key, holding
# this worker's token where arq writes "1": arq only asks whether the key exists). The
# candidates come in queue order; owners take turns (round robin): each owner's first job, then each
# one's second, and so on, so that one user's backlog ahead of another's job does not delay it. A job
# with no owner noted (cron runs, plain arq) is an owner of its own.
CLAIM = """
local now, ttl, limit, holder = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ids, owner_keys = {}, {}
for i = 5, #ARGV do
  ids[#ids + 1] = ARGV[i]
  owner_keys[#owner_keys + 1] = KEYS[3] .. ARGV[i]
end
if #ids == 0 then return {} end
local owners = redis.call('MGET', unpack(owner_keys))
local claimed, taken, seen = {}, {}, {}
local unseen, turn = #ids, 1
while unseen > 0 and #claimed < 2 * limit do
  for i, id in ipairs(ids) do
    local owner = owners[i] or ('job:' .. id)
    if not seen[i] and (taken[owner] or 0) < turn and #claimed < 2 * limit then
      seen[i], unseen = true, unseen - 1
      local score = redis.call('ZSCORE', KEYS[1], id)
      if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[2] .. id) == 0 then
        redis.call('PSETEX', KEYS[2] .. id, ttl, holder)
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = score
        taken[owner] = (taken[owner] or 0) + 1
      end
    end
  end
  turn = turn + 1
end
return claimed
"""


class Finished(NamedTuple):
    """The arguments of arq's Worker.finish_job."""

    job_id: str
    finish: bool
    result_data: bytes | None
    result_timeout_s: float | None
    keep_result_forever: bool
    incr_score: int | None
    keep_in_progress: float | None


class Unfinished:
    """Ends of jobs that Redis did not take, to say again; kept across the worker's restarts by
    `python -m jobs`, with the token this process's workers write in the in-progress keys."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex.encode()
        self.jobs: dict[str, tuple[Finished, float]] = {}  # job id -> (its end, when to give up)


# Keyspace events that bring work or an abort: a job added (or moved to now by an abort), a retry
# rescheduled. Removals (jobs finishing) bring nothing to do.
WAKING_EVENTS = frozenset({b"zadd", b"zincr"})
CRON_LEAD = 1.0  # arq enqueues a cron run up to this long before it is due (2 x its 0.5 s window)
# Seconds for Redis to answer a command before it counts as failed: a host gone for good, not a pause.
# Shorter, a Redis paused for a few seconds (a long fork, a slow failover) would fail the running jobs'
# Redis calls, and their tries with them; the wait is only for what is not answered at all.
COMMAND_TIMEOUT = 30.0
LISTEN_TIMEOUT = 60.0  # the wake-up channels are read in waits this long (a command timeout would end them)
SAY_AGAIN_EVERY = 1.0  # seconds between tries to tell Redis the ends it did not take
AWAY_POLL = 1.0  # seconds between polls while Redis does not answer


class FastWorker(Worker):
    def __init__(
        self,
        *args: Any,
        unfinished: Unfinished | None = None,
        redis_command_timeout: float = COMMAND_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.redis_command_timeout = redis_command_timeout
        self.unfinished = unfinished or Unfinished()
        self._closing = False  # set by close(): no job starts after it
        self._redis_away = False  # the last poll failed to reach Redis
        self._saying_again: asyncio.Task[None] | None = None
        self.poll_every = self.poll_delay_s  # used only where Redis gives no keyspace notifications
        self.poll_delay_s = 0  # our wait takes the place of arq's sleep between polls
        self.notified = False  # whether Redis tells us of changes to the queue and the abort set
        self._nudge = asyncio.Event()
        self._nudges = 0  # wake-ups so far: the earliest deferred job is read again after any of them
        self._upcoming: tuple[int, float | None] | None = None  # (nudges when read, its time in ms)
        self._idle = False
        self._listener: asyncio.Task[None] | None = None
        self._claim: AsyncScript | None = None
        self._finishes = Batcher(self._finish_many)
        self.stopped_by: Signals | None = None  # SIGTERM or SIGINT once asked to stop

    def handle_sig(self, signum: Signals) -> None:
        self.stopped_by = Signals(signum)
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self.stopped_by = Signals(signum)
        super().handle_sig_wait_for_completion(signum)

    async def main(self) -> None:
        if self._pool is None:  # arq's pool, with a command timeout
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
            bound_commands(self._pool, self.redis_command_timeout)
            pack_with_hiredis(self._pool)
        await super().main()

    async def _poll_iteration(self) -> None:
        if self._closing:  # close() cancelled the poll loop, but a cancel can be lost in a wait's timeout
            raise asyncio.CancelledError
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
            self._saying_again = asyncio.create_task(self._say_again())
        try:
            if self._idle:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(await self._until_due()):
                        await self._nudge.wait()
            self._nudge.clear()  # before polling: a wake-up during the poll is kept for the next wait
            started = self._jobs_started()
            await super()._poll_iteration()
            self._idle = self._jobs_started() == started
        except (RedisError, OSError) as exc:
            # Redis frozen, restarting or failing over: the running jobs go on, and so does the loop, once
            # it answers (arq's own loop would end, and with it the worker).
            if not self._redis_away:
                log.warning("Redis does not answer (%r); polling again every %.0f s until it does", exc, AWAY_POLL)
            self._redis_away = True
            self._forget_finished_tasks()  # as arq's loop does after Redis: a shutdown waits for what remains
            await asyncio.sleep(AWAY_POLL)
        else:
            if self._redis_away:
                log.info("Redis answers again")
            self._redis_away = False

    def _forget_finished_tasks(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                with contextlib.suppress(RedisError, OSError):
                    task.result()  # anything else is raised, as arq does

    async def _until_due(self) -> float:
        """Seconds until something falls due that no message announces: the earliest deferred job or
        retry, the next cron run, arq's next health record (and the next poll, without notifications)."""
        now_ms = timestamp_ms()
        waits = [self._last_health_check + self.health_check_interval - time.time()]
        if not self.notified:
            waits.append(self.poll_every)
        upcoming = await self._earliest_deferred(now_ms)
        if upcoming is not None:
            waits.append((upcoming - now_ms) / 1000)
        now = datetime.now(tz=self.timezone)
        waits += [(job.next_run - now).total_seconds() - CRON_LEAD for job in self.cron_jobs if job.next_run]
        return max(0.0, min(waits))

    async def _cancel_aborted_jobs(self) -> None:
        """arq's abort check, only while this worker runs jobs: an abort of a queued job takes effect when
        the job is picked, so an idle worker has nothing to cancel (and sends nothing)."""
        if self.job_tasks:
            await super()._cancel_aborted_jobs()

    async def _earliest_deferred(self, now_ms: int) -> float | None:
        """When the earliest job not yet due is due (ms). With keyspace notices, what was read stays true
        until the next wake-up (a job added or moved would have sent one): read again only then."""
        if self.notified and self._upcoming is not None and self._upcoming[0] == self._nudges:
            due = self._upcoming[1]
            if due is None or due > now_ms:
                return due
        # Only future scores: a due job still in the queue is one another worker is running.
        found = await self.pool.zrangebyscore(self.queue_name, f"({now_ms}", "+inf", start=0, num=1, withscores=True)
        due = float(found[0][1]) if found else None
        self._upcoming = (self._nudges, due)
        return due

    def _wake(self) -> None:
        self._nudges += 1
        self._nudge.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids or self._closing:
            return
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        if self._claim is None:
            self._claim = self.pool.register_script(CLAIM)  # EVALSHA, loading the script when Redis lacks it
        arguments: list[Any] = [timestamp_ms(), timeout_ms, free, self.unfinished.token, *job_ids]
        claimed = await self._claim(keys=[self.queue_name, in_progress_key_prefix, keys.JOB_OWNER], args=arguments)
        for job_id, score in zip(claimed[::2], claimed[1::2], strict=True):
            await self.sem.acquire()  # arq's own bookkeeping of running jobs, as in its start_jobs
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id.decode(), int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        ended = Finished(
            job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
        )
        try:
            await self._finishes.submit(ended)
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("Redis did not take the end of job %s (%r); saying it again once Redis answers", job_id, exc)
            self.unfinished.jobs[job_id] = (ended, time.monotonic() + self.in_progress_timeout_s)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's, through finish_job: the same commands, batched, and said again if Redis does not take them."""
        kept = self.keep_result_forever or self.keep_result_s > 0
        result = result_data if kept else None
        await self.finish_job(job_id, True, result, self.keep_result_s, self.keep_result_forever, None, None)

    async def _say_again(self) -> None:
        """Tell Redis the ends it did not take, once it answers, of the jobs still this worker's."""
        while True:
            await asyncio.sleep(SAY_AGAIN_EVERY)
            for job_id, (ended, give_up_at) in list(self.unfinished.jobs.items()):
                if time.monotonic() < give_up_at:  # after that, arq's in-progress key has expired
                    try:
                        ours = await self._finish_if_still_ours(ended)
                    except (RedisError, OSError):
                        break  # still away
                    log.info("Redis took the end of job %s" if ours else "job %s went to another worker", job_id)
                del self.unfinished.jobs[job_id]

    async def _finish_if_still_ours(self, ended: Finished) -> bool:
        """arq's finish commands for a job, unless its in-progress key no longer holds this worker's token:
        the reconciler freed it meanwhile (this worker looked dead), and another run has its say.
        Whether they were sent."""
        held = in_progress_key_prefix + ended.job_id
        try:
            async with self.pool.pipeline(transaction=True) as tr:
                await tr.watch(held)
                if await tr.get(held) != self.unfinished.token:
                    return False
                tr.multi()  # type: ignore[no-untyped-call]
                self._finish_commands(tr, ended)
                await tr.execute()
        except WatchError:  # it changed between the read and the write: not ours
            return False
        return True

    async def _finish_many(self, batch: list[Finished]) -> list[BaseException | None]:
        """arq's finish_job, for a batch of jobs in one MULTI/EXEC; each job gets the first error among
        its own commands (Redis runs the others regardless), or None."""
        try:
            async with self.pool.pipeline(transaction=True) as tr:
                commands = [self._finish_commands(tr, job) for job in batch]
                replies = await tr.execute(raise_on_error=False)
        except ResponseError:  # the whole transaction refused (EXECABORT): each job on its own
            if len(batch) == 1:
                raise
            return [outcome for job in batch for outcome in await self._finish_many([job])]
        outcomes: list[BaseException | None] = []
        for count in commands:
            mine, replies = replies[:count], replies[count:]
            outcomes.append(next((reply for reply in mine if isinstance(reply, ResponseError)), None))
        return outcomes

    def _finish_commands(self, tr: Pipeline, job: Finished) -> int:
        """Queue arq's finish_job commands for one job (the same as arq sends); how many there are."""
        queued = len(tr.command_stack)
        job_id = job.job_id
        delete_keys = []
        if job.keep_in_progress is None:
            delete_keys.append(in_progress_key_prefix + job_id)
        else:
            tr.pexpire(in_progress_key_prefix + job_id, to_ms(job.keep_in_progress))
        if job.finish:
            if job.result_data:
                expire = None if job.keep_result_forever else job.result_timeout_s
                tr.set(result_key_prefix + job_id, job.result_data, px=to_ms(expire))
            delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id, keys.JOB_OWNER + job_id]
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(self.queue_name, job_id)
        elif job.incr_score:
            tr.zincrby(self.queue_name, job.incr_score, job_id)
        if delete_keys:
            tr.delete(*delete_keys)
        return len(tr.command_stack) - queued

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake()  # a slot is free: take waiting jobs now, not at the next idle poll

    async def _listen(self) -> None:
        """Set the nudge on every wake-up; across Redis restarts (or a new primary), subscribe again."""
        wake = keys.wake(self.queue_name).encode()
        while True:
            pubsub = self.pool.pubsub()
            try:
                channels = [wake]
                if await self._keyspace_notifications():
                    channels += [self._keyspace(self.queue_name), self._keyspace(abort_jobs_ss)]
                await pubsub.subscribe(*channels)
                self.notified = len(channels) > 1
                self._wake()  # whatever changed while we were not listening
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_TIMEOUT)
                    if message is None or message["type"] != "message":
                        continue
                    if message["channel"] == wake or message["data"] in WAKING_EVENTS:
                        self._wake()
            except (RedisError, OSError) as exc:
                log.debug("wake-up channels lost (%r); polling until they are back", exc)
                self.notified = False
                self._wake()
                await asyncio.sleep(self.poll_every)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _keyspace(self, key: str) -> bytes:
        db = self.pool.connection_pool.connection_kwargs.get("db", 0)
        return f"__keyspace@{db}__:{key}".encode()

    async def _keyspace_notifications(self) -> bool:
        """Turn on Redis's notices of sorted-set changes (keeping whatever else is on); False where the
        server refuses (CONFIG disabled or not permitted, as on some managed Redis)."""
        try:
            current = await self.pool.config_get("notify-keyspace-events")
            flags = set(_text(next(iter(current.values()), b"")))
            if not ("K" in flags and ({"z", "A"} & flags)):
                await self.pool.config_set("notify-keyspace-events", "".join(sorted(flags | {"K", "z"})))
        except ResponseError as exc:
            log.info("Redis keyspace notifications unavailable (%s): polling every %.3f s", exc, self.poll_every)
            return False
        return True

    async def close(self) -> None:
        """arq's close, except that a job it cancels does not skip the shutdown hook: arq gathers the
        jobs it has just cancelled and stops at the first CancelledError, before on_shutdown, so the
        worker stayed listed as alive and its database pool open."""
        self._closing = True
        for task in (self._listener, self._saying_again):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._saying_again = None
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def bound_commands(redis: Redis, seconds: float) -> None:
    """Give every connection of arq's pool (and of its sentinels, if any) a command timeout: arq's
    RedisSettings sets none, so a frozen or unreachable Redis would hold a command forever."""
    pools = [redis.connection_pool]
    if isinstance(redis.connection_pool, SentinelConnectionPool):
        pools += [sentinel.connection_pool for sentinel in redis.connection_pool.sentinel_manager.sentinels]
    for pool in pools:
        pool.connection_kwargs.update(socket_timeout=seconds)
        pool.connection_kwargs.setdefault("socket_connect_timeout", seconds)
        for connection in (*pool._available_connections, *pool._in_use_connections):  # made before this
            connection.socket_timeout = seconds
            connection.socket_connect_timeout = connection.socket_connect_timeout or seconds


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
