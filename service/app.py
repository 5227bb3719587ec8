"""The Starlette application: `uvicorn --factory service.app:create_app`."""

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from service.api.errors import exception_handlers
from service.api.metrics import HttpMetrics
from service.api.middleware import Edge
from service.api.routes import all_routes
from service.api.security import Passwords, Tokens
from service.api.sessions import Sessions
from service.api.state import AppState
from service.api.streams import StreamHub
from service.api.throttle import Throttle
from service.core import tracing
from service.core.connections import check_pool_fits, open_database, open_redis
from service.core.dispatch import Dispatcher, user_caps
from service.core.logs import configure_logging
from service.core.queries.users import UserLookup
from service.core.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for these settings. Called without any (as `uvicorn --factory` does), it reads them from
    the environment and, being the process's entry point, sets up its logging."""
    if settings is None:
        settings = Settings()
        configure_logging(settings)
        tracing.configure("taskmanager-api")
    routes = all_routes()
    http_metrics = HttpMetrics(CollectorRegistry(auto_describe=True))
    route_names = {route.endpoint: route.path_format for route in routes if isinstance(route, Route)}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        db = open_database(settings)
        redis = open_redis(settings)
        streams = StreamHub(redis, max_streams=settings.sse_max_streams, max_per_user=settings.sse_max_streams_per_user)
        await db.connect()
        try:
            await check_pool_fits(db, settings, process="API")
            state = AppState(
                settings=settings,
                db=db,
                redis=redis,
                passwords=Passwords(settings.password_hash_concurrency, settings.new_password_hash_concurrency),
                tokens=Tokens.from_settings(settings),
                http_metrics=http_metrics,
                dispatcher=Dispatcher(db, redis, caps=user_caps(settings)),
                users=UserLookup(db),
                throttle=Throttle(redis),
                sessions=Sessions(redis, lifetime_seconds=settings.jwt_expire_minutes * 60),
                streams=streams,
            )
            # What startup built lives as long as the process: frozen, it is no longer walked by every
            # full garbage collection, whose pauses were most of POST /tasks' p99 (62 -> 20 ms).
            gc.freeze()
            yield {"app": state}
        finally:
            await streams.close()
            await redis.aclose()
            await db.disconnect()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Edge,
                metrics=http_metrics,
                route_names=route_names,
                deadline=settings.request_timeout,
                max_body_size=settings.max_body_bytes,
                access_log=settings.access_log,
            )
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    if tracing.active():  # the HTTP server span, the request's trace context its children's
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app.add_middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"])
    return app
