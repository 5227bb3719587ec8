"""The arq worker: `arq jobs.worker.WorkerSettings` (also --burst, --check, --watch)."""

import asyncio
import contextlib
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.cron import CronJob
from databases import Database

from jobs.emails import send_task_reminder_email, send_welcome_email
from jobs.heartbeat import WorkerStats, leave, run_heartbeat
from jobs.lifecycle import scheduled
from jobs.reconcile import reconcile_jobs
from jobs.reports import generate_report, long_running_calculation
from jobs.tasks import process_new_task, send_due_reminders
from service import jobcodec, keys
from service.logs import configure_logging
from service.settings import Settings

FUNCTIONS = [
    process_new_task,
    send_welcome_email,
    send_task_reminder_email,
    generate_report,
    long_running_calculation,
]


def scheduled_jobs() -> list[CronJob]:
    """Fresh each time: arq keeps each entry's next run on the entry itself.

    Every worker schedules each run under the same job id, so exactly one of them runs it.
    """
    return [
        scheduled(send_due_reminders, second=0, run_at_startup=True),
        scheduled(reconcile_jobs, second={15, 45}),
    ]


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["db"] = Database(settings.database_url, min_size=0, max_size=settings.worker_max_jobs + 2)
    await ctx["db"].connect()
    ctx["stats"] = stats = WorkerStats()
    ctx["heartbeat"] = asyncio.create_task(run_heartbeat(ctx["redis"], stats, ctx["cron_jobs"]))


async def startup_process(ctx: dict[str, Any]) -> None:
    """As `startup`, for a worker that is its own process (the arq CLI): it owns the logging setup."""
    configure_logging(ctx["settings"])
    await startup(ctx)


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["heartbeat"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ctx["heartbeat"]
    await leave(ctx["redis"], ctx["stats"])
    await ctx["db"].disconnect()


def worker_settings(settings: Settings, *, own_process: bool = False) -> type:
    """The WorkerSettings class arq reads, for these settings."""
    schedule = scheduled_jobs()  # the heartbeat reports the same entries arq schedules

    class WorkerSettings:
        functions = FUNCTIONS
        cron_jobs = schedule
        queue_name = keys.QUEUE
        redis_settings = RedisSettings.from_dsn(settings.redis_url)
        ctx: ClassVar[dict[str, Any]] = {"settings": settings, "cron_jobs": schedule}
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
        job_timeout = 300
        keep_result = 3600  # arq's copy; PostgreSQL keeps the history
        allow_abort_jobs = True
        health_check_interval = 10
        # On SIGTERM / SIGINT: take no new job, let running ones finish for this long, then cancel
        # them (they run again elsewhere).
        job_completion_wait = settings.worker_shutdown_grace

    return WorkerSettings


WorkerSettings = worker_settings(Settings(), own_process=True)
