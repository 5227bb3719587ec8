"""Real servers for the suite: embedded PostgreSQL and Valkey in a temporary directory, started once.

TEST_DATABASE_URL / TEST_REDIS_URL point the suite at servers of your own instead (it creates and
migrates the database it is given, and flushes the Redis db it is given: never name your real ones).
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from arq.worker import Worker, get_kwargs
from databases import Database
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from jobs.fastworker import FastWorker
from jobs.worker import worker_settings
from service.app import create_app
from service.core.settings import Environment, Settings
from service.core.tables import metadata
from service.dev import mailcatcher, migrate
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from service.dev.mailcatcher import CaughtMail
from service.dev.servers import ensure_database
from tests.browser import browser  # noqa: F401  (a fixture: headless Chromium)
from tests.processes import Proc, clean_env, python, start, stopped_at_exit, wait_http

TEST_SECRET = "test-secret-" + "x" * 40
METRICS_TOKEN = "metrics-" + "m" * 32
PASSWORD = "correct horse battery"
DRAIN_TIMEOUT = 30  # seconds: a burst worker that has not emptied the queue by then is stuck


@dataclass
class Servers:
    """The servers of this run; `postgres` / `valkey` are set when the suite owns them (and may kill them)."""

    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    valkey: EmbeddedValkey | None = None


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    postgres = valkey = None
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    try:
        if not database_url:
            postgres = EmbeddedPostgres(base / "postgres")
            postgres.start()
            database_url = sa.make_url(postgres.url).set(database="taskmanager_test").render_as_string(False)
        if not redis_url:
            valkey = EmbeddedValkey(base / "valkey")
            valkey.start()
            redis_url = valkey.url
        yield Servers(database_url, redis_url, postgres, valkey)
    finally:
        for server in (valkey, postgres):
            if server is not None:
                server.stop()


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    asyncio.run(ensure_database(servers.database_url))
    migrate.upgrade(servers.database_url)
    return servers.database_url


class MailBox:
    """A real SMTP server (the project's mail catcher) in the test process, keeping what it catches."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.messages: list[CaughtMail] = []
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.refuse_next: list[str] = []  # SMTP replies (e.g. "421 ...") for the next DATA commands

    def catch(self, mail: CaughtMail) -> None:
        self.messages.append(mail)

    async def start(self) -> None:
        self.server = await mailcatcher.serve(self.host, self.port, self.catch, reject=self._reject)

    def _reject(self) -> str | None:
        return self.refuse_next.pop(0) if self.refuse_next else None

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def to(self, address: str) -> list[CaughtMail]:
        return [mail for mail in self.messages if address in mail.recipients]


@pytest.fixture(scope="session")
async def mailbox() -> AsyncIterator[MailBox]:
    box = MailBox()
    await box.start()
    yield box
    await box.stop()


@pytest.fixture
async def mail(mailbox: MailBox) -> AsyncIterator[MailBox]:
    """The session's SMTP server, emptied for this test (and started again if a test stopped it)."""
    mailbox.messages.clear()
    mailbox.refuse_next.clear()
    if mailbox.server is None:
        await mailbox.start()
    yield mailbox


@pytest.fixture(scope="session")
def settings(database_url: str, servers: Servers, mailbox: MailBox) -> Settings:
    return Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=servers.redis_url,
        jwt_secret=TEST_SECRET,
        metrics_token=METRICS_TOKEN,
        max_body_bytes=16 * 1024,
        smtp_port=mailbox.port,
        retry_base_seconds=0.05,
        worker_poll_delay=0.01,
    )


def make_worker(
    settings: Settings, *, slow: bool = False, burst: bool = True, cron: bool = False, **overrides: Any
) -> Worker:
    """The worker `python -m jobs` runs (woken by enqueues), in this process."""
    options = {"burst": burst, "handle_signals": False, **overrides}
    if not cron:
        options["cron_jobs"] = []
    return FastWorker(**{**get_kwargs(worker_settings(settings, slow=slow)), **options})


async def _run(worker: Worker) -> Worker:
    try:
        await asyncio.wait_for(worker.async_run(), DRAIN_TIMEOUT)
    finally:
        await worker.close()
    return worker


async def drain(settings: Settings, **overrides: Any) -> Worker:
    """Run in-process arq workers, one per queue, until both queues are empty (retries included).
    The fast queue's worker is returned: its counters tell what ran there."""
    fast, _slow = await asyncio.gather(
        _run(make_worker(settings, **overrides)), _run(make_worker(settings, slow=True, **overrides))
    )
    return fast


@asynccontextmanager
async def background_worker(settings: Settings, *, slow: bool = False, **overrides: Any) -> AsyncIterator[Worker]:
    """In-process arq workers for both queues, polling in the background for the duration of the block.
    The one yielded serves the slow queue if slow, else the fast one."""
    workers = [
        make_worker(settings, burst=False, **overrides),
        make_worker(settings, slow=True, burst=False, **overrides),
    ]
    tasks = [asyncio.create_task(worker.async_run()) for worker in workers]
    try:
        yield workers[1] if slow else workers[0]
    finally:
        for worker, task in zip(workers, tasks, strict=True):
            # Closing cancels what still runs (a job or a cron run caught mid-way), as a shutdown does.
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    async with Database(settings.database_url) as database:
        yield database


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def empty_state(db: Database, redis: Redis) -> None:
    """Empty tables and an empty Redis db (emptied before a test, so a failure stays inspectable)."""
    names = ", ".join(table.name for table in metadata.sorted_tables)
    await db.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    await redis.flushdb()


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """Every test that touches the servers starts from empty state; pure unit tests start no server."""
    if {"database_url", "settings", "client", "db", "redis"} & set(request.fixturenames):
        request.getfixturevalue("empty_state")
        request.getfixturevalue("mail")  # an empty mailbox that accepts everything


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[ASGIApp]:
    """Enter the app's lifespan explicitly and hand its state to each request, as uvicorn does."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        yield with_state


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as http:
        yield http


async def register(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, object]:
    response = await client.post(
        "/auth/register", json={"email": f"{name}@example.com", "username": name, "password": password}
    )
    assert response.status_code == 201, response.text
    user: dict[str, object] = response.json()
    return user


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/auth/token", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def verify(db: Database, name: str) -> None:
    """Mark a user's email verified, as following the link mailed at registration does (that link is
    tested in tests/test_accounts.py)."""
    await db.execute("UPDATE users SET email_verified_at = now() WHERE username = :name", {"name": name})


@pytest.fixture
def make_user(client: httpx.AsyncClient, db: Database) -> Callable[[str], Awaitable[dict[str, str]]]:
    """Register a user with a verified address and return the auth headers of a fresh token."""

    async def make(name: str) -> dict[str, str]:
        await register(client, name)
        await verify(db, name)
        return await login(client, name)

    return make


@pytest.fixture
def project_dir() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass
class Deployment:
    """The API and one worker per queue, as real processes on the suite's servers."""

    base_url: str
    api: Proc
    worker: Proc  # the fast queue's
    slow_worker: Proc
    env: dict[str, str]
    directory: Path

    async def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10)

    def start_worker(self, name: str, *, slow: bool = False) -> Proc:
        settings = "jobs.worker.SlowWorkerSettings" if slow else "jobs.worker.WorkerSettings"
        return start(python("-m", "arq", settings), self.env, self.directory / f"{name}.log")


@pytest.fixture
def deployment_env() -> dict[str, str]:
    """Settings a test module adds to its deployment's environment: override this fixture there."""
    return {}


@pytest.fixture
async def deployment(
    settings: Settings, mail: MailBox, tmp_path: Path, deployment_env: dict[str, str]
) -> AsyncIterator[Deployment]:
    port = free_port()
    env = clean_env(
        PUBLIC_URL=f"http://127.0.0.1:{port}",  # the links in emails
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        JWT_SECRET=TEST_SECRET,
        SMTP_PORT=str(mail.port),
        WORKER_POLL_DELAY="0.01",
        WORKER_SHUTDOWN_GRACE="8",
        # Floods are tested in process (test_security.py); here they would only get in the way of fuzzing.
        ENQUEUE_QUOTA_PER_MINUTE="0",
        ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE="0",
        USER_JOBS_ACTIVE="0",  # no cap
        REGISTRATIONS_PER_ADDRESS_PER_HOUR="100000",
        LOGIN_ATTEMPTS_PER_IP="100000",
        LOGIN_FAILURES_PER_ACCOUNT="100000",
        **deployment_env,
    )
    uvicorn = python("-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port))
    with (
        stopped_at_exit(start(uvicorn, env, tmp_path / "api.log")) as api,
        stopped_at_exit(
            start(python("-m", "arq", "jobs.worker.WorkerSettings"), env, tmp_path / "worker.log")
        ) as worker,
        stopped_at_exit(
            start(python("-m", "arq", "jobs.worker.SlowWorkerSettings"), env, tmp_path / "slow-worker.log")
        ) as slow_worker,
    ):
        base_url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http, f"{base_url}/readyz", api)
        yield Deployment(base_url, api, worker, slow_worker, env, tmp_path)
        for proc in (api, worker, slow_worker):
            proc.signal_group(signal.SIGTERM)
            await asyncio.to_thread(proc.wait_group_gone, 15)
        for proc in (worker, slow_worker):
            assert proc.process.returncode == 0, proc.output()
