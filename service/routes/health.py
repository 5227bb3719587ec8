import asyncio
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.openapi import operation
from service.responses import JSONResponse
from service.state import app_state

CHECK_TIMEOUT = 1.0


@operation(summary="The process is alive", tag="operations", auth=False)
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _check(probe: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe
    except Exception as exc:  # any failure means "not ready"; the type tells the operator why
        return f"down ({type(exc).__name__})"
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
        return JSONResponse({"detail": f"unavailable: {', '.join(down)}", "checks": checks}, status_code=503)
    return JSONResponse({"status": "ok", "checks": checks})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
