"""`make chaos`: the service as real processes on servers of its own, which the tests kill and restart.

Each scenario counts, Jepsen-style, what clients attempted, what was accepted, what got done, what
was lost and what was duplicated; the figures go to docs/reliability.md.
"""

import asyncio
import contextlib
import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from service.dev import migrate
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from service.dev.runner import UVICORN_LIMITS
from service.dev.servers import ensure_database
from tests.conftest import PASSWORD, TEST_SECRET, MailBox
from tests.processes import PROJECT_DIR, Proc, clean_env, python, start, wait_http

RESULTS = PROJECT_DIR / "docs" / "reliability.md"


@dataclass
class Load:
    """What the clients saw."""

    attempted: int = 0
    accepted: set[str] = field(default_factory=set)  # titles with a 202
    statuses: Counter[int] = field(default_factory=Counter)  # every response, retries included
    connection_errors: int = 0
    slowest: float = 0.0  # seconds: the longest any request took to be answered (or to fail)


@dataclass
class Cluster:
    base: Path
    mail: MailBox
    env_overrides: dict[str, str] = field(default_factory=dict)
    postgres: EmbeddedPostgres = field(init=False)
    valkey: EmbeddedValkey = field(init=False)
    api: Proc = field(init=False)
    workers: list[Proc] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def database_url(self) -> str:
        return sa.make_url(self.postgres.url).set(database="chaos").render_as_string(hide_password=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.postgres = EmbeddedPostgres(self.base / "postgres")
        self.valkey = EmbeddedValkey(self.base / "valkey")
        self.postgres.start()
        self.valkey.start()
        asyncio.run(ensure_database(self.database_url))  # in a thread of its own: no loop runs here
        migrate.upgrade(self.database_url)
        self.env = clean_env(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.valkey.url,
            JWT_SECRET=TEST_SECRET,
            SMTP_PORT=str(self.mail.port),
            # Faults are measured here, not quotas: one client submits thousands of tasks at once.
            ENQUEUE_QUOTA_PER_MINUTE="0",
            ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE="0",
            USER_JOBS_ACTIVE="0",  # no cap
            ACCESS_LOG="false",
            **self.env_overrides,
        )
        # As `make run` serves it: the request-head deadline and uvicorn's limits.
        app = ("service.app:create_app", "--port", str(self.port), *UVICORN_LIMITS)
        uvicorn = python("-m", "uvicorn", "--factory", *app)
        self.api = start(uvicorn, self.env, self.base / "api.log")
        wait_http(f"{self.base_url}/readyz", self.api)

    def start_worker(self, *, slow: bool = False) -> Proc:
        log = self.base / f"worker-{len(self.workers)}.log"
        worker = start(python("-m", "jobs", *(["--slow"] if slow else [])), self.env, log)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for proc in [self.api, *self.workers]:
            proc.signal_group(9)
        for proc in [self.api, *self.workers]:
            with contextlib.suppress(AssertionError):
                proc.wait_group_gone(10)
        self.valkey.stop()
        self.postgres.stop()

    def restart_valkey_empty(self) -> None:
        """SIGKILL Redis (Valkey) and start it again with nothing: as a restart without persistence."""
        self.valkey.kill()
        shutil.rmtree(self.valkey.data_dir)
        self.valkey.start()

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(sa.make_url(self.database_url).render_as_string(hide_password=False))
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10, limits=httpx.Limits(max_connections=64))

    async def sign_up(self, client: httpx.AsyncClient, name: str) -> dict[str, str]:
        user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
        assert (await client.post("/auth/register", json=user)).status_code == 201
        # Verified, as by the link in the welcome email (tests/test_accounts.py follows that link).
        await self.sql("UPDATE users SET email_verified_at = now() WHERE username = $1", name)
        token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
        return {"Authorization": f"Bearer {token['access_token']}"}

    async def create_tasks(
        self, client: httpx.AsyncClient, headers: dict[str, str], titles: list[str], load: Load, concurrency: int = 32
    ) -> None:
        """POST each task until it is accepted, as a careful client would: the same Idempotency-Key on
        every retry, so a retry never creates a second task."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        for title in titles:
            queue.put_nowait(title)
        load.attempted += len(titles)

        async def one(title: str) -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/tasks", headers={**headers, "Idempotency-Key": title}, json={"title": title}
                    )
                except httpx.TransportError:
                    load.connection_errors += 1
                else:
                    load.statuses[response.status_code] += 1
                    if response.status_code == 202:
                        load.accepted.add(title)
                        return
                finally:
                    load.slowest = max(load.slowest, time.monotonic() - sent)
                await asyncio.sleep(0.2)

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def settle(self, timeout: float = 300) -> None:
        """Wait until no job is left waiting or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                rows = await self.sql(
                    "SELECT count(*) AS n FROM jobs WHERE state NOT IN ('SUCCESS','FAILURE','REVOKED')"
                )
                if rows[0]["n"] == 0:
                    return
            await asyncio.sleep(0.5)
        raise AssertionError("jobs still active after the timeout")

    async def outcome(self, load: Load, prefix: str) -> dict[str, int]:
        rows = await self.sql("SELECT title, count(*) AS n FROM tasks WHERE title LIKE $1 GROUP BY title", prefix + "%")
        done = {row["title"]: row["n"] for row in rows}
        failed = await self.sql("SELECT count(*) AS n FROM jobs WHERE state = 'FAILURE'")
        return {
            "attempted": load.attempted,
            "accepted": len(load.accepted),
            "done": len(done),
            "lost": len(load.accepted - set(done)),
            "duplicated": sum(n - 1 for n in done.values()),
            "failed_jobs": failed[0]["n"],
        }


@pytest.fixture
async def cluster(tmp_path: Path, mailbox: MailBox, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    mailbox.messages.clear()
    mailbox.refuse_next.clear()
    if mailbox.server is None:
        await mailbox.start()
    overrides = getattr(request, "param", {})
    node = Cluster(tmp_path, mailbox, env_overrides=overrides)
    await asyncio.to_thread(node.start)
    try:
        yield node
    finally:
        await asyncio.to_thread(node.stop)


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, dict[str, Any]]]:
    """Each scenario's figures, written to docs/reliability.md at the end of the run."""
    collected: dict[str, dict[str, Any]] = {}
    yield collected
    if collected:
        RESULTS.write_text(render(collected))
        print("\n" + render(collected))


def render(collected: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `make chaos` on {time.strftime('%Y-%m-%d')} (2 cores; PostgreSQL, Valkey, API, workers and "
        "clients on one machine).",
        "",
    ]
    for scenario, numbers in collected.items():
        lines += [f"## {scenario}", "", "| measure | value |", "|---|---|"]
        lines += [
            f"| {key} | {json.dumps(value) if not isinstance(value, str) else value} |"
            for key, value in numbers.items()
        ]
        lines.append("")
    return "\n".join(lines)
