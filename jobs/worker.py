"""The arq worker: `arq jobs.worker.WorkerSettings` (also --burst, --check, --watch)."""

from typing import Any, cast

from arq.connections import RedisSettings
from arq.cron import CronJob
from databases import Database

from jobs.context import WorkerContext
from jobs.emails import send_task_reminder_email, send_welcome_email
from jobs.lifecycle import scheduled
from jobs.reconcile import reconcile_jobs
from jobs.reports import generate_report, long_running_calculation
from jobs.tasks import process_new_task, send_due_reminders
from service import jobcodec, keys
from service.settings import Settings

FUNCTIONS = [
    process_new_task,
    send_welcome_email,
    send_task_reminder_email,
    generate_report,
    long_running_calculation,
]


def cron_jobs() -> list[CronJob]:
    """Fresh each time: arq keeps each entry's next run on the entry itself.

    Every worker schedules each run under the same job id, so exactly one of them runs it.
    """
    return [
        scheduled(send_due_reminders, second=0, run_at_startup=True),
        scheduled(reconcile_jobs, second={15, 45}),
    ]


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    db = Database(settings.database_url, min_size=0, max_size=settings.worker_max_jobs + 2)
    await db.connect()
    ctx["db"] = db


async def shutdown(ctx: dict[str, Any]) -> None:
    await cast(WorkerContext, ctx)["db"].disconnect()


def worker_options(settings: Settings) -> dict[str, Any]:
    """Everything arq's Worker takes, for these settings; WorkerSettings is this for the environment's."""
    return {
        "functions": FUNCTIONS,
        "cron_jobs": cron_jobs(),
        "queue_name": keys.QUEUE,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "ctx": {"settings": settings},
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": jobcodec.serialize,
        "job_deserializer": jobcodec.deserialize,
        "max_jobs": settings.worker_max_jobs,
        # arq polls; 50 ms keeps an idle worker's pickup latency in the tens of milliseconds for ~40
        # cheap Redis commands a second. Each function sets its own timeout; max_tries is enforced
        # per job by our lifecycle, arq's is only a backstop.
        "poll_delay": settings.worker_poll_delay,
        "max_tries": settings.job_max_tries,
        "job_timeout": 300,
        "keep_result": 3600,  # arq's copy; PostgreSQL keeps the history
        "allow_abort_jobs": True,
        "health_check_interval": 10,
    }


class WorkerSettings:
    """Read by the arq CLI. Settings come from the environment, as for the API."""

    _options = worker_options(Settings())
    functions = _options["functions"]
    cron_jobs = _options["cron_jobs"]
    queue_name = _options["queue_name"]
    redis_settings = _options["redis_settings"]
    ctx = _options["ctx"]
    on_startup = _options["on_startup"]
    on_shutdown = _options["on_shutdown"]
    job_serializer = _options["job_serializer"]
    job_deserializer = _options["job_deserializer"]
    max_jobs = _options["max_jobs"]
    poll_delay = _options["poll_delay"]
    max_tries = _options["max_tries"]
    job_timeout = _options["job_timeout"]
    keep_result = _options["keep_result"]
    allow_abort_jobs = _options["allow_abort_jobs"]
    health_check_interval = _options["health_check_interval"]
