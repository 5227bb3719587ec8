import asyncio
import hmac
from collections.abc import Awaitable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import bearer_token, client_ip
from service.api.errors import Forbidden
from service.api.metrics import Snapshot, job_families, process_registry
from service.api.openapi import operation
from service.api.responses import JSONResponse
from service.api.state import AppState, app_state
from service.core import keys
from service.core.queries import job_records
from service.core.queuestats import live_workers, queue_stats
from service.core.settings import Environment, Settings

CHECK_TIMEOUT = 1.0
LOOPBACK = frozenset({"127.0.0.1", "::1"})


@operation(summary="The process is alive", tag="operations", auth=False)
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _check(probe: Awaitable[object]) -> str:
    # In a task of its own, left to finish in the background past the timeout: a query cancelled on a
    # frozen PostgreSQL holds its connection until the server answers the cancellation.
    task = asyncio.ensure_future(probe)
    done, _ = await asyncio.wait({task}, timeout=CHECK_TIMEOUT)
    if not done:
        task.cancel()
        task.add_done_callback(lambda finished: finished.cancelled() or finished.exception())
        return "down (no answer)"
    if (error := task.exception()) is not None:  # any failure means "not ready"; the type tells why
        return f"down ({type(error).__name__})"
    return "ok"


@operation(
    summary="PostgreSQL and Redis answer (503 naming the one that does not)",
    tag="operations",
    auth=False,
    errors=(503,),
)
async def readyz(request: Request) -> Response:
    state = app_state(request)
    database, redis = await asyncio.gather(_check(state.db.fetch_val("SELECT 1")), _check(state.redis.ping()))
    checks = {"database": database, "redis": redis}
    down = [name for name, result in checks.items() if result != "ok"]
    if down:
        detail = f"unavailable: {', '.join(down)}"
        return JSONResponse({"detail": detail, "checks": checks}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok", "checks": checks})


async def _job_gauges(state: AppState) -> dict[str, tuple[str, float]]:
    queue = await queue_stats(state.redis)
    workers = len(await live_workers(state.redis))
    return {
        "jobs_queued": ("Jobs ready to run that no worker has taken yet", queue.waiting),
        "jobs_deferred": ("Jobs waiting for their time: retries in backoff, cron runs not yet due", queue.deferred),
        "jobs_oldest_queued_age_seconds": ("Age of the oldest job ready to run", queue.oldest_waiting_age or 0.0),
        "jobs_in_progress": ("Jobs running now", await job_records.count_running(state.db)),
        "workers_alive": ("Workers with a heartbeat in the last 10 s", workers),
    }


def _may_scrape(request: Request, settings: Settings) -> bool:
    """With METRICS_TOKEN, the scraper's bearer token; without, a loopback client in development only."""
    if settings.metrics_token is not None:
        given = (bearer_token(request) or "").encode()
        return hmac.compare_digest(given, settings.metrics_token.get_secret_value().encode())
    return settings.env is Environment.DEVELOPMENT and client_ip(request) in LOOPBACK


@operation(summary="Prometheus metrics (METRICS_TOKEN as a bearer token)", tag="operations", auth=False,
           media_type=CONTENT_TYPE_LATEST, errors=(403,))  # fmt: skip
async def metrics(request: Request) -> Response:
    state = app_state(request)
    if not _may_scrape(request, state.settings):
        raise Forbidden("Metrics need the METRICS_TOKEN bearer token")
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_JOB_EVENTS)
        pipe.hgetall(keys.METRICS_JOB_DURATION)
        events, durations = await pipe.execute()
    jobs_registry = CollectorRegistry(auto_describe=False)
    jobs_registry.register(Snapshot(job_families(events, durations, await _job_gauges(state))))
    body = generate_latest(process_registry(state.settings, state.http_metrics.registry)) + generate_latest(
        jobs_registry
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
