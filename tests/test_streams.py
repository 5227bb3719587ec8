"""Server-Sent Events under load: streams share one Redis subscription per process, and are capped per
user and per process (429 beyond). Real uvicorn, real sockets."""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from redis.asyncio import Redis

from service.core.settings import Settings
from service.dev.embedded import free_port
from tests.conftest import PASSWORD, TEST_SECRET
from tests.processes import clean_env, python, start, stopped_at_exit, wait_http

PER_USER = 60
PER_PROCESS = 100


async def _user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


async def _open(stack: contextlib.AsyncExitStack, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    response = await stack.enter_async_context(client.stream("GET", url, headers=headers))
    return response.status_code


async def _redis_clients(redis: Redis) -> int:
    return len(await redis.client_list())


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def _api(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    env = clean_env(
        DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, JWT_SECRET=TEST_SECRET,
        SSE_MAX_STREAMS=str(PER_PROCESS), SSE_MAX_STREAMS_PER_USER=str(PER_USER), ENQUEUE_QUOTA_PER_MINUTE="0",
    )  # fmt: skip
    uvicorn = python("-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port))
    with stopped_at_exit(start(uvicorn, env, tmp_path / "api.log")) as api:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http, f"{base}/readyz", api)
        yield base, api.process.pid


async def test_streams_share_one_subscription_and_stop_at_their_caps(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    limits = httpx.Limits(max_connections=PER_PROCESS + 10)
    async with _api(settings, tmp_path) as (base, pid), httpx.AsyncClient(base_url=base, limits=limits) as client:
        ann, bob = await _user(client, "ann"), await _user(client, "bob")
        # No worker runs: the job waits, and its streams stay open.
        job = (await client.post("/jobs/long-calc", headers=ann, json={"a": 1, "b": 2})).json()["job_id"]
        url = f"/jobs/{job}/events"
        other = (await client.post("/jobs/long-calc", headers=bob, json={"a": 1, "b": 2})).json()["job_id"]
        clients_before, files_before = await _redis_clients(redis), _open_files(pid)
        async with contextlib.AsyncExitStack() as stack:
            ann_answers = [await _open(stack, client, url, ann) for _ in range(PER_USER + 1)]
            rest = PER_PROCESS - PER_USER + 1
            bob_answers = [await _open(stack, client, f"/jobs/{other}/events", bob) for _ in range(rest)]
            redis_clients, open_files = await _redis_clients(redis), _open_files(pid)
        assert ann_answers == [200] * PER_USER + [429]  # the user's cap
        assert bob_answers == [200] * (PER_PROCESS - PER_USER) + [429]  # the process's cap
        # One subscription for all 100 streams (two channels), not a connection each.
        assert redis_clients - clients_before <= 2, (clients_before, redis_clients)
        assert open_files - files_before <= PER_PROCESS + 10  # a socket per stream, and little else
        await asyncio.sleep(0.5)  # the server notices the closed streams
        async with client.stream("GET", url, headers=ann) as again:
            assert again.status_code == 200  # closed streams gave their places back
