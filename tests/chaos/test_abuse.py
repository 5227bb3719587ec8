"""Hostile users against real processes, with the figures: a flood of slow jobs, of registrations, of
event streams, of slow clients. Each shows what another user sees meanwhile."""

import asyncio
import contextlib
import os
import resource
import statistics
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.chaos.conftest import Cluster
from tests.chaos.test_chaos import Probe

Figures = dict[str, dict[str, Any]]


@pytest.fixture(autouse=True, scope="module")
def many_files() -> None:
    """Thousands of sockets, here and in the API (which inherits the limit), as `make run` allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def _quantiles(seconds: list[float]) -> str:
    ms = sorted(value * 1000 for value in seconds)
    p99 = ms[max(0, round(len(ms) * 0.99) - 1)]
    return f"p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms"


async def test_a_flood_of_slow_jobs_against_another_users_report(cluster: Cluster, figures: Figures) -> None:
    cluster.start_worker(slow=True)
    cluster.start_worker()
    async with await cluster.client() as client:
        flood, quiet = await cluster.sign_up(client, "flood"), await cluster.sign_up(client, "quiet")
        alone = await _report_latency(client, quiet)
        slow = {"a": 1, "b": 2, "step_seconds": 10}
        answers = Counter([(await client.post("/jobs/long-calc", headers=flood, json=slow)).status_code
                           for _ in range(100)])  # fmt: skip
        await asyncio.sleep(1)
        during = await _report_latency(client, quiet)
    figures["One user submits 100 long calculations (10 s a step); another asks for a report"] = {
        "the flood's answers": dict(answers),
        "the other user's report, alone (s)": round(alone, 2),
        "the other user's report, during the flood (s)": round(during, 2),
    }
    assert answers[202] == 10 and answers[429] == 90  # USER_SLOW_JOBS_ACTIVE
    assert during < alone + 3


async def _report_latency(client: httpx.AsyncClient, headers: dict[str, str]) -> float:
    asked = time.monotonic()
    job = (await client.post("/jobs/generate-report", headers=headers, json={})).json()["job_id"]
    while (await client.get(f"/jobs/{job}", headers=headers)).json()["state"] != "SUCCESS":
        await asyncio.sleep(0.02)
    return time.monotonic() - asked


@pytest.mark.parametrize("cluster", [{"REGISTRATIONS_PER_ADDRESS_PER_HOUR": "100000"}], indirect=True)
async def test_logins_during_a_flood_of_registrations(cluster: Cluster, figures: Figures) -> None:
    """The per-address limit is lifted here, as for a flood from many addresses: what is left is the
    hashing capacity that logins keep for themselves."""
    # The flood and the logins on clients of their own: a shared client would queue the logins itself.
    async with await cluster.client() as flooder, await cluster.client() as client:
        await cluster.sign_up(client, "regular")
        alone = [await _login_time(client) for _ in range(10)]
        flood = asyncio.gather(*(_register(flooder, n) for n in range(600)))
        await asyncio.sleep(0.5)
        during = [await _login_time(client) for _ in range(10)]
        registered = Counter(await flood)
    figures["600 registrations at once (no per-address limit), logins meanwhile"] = {
        "registrations": dict(registered),
        "a login alone": _quantiles(alone),
        "a login during the flood": _quantiles(during),
    }
    assert max(during) < 1.0


async def _register(client: httpx.AsyncClient, n: int) -> int:
    user = {"email": f"reg{n}@example.com", "username": f"reg{n}", "password": "a long password"}
    return (await client.post("/auth/register", json=user)).status_code


async def _login_time(client: httpx.AsyncClient) -> float:
    started = time.monotonic()
    answer = await client.post("/auth/token", data={"username": "regular", "password": "correct horse battery"})
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


async def test_registrations_from_one_address(cluster: Cluster, figures: Figures) -> None:
    async with await cluster.client() as client:
        registered = Counter(await asyncio.gather(*(_register(client, n) for n in range(600))))
    figures["600 registrations from one address"] = {"answers": dict(registered)}
    assert registered[201] == 20 and registered[429] == 580  # REGISTRATIONS_PER_ADDRESS_PER_HOUR


@pytest.mark.parametrize("cluster", [{"SSE_MAX_STREAMS": "2500", "SSE_MAX_STREAMS_PER_USER": "2500"}], indirect=True)
async def test_two_thousand_event_streams_on_one_job(cluster: Cluster, figures: Figures) -> None:
    cluster.start_worker(slow=True)
    limits = httpx.Limits(max_connections=2100)
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30, limits=limits) as client:
        headers = await cluster.sign_up(client, "watcher")
        job = (await client.post("/jobs/long-calc", headers=headers, json={"a": 1, "b": 2, "step_seconds": 4})).json()
        async with Redis.from_url(cluster.valkey.url) as redis:
            clients_before = len(await redis.client_list())
            files_before = len(os.listdir(f"/proc/{cluster.api.process.pid}/fd"))
            async with contextlib.AsyncExitStack() as stack:
                answers = Counter()
                for _ in range(2000):
                    response = await stack.enter_async_context(
                        client.stream("GET", f"/jobs/{job['job_id']}/events", headers=headers)
                    )
                    answers[response.status_code] += 1
                clients = len(await redis.client_list())
                files = len(os.listdir(f"/proc/{cluster.api.process.pid}/fd"))
                probe = Probe(cluster.base_url)
                probing = asyncio.create_task(probe.run())
                await asyncio.sleep(3)
                probe.stop()
                await probing
    figures["2,000 Server-Sent Event streams on one job, one API process"] = {
        "answers": dict(answers),
        "Redis clients before / with the streams": f"{clients_before} / {clients}",
        "the API's open files before / with the streams": f"{files_before} / {files}",
        "slowest /healthz meanwhile (ms)": round(probe.slowest["/healthz"] * 1000),
    }
    assert answers[200] == 2000
    # One subscription for every stream; the rest is the API's pool for commands (a few connections).
    assert clients - clients_before <= 10
    assert files - files_before <= 2000 + 20


async def test_eleven_hundred_slow_clients(cluster: Cluster, figures: Figures) -> None:
    """Each sends a header line every 2 s and never ends its request head (slowloris)."""
    port = int(cluster.base_url.rsplit(":", 1)[1])
    sockets: list[asyncio.StreamWriter] = []
    for _ in range(1100):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        sockets.append(writer)
    dribbling = asyncio.create_task(_dribble(sockets))
    health: list[float] = []
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client:
        started = time.monotonic()
        while time.monotonic() - started < 15:
            sent = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            health.append(time.monotonic() - sent)
            await asyncio.sleep(0.1)
    open_after = sum(1 for writer in sockets if not writer.is_closing())
    dribbling.cancel()
    for writer in sockets:
        writer.close()
    figures["1,100 slow clients (a header line every 2 s, never a whole request head)"] = {
        "/healthz meanwhile": _quantiles(health),
        "slow connections still open after 15 s (HEADER_TIMEOUT 10 s)": open_after,
    }
    assert max(health) < 0.5


async def _dribble(sockets: list[asyncio.StreamWriter]) -> None:
    while True:
        await asyncio.sleep(2)
        for writer in sockets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(b"X-Slow: yes\r\n")
                await writer.drain()
