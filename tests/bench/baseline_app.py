"""Baselines for the HTTP benchmark: bare Starlette, as little as each figure needs and nothing more.

GET  /const    a constant JSON body
GET  /jwt      the same, after checking the bearer token (PyJWT, HS256)
POST /enqueue  check the token, then arq's own `enqueue_job` with arq's defaults (pickle)
"""

import contextlib
import os
from collections.abc import AsyncIterator

import jwt
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET = os.environ["JWT_SECRET"]


def _user(request: Request) -> int:
    token = request.headers["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="taskmanager-api", issuer="taskmanager")
    return int(claims["sub"])


async def const(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def checked(request: Request) -> Response:
    return JSONResponse({"user": _user(request)})


async def enqueue(request: Request) -> Response:
    user = _user(request)
    body = await request.json()
    pool: ArqRedis = request.state.arq
    job = await pool.enqueue_job("process_new_task", owner_id=user, **body)
    assert job is not None
    return JSONResponse({"job_id": job.job_id}, status_code=202)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, ArqRedis]]:
    pool = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    yield {"arq": pool}
    await pool.aclose()


app = Starlette(
    routes=[Route("/const", const), Route("/jwt", checked), Route("/enqueue", enqueue, methods=["POST"])],
    lifespan=lifespan,
)
