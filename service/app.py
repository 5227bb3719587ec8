"""The Starlette application: `uvicorn --factory service.app:create_app`."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis
from databases import Database
from prometheus_client import CollectorRegistry
from redis.asyncio import ConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from service import jobcodec, routing
from service.errors import exception_handlers
from service.logs import configure_logging
from service.metrics import HttpMetrics
from service.middleware import BodySizeLimit, Telemetry
from service.requestid import RequestId
from service.routes import auth, dashboard, docs, items, jobs, operations, reports, tasks, users
from service.security import Passwords, Tokens
from service.settings import Settings
from service.state import AppState


def open_database(settings: Settings) -> Database:
    # min_size 0: the app starts (and /readyz answers 503) while PostgreSQL is down; connections open on demand.
    return Database(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
    )


def open_redis(settings: Settings) -> ArqRedis:
    # Not arq's create_pool, which pings at creation and so would not start while Redis is down.
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
    return ArqRedis(pool, job_serializer=jobcodec.serialize, job_deserializer=jobcodec.deserialize)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for these settings. Called without any (as `uvicorn --factory` does), it reads them from
    the environment and, being the process's entry point, sets up its logging."""
    if settings is None:
        settings = Settings()
        configure_logging(settings)
    api_routes: list[BaseRoute] = [
        *auth.routes,
        *users.routes,
        *items.routes,
        *tasks.routes,
        *jobs.routes,
        *reports.routes,
        *operations.routes,
    ]
    routes = routing.by_path([*api_routes, *docs.routes(api_routes), *dashboard.routes])
    http_metrics = HttpMetrics(CollectorRegistry(auto_describe=True))
    route_names = {route.endpoint: route.path_format for route in routes if isinstance(route, Route)}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        db = open_database(settings)
        redis = open_redis(settings)
        await db.connect()
        try:
            passwords = Passwords(settings.password_hash_concurrency)
            tokens = Tokens.from_settings(settings)
            yield {"app": AppState(settings, db, redis, passwords, tokens, http_metrics)}
        finally:
            await redis.aclose()
            await db.disconnect()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestId),
            Middleware(Telemetry, metrics=http_metrics, route_names=route_names, access_log=settings.access_log),
            Middleware(BodySizeLimit, max_body_size=settings.max_body_bytes),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
