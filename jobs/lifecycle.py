"""Every job runs inside `job(...)`: its history row follows it (STARTED, PROGRESS, RETRY, SUCCESS,
FAILURE), each change is published for live followers and counted in the metrics, transient
failures are retried with backoff, and its start and end are logged with the request id that
asked for it.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq import Retry
from arq.cron import CronJob, cron
from arq.typing import WorkerCoroutine
from arq.worker import Function, func
from asyncpg import PostgresConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.context import JobContext
from jobs.retry import backoff, is_transient
from jobs.smtp import EmailInFlight
from service.core import keys, tracing
from service.core.events import publish
from service.core.metrics import count_job_event
from service.core.queries import job_records
from service.core.requestid import request_id
from service.core.schemas import JobRecord, JobState

log = logging.getLogger("jobs")

JobFunction = Callable[..., Awaitable[Any]]
ARQ_TIMEOUT_GRACE = 1  # arq's own timeout fires this much later than ours, so ours is the one seen
PROBE_TIMEOUT = 1.0  # seconds for PostgreSQL or Redis to answer before it counts as down
SERVER_ERRORS = (PostgresConnectionError, RedisConnectionError, RedisTimeoutError)


def scheduled(function: Function, **schedule: Any) -> CronJob:
    """A cron entry for a job function: arq enqueues it on schedule, under a unique id per run."""
    return cron(function.coroutine, name=function.name, timeout=function.timeout_s, unique=True, **schedule)


def job(*, timeout: float, max_tries: int | None = None) -> Callable[[JobFunction], Function]:
    """Register a job function with arq, under its own name, inside the job lifecycle."""

    def register(function: JobFunction) -> Function:
        @functools.wraps(function)
        async def run(ctx: JobContext, **kwargs: Any) -> Any:
            tries = max_tries or ctx["settings"].job_max_tries
            return await _run(function, ctx, kwargs, timeout=timeout, max_tries=tries)

        coroutine = cast(WorkerCoroutine, run)  # arq types ctx as a plain dict; ours is a TypedDict of it
        return func(coroutine, name=function.__name__, timeout=timeout + ARQ_TIMEOUT_GRACE, max_tries=max_tries)

    return register


async def _run(
    function: JobFunction, ctx: JobContext, kwargs: dict[str, Any], *, timeout: float, max_tries: int
) -> Any:
    name, job_id, stats = function.__name__, ctx["job_id"], ctx["stats"]
    token = request_id.set(None)
    started = time.perf_counter()
    stats.ongoing += 1
    running_function = False  # outside the job's own code, every failure is PostgreSQL's or Redis's
    try:
        record = await ctx["history"].start(
            job_id=job_id,
            name=name,
            queue_name=keys.queue_for(name),
            args=kwargs,
            tries=ctx["job_try"],
            worker_id=stats.worker_id,
        )
        if record is None:  # already final: done by an earlier run, or revoked
            log.info("job %s %s is already final; not running it again", name, job_id)
            return None
        request_id.set(record.request_id)
        queue, parent, attempt = record.queue_name, record.trace_context, ctx["job_try"]
        with tracing.processing(job_id=job_id, name=name, queue=queue, trace_context=parent, attempt=attempt):
            log.info("job started", extra={"job": name, "job_id": job_id, "try": ctx["job_try"]})
            await ctx["history"].announce(record, metric="started")
            running_function = True
            async with asyncio.timeout(timeout):
                result = await function(ctx, **kwargs)
            running_function = False
            finished = await ctx["history"].succeeded(job_id=job_id, result=result)
        await _ended(ctx, name, finished, "succeeded", started)
        stats.complete += 1
        return result
    except asyncio.CancelledError:
        await asyncio.shield(_interrupted(ctx))
        raise
    except Retry:
        raise
    except Exception as error:
        # Also reached when the bookkeeping itself fails (PostgreSQL down): the job then runs again,
        # which every job function is written to survive.
        await _failed(ctx, name, error, max_tries, started, in_function=running_function)
        raise
    finally:
        stats.ongoing -= 1
        request_id.reset(token)


async def _ended(ctx: JobContext, name: str, record: JobRecord | None, outcome: str, started: float) -> None:
    """Log the run's end, and announce it with its metrics (batched with other jobs' when there is a record)."""
    seconds = time.perf_counter() - started
    extra = {"job": name, "job_id": ctx["job_id"], "try": ctx["job_try"], "duration_ms": round(seconds * 1000, 1)}
    log.info("job %s", outcome, extra=extra)
    duration = None if outcome == "retried" else seconds
    if record is not None:
        await ctx["history"].announce(record, metric=outcome, seconds=duration)
    else:
        await count_job_event(ctx["redis"], name, outcome, duration)


def _error(error: BaseException) -> dict[str, str]:
    message = str(error) or type(error).__name__
    return {"type": type(error).__name__, "message": message[:2000]}


async def _failed(
    ctx: JobContext, name: str, error: Exception, max_tries: int, started: float, *, in_function: bool
) -> None:
    """RETRY (and raise arq's Retry) while tries remain for a transient error; FAILURE otherwise. A
    try that failed because our own PostgreSQL or Redis did not answer is given back: an outage of
    the service's servers uses up no job's tries, however long it lasts."""
    tries = ctx["job_try"]
    waiting = isinstance(error, EmailInFlight)  # for another run's claim to end: a wait, not a failed try
    outage = waiting or (is_transient(error) and (not in_function or await _servers_down(ctx, error)))
    retry = outage or (is_transient(error) and tries < max_tries)
    details: dict[str, Any] = _error(error)
    if is_transient(error) and not retry:
        # A dead letter: it might have worked with more tries. The dashboard lists these apart.
        details.update(message=f"gave up after {tries} tries: {details['message']}", exhausted=True)
    state = JobState.RETRY if retry else JobState.FAILURE
    record = None
    try:
        # In a task of its own: when PostgreSQL dropped this task's connection mid-statement,
        # `databases` keeps that broken connection for the rest of the task (its connections are per task).
        record = await asyncio.create_task(_record(ctx, state, details))
    except Exception as unrecorded:
        if not is_transient(unrecorded):
            raise
        # The outcome could not be recorded (PostgreSQL is away): run the job again rather than lose
        # track of it, and do not count this try.
        retry = outage = True
    await _ended(ctx, name, record, "retried" if retry else "failed", started)
    if retry:
        ctx["stats"].retried += 1
        if outage:
            await _give_back_try(ctx)
        defer = backoff(1 if outage else tries, base=ctx["settings"].retry_base_seconds)
        raise Retry(defer=error.wait + defer / 2 if isinstance(error, EmailInFlight) else defer) from error
    ctx["stats"].failed += 1


async def _servers_down(ctx: JobContext, error: Exception) -> bool:
    """Whether PostgreSQL or Redis, rather than what the job itself called (SMTP), made it fail: the
    error came from one of them, or one of them does not answer now."""
    if isinstance(error, SERVER_ERRORS):
        return True
    # Each probe in a task of its own (gather makes them), so on a connection of its own.
    checks = (ctx["db"].fetch_val("SELECT 1"), ctx["redis"].ping())
    probes = [asyncio.wait_for(probe, PROBE_TIMEOUT) for probe in checks]
    answers = await asyncio.gather(*probes, return_exceptions=True)
    return any(isinstance(answer, BaseException) for answer in answers)


async def _give_back_try(ctx: JobContext) -> None:
    """Set arq's count of this job's tries back by one (arq counted this one when it picked the job up)."""
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(PROBE_TIMEOUT):
            await ctx["redis"].set(keys.ARQ_RETRY + ctx["job_id"], ctx["job_try"] - 1, xx=True, keepttl=True)


async def _record(ctx: JobContext, state: JobState, error: dict[str, Any]) -> JobRecord | None:
    if state.is_final:
        return await job_records.finish(ctx["db"], job_id=ctx["job_id"], state=state, error=error)
    return await job_records.transition(ctx["db"], job_id=ctx["job_id"], state=state, error=error)


async def _interrupted(ctx: JobContext) -> None:
    """Cancelled: an abort (the row is REVOKED already, and stays so) or a worker shutting down
    (arq runs the job again, so it waits as RETRY)."""
    error = {"type": "Interrupted", "message": "the worker stopped during the job; it will run again"}
    if record := await asyncio.create_task(_record(ctx, JobState.RETRY, error)):
        await publish(ctx["redis"], record)
