"""Every job runs inside `job(...)`: its history row follows it (STARTED, PROGRESS, RETRY, SUCCESS,
FAILURE), each change is published for live followers and counted in the metrics, transient
failures are retried with backoff, and its start and end are logged with the request id that
asked for it.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq import Retry
from arq.cron import CronJob, cron
from arq.typing import WorkerCoroutine
from arq.worker import Function, func

from jobs.context import JobContext
from jobs.retry import backoff, is_transient
from service.core import keys
from service.core.events import publish
from service.core.metrics import count_job_event
from service.core.queries import job_records
from service.core.requestid import request_id
from service.core.schemas import JobRecord, JobState

log = logging.getLogger("jobs")

JobFunction = Callable[..., Awaitable[Any]]
ARQ_TIMEOUT_GRACE = 1  # arq's own timeout fires this much later than ours, so ours is the one seen


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
        log.info("job started", extra={"job": name, "job_id": job_id, "try": ctx["job_try"]})
        await ctx["history"].announce(record, metric="started")
        async with asyncio.timeout(timeout):
            result = await function(ctx, **kwargs)
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
        await _failed(ctx, name, error, max_tries, started)
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


async def _failed(ctx: JobContext, name: str, error: Exception, max_tries: int, started: float) -> None:
    """RETRY (and raise arq's Retry) while tries remain for a transient error; FAILURE otherwise."""
    tries = ctx["job_try"]
    retry = is_transient(error) and tries < max_tries
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
        if not (is_transient(unrecorded) and tries < max_tries):
            raise
        retry = True  # the outcome could not be recorded: run the job again rather than lose track of it
    await _ended(ctx, name, record, "retried" if retry else "failed", started)
    if retry:
        ctx["stats"].retried += 1
        raise Retry(defer=backoff(tries, base=ctx["settings"].retry_base_seconds)) from error
    ctx["stats"].failed += 1


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
