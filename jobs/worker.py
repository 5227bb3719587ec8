"""The arq workers:

    arq jobs.worker.WorkerSettings        # the queue of fast jobs, and the cron
    arq jobs.worker.SlowWorkerSettings    # reports and long calculations

Both take --burst, --check and --watch. Run at least one of each (`make run` does).
"""

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from jobs.emails import send_email_confirmation, send_task_reminder_email, send_welcome_email
from jobs.heartbeat import WorkerStats, run_heartbeat
from jobs.history import History
from jobs.lifecycle import scheduled
from jobs.reconcile import run_reconciler
from jobs.reports import delete_old_reports, generate_report, long_running_calculation
from jobs.tasks import process_new_task, send_due_reminders
from jobs.webhooks import announce_due_tasks, run_deliveries
from service.core import jobcodec, keys, tracing
from service.core.connections import check_pool_fits, open_database, redis_credentials
from service.core.logs import configure_logging
from service.core.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

FUNCTIONS = [
    process_new_task,
    send_welcome_email,
    send_email_confirmation,
    send_task_reminder_email,
    delete_old_reports,
    generate_report,
    long_running_calculation,
    announce_due_tasks,
]


def functions_for(queue: str) -> list[Function]:
    """The job functions a worker of `queue` runs: those that service.core.keys sends to it."""
    return [function for function in FUNCTIONS if keys.queue_for(function.name) == queue]


def max_tries_by_name(settings: Settings) -> dict[str, int]:
    """The tries each job function is allowed, by name (the reconciler judges arq's verdicts by it)."""
    return {function.name: function.max_tries or settings.job_max_tries for function in FUNCTIONS}


def scheduled_jobs(settings: Settings) -> list[CronJob]:
    """Fresh each time: arq keeps each entry's next run on the entry itself.

    Every worker schedules each run under the same job id, so exactly one of them runs it.
    """
    seconds = set(range(0, 60, settings.reminder_every_seconds))
    due_seconds = set(range(0, 60, settings.webhook_due_every_seconds))
    return [
        scheduled(send_due_reminders, second=seconds, run_at_startup=True),
        scheduled(announce_due_tasks, second=due_seconds),  # task.due webhook events
        scheduled(delete_old_reports, minute=17, second=0),  # hourly
    ]


class OutageRetry(Retry):
    """Retry Redis commands through up to `window` seconds of one outage: a worker rides out a Redis
    restart, yet stops promptly when Redis is gone for good (once the window has passed, each
    command fails at once), and its supervisor starts it again."""

    __slots__ = ("_outage_since", "_window")

    def __init__(self, window: float) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries=-1)
        self._window = window
        self._outage_since: float | None = None

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        failures = 0
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                self._outage_since = self._outage_since or time.monotonic()
                if time.monotonic() - self._outage_since > self._window:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))
            else:
                self._outage_since = None
                return result


def resilient_redis(settings: Settings) -> RedisSettings:
    """arq's settings for Redis: REDIS_URL's server, or the primary the sentinels name (REDIS_SENTINELS),
    which arq's CLI (--check, --burst) follows too."""
    if settings.redis_sentinels:
        credentials = redis_credentials(settings)
        return RedisSettings(
            host=settings.sentinel_hosts,
            sentinel=True,
            sentinel_master=settings.redis_sentinel_master,
            database=credentials["db"],
            username=credentials["username"],
            password=credentials["password"],
            conn_retries=30,
        )
    redis = RedisSettings.from_dsn(settings.redis_url)
    redis.conn_retries = 30  # at start: wait up to half a minute for Redis
    redis.retry = OutageRetry(window=5.0)
    return redis


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    # DB_POOL_MAX connections, shared by the worker's jobs (each holds one only while a statement runs).
    ctx["db"] = db = open_database(settings)
    await db.connect()
    await check_pool_fits(db, settings, process="worker")
    ctx["history"] = History(db, ctx["redis"])
    ctx["stats"] = stats = WorkerStats(queue=ctx["queue_name"])
    if ctx["queue_name"] == keys.SLOW_QUEUE and settings.user_slow_jobs_active >= settings.worker_max_jobs:
        log.warning(
            "USER_SLOW_JOBS_ACTIVE (%d) is not below WORKER_MAX_JOBS (%d): one user's slow jobs can take every"
            " slot of this worker, and others wait for them", settings.user_slow_jobs_active, settings.worker_max_jobs,
        )  # fmt: skip
    ctx["stopping"] = stopping = asyncio.Event()
    ctx["heartbeat"] = asyncio.create_task(run_heartbeat(ctx["redis"], stats, ctx["cron_jobs"], stopping))
    ctx["background"] = []
    if settings.reconcile_seconds:
        max_tries = max_tries_by_name(settings)
        reconciler = run_reconciler(db, ctx["redis"], stats.worker_id, settings.reconcile_seconds, max_tries)
        ctx["background"].append(asyncio.create_task(reconciler))
    if ctx["queue_name"] == keys.QUEUE:  # webhooks go out from the fast queue's workers
        ctx["background"].append(asyncio.create_task(run_deliveries(db, settings)))
    gc.freeze()  # as the API does: what startup built stays out of every full garbage collection


async def startup_process(ctx: dict[str, Any]) -> None:
    """As `startup`, for a worker that is its own process (the arq CLI): it owns the logging setup."""
    configure_logging(ctx["settings"])
    tracing.configure("taskmanager-worker")
    await startup(ctx)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop what startup started; safe to call twice (python -m jobs calls it after a crash)."""
    for task in ctx.pop("background", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if "heartbeat" in ctx:
        ctx.pop("stopping").set()  # not cancelled: it finishes its beat, then leaves the workers' list
        await ctx.pop("heartbeat")
    if "db" in ctx:
        await ctx.pop("db").disconnect()


def worker_settings(settings: Settings, *, slow: bool = False, own_process: bool = False) -> type:
    """The WorkerSettings class arq reads, for these settings and one of the two queues."""
    schedule = [] if slow else scheduled_jobs(settings)  # the heartbeat reports the entries arq schedules
    queue = keys.SLOW_QUEUE if slow else keys.QUEUE

    class WorkerSettings:
        functions = functions_for(queue)
        cron_jobs = schedule
        queue_name = queue
        redis_settings = resilient_redis(settings)
        ctx: ClassVar[dict[str, Any]] = {"settings": settings, "cron_jobs": schedule, "queue_name": queue}
        on_startup = startup_process if own_process else startup
        on_shutdown = shutdown
        # JSON, never pickle: writing to Redis must not be a way to run code in the worker.
        job_serializer = jobcodec.serialize
        job_deserializer = jobcodec.deserialize
        max_jobs = settings.worker_max_jobs
        # arq polls; 50 ms keeps an idle worker's pickup latency in the tens of milliseconds for about
        # 40 cheap Redis commands a second.
        poll_delay = settings.worker_poll_delay
        # Each function sets its own timeout and our lifecycle enforces max tries; arq's are backstops.
        max_tries = settings.job_max_tries
        keep_result = 3600  # arq's copy; PostgreSQL keeps the history
        allow_abort_jobs = True
        # arq's health record (what `arq --check` reads) every 30 s: the longest an idle worker sleeps.
        health_check_interval = 30
        # On SIGTERM / SIGINT: take no new job, let running ones finish for this long, then cancel
        # them (they run again elsewhere).
        job_completion_wait = settings.worker_shutdown_grace

    return WorkerSettings


WorkerSettings = worker_settings(Settings(), own_process=True)
SlowWorkerSettings = worker_settings(Settings(), slow=True, own_process=True)
