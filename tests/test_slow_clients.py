"""Slow clients (slowloris): a connection that dribbles its request head is dropped after
HEADER_TIMEOUT, and meanwhile everyone else is answered at once. Real uvicorn, run as `make run` does."""

import asyncio
import resource
import time
from pathlib import Path

import httpx

from service.core.settings import Settings
from service.dev.embedded import free_port
from service.dev.runner import UVICORN_LIMITS
from tests.conftest import TEST_SECRET
from tests.processes import clean_env, python, start, stopped_at_exit, wait_http

SLOW_CLIENTS = 500


async def _dribble(port: int, seconds: float) -> float | None:
    """Send a request head a header line at a time, every 0.3 s; when the server hung up (s), or None.

    The clock starts before connecting: the server's deadline cannot start earlier, whereas a stamp taken
    after `open_connection` returns is late by however long this busy event loop took to resume us."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        while time.monotonic() - started < seconds:
            writer.write(b"X-Slow: yes\r\n")
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(100), 0.3)
            except TimeoutError:
                continue
            if not answer or answer.startswith(b"HTTP/1.1 408"):
                return time.monotonic() - started
        return None
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slow_clients_are_dropped_and_others_answered_meanwhile(settings: Settings, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 500 sockets here, 500 in uvicorn
    port = free_port()
    env = clean_env(
        DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, JWT_SECRET=TEST_SECRET, HEADER_TIMEOUT="1"
    )
    uvicorn = python("-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port), *UVICORN_LIMITS)
    with stopped_at_exit(start(uvicorn, env, tmp_path / "api.log")) as api:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http, f"{base}/healthz", api)
        slow = asyncio.gather(*(_dribble(port, 5) for _ in range(SLOW_CLIENTS)))
        waits = []
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(40):
                sent = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                waits.append(time.monotonic() - sent)
                await asyncio.sleep(0.05)
        dropped = await slow
    assert all(after is not None and 0.9 < after < 2.5 for after in dropped), sorted(dropped, key=str)[-5:]
    assert max(waits) < 0.5  # without the deadline: no answer for 20 s (the pen test)
