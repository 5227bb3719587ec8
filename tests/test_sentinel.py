"""Redis behind Sentinel: a primary, a replica and three sentinels (valkey-server --sentinel), on
servers of this module's own. The API, `python -m jobs` and arq's own CLI (--burst, --check) find the
primary through the sentinels, and follow it when the replica is promoted."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel

from service.core.settings import Settings
from service.dev.embedded import EmbeddedValkey
from tests.conftest import TEST_SECRET, api_client, login, register
from tests.ha.servers import MASTER, EmbeddedSentinel
from tests.processes import clean_env, python, start, stopped_at_exit

pytestmark = pytest.mark.timeout(180)


class SentinelSet:
    def __init__(self, base: Path) -> None:
        self.primary = EmbeddedValkey(base / "primary")
        self.replica = EmbeddedValkey(base / "replica")
        self.sentinels = [EmbeddedSentinel(base / f"sentinel{n}") for n in range(3)]

    def start(self) -> None:
        self.primary.start()
        self.replica.start("--replicaof", self.primary.host, str(self.primary.port))
        for sentinel in self.sentinels:
            sentinel.start_watching(self.primary)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    @property
    def addresses(self) -> str:
        return ",".join(f"{sentinel.host}:{sentinel.port}" for sentinel in self.sentinels)

    async def primary_address(self) -> tuple[str, int] | None:
        """The primary the sentinels name; None while none is (the old one down, the new not yet chosen)."""
        sentinel = Sentinel([(s.host, s.port) for s in self.sentinels], socket_timeout=1)  # type: ignore[no-untyped-call]
        try:
            address: tuple[str, int] = await sentinel.discover_master(MASTER)
        except MasterNotFoundError:
            return None
        return address


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def through_sentinels(settings: Settings, sentinels: SentinelSet) -> AsyncIterator[Settings]:
    """The suite's settings, with Redis found through the sentinels (REDIS_URL gives the db only)."""
    address = await sentinels.primary_address()
    assert address is not None
    async with Redis(host=address[0], port=address[1]) as primary:
        await primary.flushdb()
    yield settings.model_copy(update={"redis_sentinels": sentinels.addresses, "redis_url": "redis://ignored/0"})


def _env(settings: Settings) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=settings.database_url, REDIS_SENTINELS=settings.redis_sentinels or "", REDIS_URL="redis://x/0",
        JWT_SECRET=TEST_SECRET, SMTP_PORT=str(settings.smtp_port),
    )  # fmt: skip


async def _run_arq(settings: Settings, *options: str) -> tuple[int, str]:
    """`arq jobs.worker.WorkerSettings OPTIONS` as a process of its own, with the sentinel settings."""
    process = await asyncio.create_subprocess_exec(
        *python("-m", "arq", "jobs.worker.WorkerSettings", *options), env=_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def _task(client: httpx.AsyncClient, headers: dict[str, str], title: str) -> str:
    response = await client.post("/tasks", headers=headers, json={"title": title})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def test_the_arq_cli_runs_and_checks_through_the_sentinels(through_sentinels: Settings, tmp_path: Path) -> None:
    async with api_client(through_sentinels) as client:
        await register(client, "sid")
        sid = await login(client, "sid")
        job_id = await _task(client, sid, "found through the sentinels")
        code, output = await _run_arq(through_sentinels, "--burst")
        assert code == 0, output
        assert (await client.get(f"/jobs/{job_id}", headers=sid)).json()["state"] == "SUCCESS"
    # --check asks for the health that a running worker records (a burst worker removes it as it ends).
    worker = start(python("-m", "arq", "jobs.worker.WorkerSettings"), _env(through_sentinels), tmp_path / "w.log")
    with stopped_at_exit(worker):
        for _ in range(100):
            code, output = await _run_arq(through_sentinels, "--check")
            if code == 0:
                break
            await asyncio.sleep(0.2)
        assert code == 0, output + worker.output()


async def test_the_api_and_the_cli_follow_a_promoted_replica(
    through_sentinels: Settings, sentinels: SentinelSet
) -> None:
    before = await sentinels.primary_address()
    async with api_client(through_sentinels) as client:
        await register(client, "pia")
        pia = await login(client, "pia")
        await _task(client, pia, "before the failover")
        sentinels.primary.kill()  # SIGKILL: no goodbye to the sentinels
        started = time.monotonic()
        while await sentinels.primary_address() in (before, None):
            assert time.monotonic() - started < 30, "no sentinel promoted the replica"
            await asyncio.sleep(0.2)
        promoted_after = time.monotonic() - started
        after = await _task(client, pia, "after the failover")  # the API's next command finds the new primary
        code, output = await _run_arq(through_sentinels, "--burst")
        assert code == 0, output
        assert (await client.get(f"/jobs/{after}", headers=pia)).json()["state"] == "SUCCESS"
    assert await sentinels.primary_address() == (sentinels.replica.host, sentinels.replica.port)
    assert promoted_after < 15
