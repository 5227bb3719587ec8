"""More than one machine: the API, the workers, Valkey and PostgreSQL each on a "host" of its own (a
network namespace), Valkey with a replica and three Sentinels, PostgreSQL with a synchronous standby.
Each scenario kills a server, promotes a standby, or cuts a host off the network under load, and
counts what was attempted, accepted, done, lost and duplicated, and how long recovery took."""

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.core.dsn import PostgresDSN
from service.dev import migrate
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey
from service.dev.runner import UVICORN_LIMITS
from service.dev.servers import ensure_database
from tests.chaos.conftest import Cluster, Load
from tests.conftest import TEST_SECRET, MailBox
from tests.ha.hosts import SUBNET, Host, Network, why_no_hosts
from tests.ha.servers import MASTER, EmbeddedSentinel, promote, start_primary, start_standby
from tests.processes import Proc, clean_env, python, start, wait_http

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(why_no_hosts() is not None, reason=f"no hosts to run on: {why_no_hosts()}"),
]
Figures = dict[str, dict[str, Any]]
API_PORT = 8000


@dataclass
class HACluster(Cluster):
    """The Cluster of the single-host scenarios, spread over hosts, with replicas and failover."""

    network: Network = field(default_factory=Network)
    hosts: dict[str, Host] = field(default_factory=dict)
    databases: list[EmbeddedPostgres] = field(default_factory=list)  # primary, standby
    redis: list[EmbeddedValkey] = field(default_factory=list)  # primary, replica
    sentinels: list[EmbeddedSentinel] = field(default_factory=list)
    by_host: dict[str, Proc] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        hosts = tuple((node.host, node.port) for node in self.databases)
        return str(PostgresDSN(hosts, "chaos", "postgres", query={"target_session_attrs": "read-write"}))

    @property
    def base_url(self) -> str:
        return f"http://{self.hosts['api'].address}:{API_PORT}"

    def start(self) -> None:
        self.network.__enter__()
        for name in ("pg1", "pg2", "redis1", "redis2", "api", "w1", "w2", "w3"):
            self.hosts[name] = self.network.add(name)
        subnet = f"{SUBNET}.0/24"
        for name in ("pg1", "pg2"):
            host = self.hosts[name]
            self.databases.append(EmbeddedPostgres(self.base / name, port=5432, host=host.address, netns=host.netns))
        start_primary(self.databases[0], subnet)
        asyncio.run(ensure_database(self.database_url))
        migrate.upgrade(self.database_url)
        start_standby(self.databases[1], self.databases[0])
        for name in ("redis1", "redis2"):
            host = self.hosts[name]
            self.redis.append(EmbeddedValkey(self.base / name, port=6379, host=host.address, netns=host.netns))
        primary = self.redis[0]
        primary.start()
        self.redis[1].start("--replicaof", primary.host, str(primary.port))
        for name in ("redis1", "redis2", "api"):  # three sentinels, on three hosts
            host = self.hosts[name]
            sentinel = EmbeddedSentinel(self.base / f"sentinel-{name}", port=26379, host=host.address, netns=host.netns)
            sentinel.start_watching(primary)
            self.sentinels.append(sentinel)
        self.env = clean_env(
            DATABASE_URL=self.database_url,
            REDIS_SENTINELS=",".join(f"{s.host}:{s.port}" for s in self.sentinels),
            REDIS_SENTINEL_MASTER=MASTER,
            REDIS_URL="redis://found-through-the-sentinels/0",
            JWT_SECRET=TEST_SECRET,
            SMTP_HOST=f"{SUBNET}.1",
            SMTP_PORT=str(self.mail.port),
            ENQUEUE_QUOTA_PER_MINUTE="0",
            ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE="0",
            USER_JOBS_ACTIVE="0",  # no cap
            ACCESS_LOG="false",
            **self.env_overrides,
        )
        api = self.hosts["api"]
        uvicorn = python("-m", "uvicorn", "--factory", "service.app:create_app", "--host", api.address,
                         "--port", str(API_PORT), *UVICORN_LIMITS)  # fmt: skip
        self.api = start(api.run(uvicorn), self.env, self.base / "api.log")
        wait_http(f"{self.base_url}/readyz", self.api)

    def start_worker_on(self, name: str, *, slow: bool = False) -> Proc:
        argv = self.hosts[name].run(python("-m", "jobs", *(["--slow"] if slow else [])))
        worker = start(argv, self.env, self.base / f"worker-{name}{'-slow' if slow else ''}.log")
        self.workers.append(worker)
        self.by_host.setdefault(name, worker)
        return worker

    def stop(self) -> None:
        try:
            processes = [*([self.api] if hasattr(self, "api") else []), *self.workers]
            for proc in processes:
                proc.signal_group(signal.SIGKILL)
            for proc in processes:
                with contextlib.suppress(AssertionError):
                    proc.wait_group_gone(10)
            for server in (*self.sentinels, *self.redis, *self.databases):
                server.stop()
        finally:
            self.network.close()

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.database_url, timeout=5)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    def requeued(self) -> int:
        """Jobs the reconcilers enqueued again from PostgreSQL, by their log lines."""
        found = 0
        for worker in self.workers:
            found += sum(int(n) for n in re.findall(r"requeued=(\d+)", worker.output()))
        return found


@pytest.fixture
async def ha(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[HACluster]:
    mail = MailBox(host=f"{SUBNET}.1")
    cluster = HACluster(tmp_path, mail, env_overrides=getattr(request, "param", {}))
    try:
        await asyncio.to_thread(cluster.start)
        await mail.start()  # on the bridge: the hosts reach it there
        yield cluster
    finally:
        await mail.stop()
        await asyncio.to_thread(cluster.stop)


async def _until_done(cluster: HACluster, client: httpx.AsyncClient, headers: dict[str, str], title: str) -> float:
    """Seconds until a task submitted now is accepted and done (retrying while the service recovers)."""
    started = time.monotonic()
    load = Load()
    await cluster.create_tasks(client, headers, [title], load, concurrency=1)
    while not await cluster.sql("SELECT 1 FROM tasks WHERE title = $1", title):
        assert time.monotonic() - started < 120, "never recovered"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_redis_primary_killed_under_load(ha: HACluster, figures: Figures) -> None:
    """a) SIGKILL the Redis primary: Sentinel promotes the replica, API and workers follow it, and accepted
    jobs the replica never received are enqueued again from PostgreSQL."""
    ha.start_worker_on("w1")
    ha.start_worker_on("w2")
    ha.start_worker_on("w2", slow=True)
    async with await ha.client() as client:
        headers = await ha.sign_up(client, "sentinel")
        load = Load()
        creating = asyncio.create_task(
            ha.create_tasks(client, headers, [f"redis-ha-{n}" for n in range(1500)], load, concurrency=16)
        )
        await asyncio.sleep(2)
        ha.redis[0].kill()
        killed = time.monotonic()
        recovered = await _until_done(ha, client, headers, "probe-after-the-redis-kill")
        await creating
    await ha.settle()
    outcome = await ha.outcome(load, "redis-ha-")
    figures["Hosts: the Redis primary SIGKILLed under load, Sentinel promotes the replica"] = {
        **outcome,
        "responses seen": dict(sorted(load.statuses.items())),
        "slowest answer (ms)": round(load.slowest * 1000),
        "seconds from the kill until a new task was done": round(recovered, 1),
        "jobs the reconcilers enqueued again from PostgreSQL": ha.requeued(),
        "seconds of the run after the kill": round(time.monotonic() - killed, 1),
    }
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert outcome["accepted"] == 1500
    assert set(load.statuses) <= {202, 503}


async def test_the_postgresql_primary_stopped_and_its_standby_promoted(ha: HACluster, figures: Figures) -> None:
    """b) Stop the PostgreSQL primary under load and promote the synchronous standby, as an HA manager would:
    503 meanwhile (quickly), then the API recovers by itself; no acknowledged job is lost."""
    ha.start_worker_on("w1")
    ha.start_worker_on("w2")
    async with await ha.client() as client:
        headers = await ha.sign_up(client, "standby")
        load = Load()
        creating = asyncio.create_task(
            ha.create_tasks(client, headers, [f"pg-ha-{n}" for n in range(1000)], load, concurrency=16)
        )
        await asyncio.sleep(2)
        stopped = time.monotonic()
        await asyncio.to_thread(ha.databases[0].stop)
        await asyncio.sleep(2)  # the HA manager notices, then promotes
        await asyncio.to_thread(promote, ha.databases[1])
        promoted = time.monotonic() - stopped
        recovered = await _until_done(ha, client, headers, "probe-after-the-promotion")
        await creating
    await ha.settle()
    outcome = await ha.outcome(load, "pg-ha-")
    figures["Hosts: the PostgreSQL primary stopped under load, the synchronous standby promoted 2 s later"] = {
        **outcome,
        "responses seen": dict(sorted(load.statuses.items())),
        "slowest answer (ms)": round(load.slowest * 1000),
        "seconds from the stop until the standby was promoted": round(promoted, 1),
        "seconds from the promotion until a new task was done": round(recovered, 1),
    }
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert outcome["accepted"] == 1000
    assert load.slowest < 3.0


async def test_a_worker_host_cut_off_for_thirty_seconds(ha: HACluster, figures: Figures) -> None:
    """c) Cut a worker host off the network in the middle of its jobs: they run on the other host within
    the heartbeat window; back, its late writes change nothing twice."""
    ha.start_worker_on("w1")
    ha.start_worker_on("w2")
    async with await ha.client() as client:
        headers = await ha.sign_up(client, "cut")
        load = Load()
        titles = [f"cut-{n}" for n in range(600)]
        creating = asyncio.create_task(ha.create_tasks(client, headers, titles, load, concurrency=8))
        reminding = asyncio.create_task(_remind_each(ha, client, headers, 100))
        await asyncio.sleep(3)
        w1 = await _worker_id(ha, "w1")
        ha.hosts["w1"].cut()
        cut = time.monotonic()
        held = [row["job_id"] for row in await ha.sql(
            "SELECT job_id FROM jobs WHERE worker_id = $1 AND state IN ('STARTED', 'PROGRESS')", w1)]  # fmt: skip
        taken_over = await _finished(ha, held, since=cut)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - cut)))
        ha.hosts["w1"].reconnect()
        await creating
        await reminding
        await asyncio.sleep(10)  # the cut worker's late writes land
    await ha.settle()
    outcome = await ha.outcome(load, "cut-")
    reminders = Counter(mail.subject for mail in ha.mail.messages if mail.subject.startswith("Reminder: cut-"))
    # A second copy is allowed only where a send's outcome was unknown to its run (the cut came between
    # the SMTP server taking the message and PostgreSQL recording it): the run that took over says so.
    unknown = sum(log.read_text().count("claim ended unmarked") for log in ha.base.glob("worker-*.log"))
    figures["Hosts: a worker host cut off the network for 30 s in the middle of its jobs"] = {
        **outcome,
        "jobs running on the cut host": len(held),
        "seconds until the other host had finished them": round(taken_over, 1),
        "reminders asked / sent / sent twice": f"100 / {len(reminders)} / {sum(n > 1 for n in reminders.values())}",
        "sends whose outcome the cut made unknown": unknown,
    }
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert len(reminders) == 100 and all(n <= 2 for n in reminders.values())
    assert sum(n > 1 for n in reminders.values()) <= unknown


async def _remind_each(ha: HACluster, client: httpx.AsyncClient, headers: dict[str, str], count: int) -> None:
    """Ask for a reminder of each of the first `count` tasks, once it exists."""
    asked: set[int] = set()
    while len(asked) < count:
        rows = await ha.sql("SELECT id FROM tasks WHERE title LIKE 'cut-%' ORDER BY id LIMIT $1", count)
        for row in rows:
            if row["id"] not in asked:
                answer = await client.post(f"/tasks/{row['id']}/remind", headers=headers)
                if answer.status_code == 202:
                    asked.add(row["id"])
        await asyncio.sleep(0.1)


async def _worker_id(ha: HACluster, host: str) -> str:
    """The heartbeat id of the worker running on host (its python process is below nsenter's)."""
    from redis.asyncio.sentinel import Sentinel

    from tests.processes import process_tree

    sentinel = Sentinel([(s.host, s.port) for s in ha.sentinels], socket_timeout=2)  # type: ignore[no-untyped-call]
    redis = sentinel.master_for(MASTER)
    processes = set(process_tree(ha.by_host[host].process.pid))
    try:
        for worker_id in await redis.zrange("tm:workers", 0, -1):
            if int(await redis.hget(b"tm:worker:" + worker_id, "pid") or 0) in processes:
                return str(worker_id.decode())
    finally:
        await redis.aclose()
    raise AssertionError(f"no worker of {host} in the heartbeats")


async def _finished(ha: HACluster, job_ids: list[str], *, since: float) -> float:
    while job_ids:
        rows = await ha.sql("SELECT count(*) AS n FROM jobs WHERE job_id = ANY($1) AND finished_at IS NULL", job_ids)
        if rows[0]["n"] == 0:
            break
        if time.monotonic() - since > 120:
            raise AssertionError(f"the cut host's jobs never finished elsewhere: {await _where(ha, job_ids)}")
        await asyncio.sleep(0.2)
    return time.monotonic() - since


async def _where(ha: HACluster, job_ids: list[str]) -> list[dict[str, Any]]:
    """What PostgreSQL and Redis say of each job, to explain a failure."""
    from redis.asyncio.sentinel import Sentinel

    from service.core import keys

    rows = await ha.sql("SELECT job_id, state, tries, worker_id FROM jobs WHERE job_id = ANY($1)", job_ids)
    sentinel = Sentinel([(s.host, s.port) for s in ha.sentinels], socket_timeout=2)  # type: ignore[no-untyped-call]
    redis = sentinel.master_for(MASTER)
    try:
        found = []
        for row in rows:
            job_id = row["job_id"]
            found.append({
                **dict(row),
                "queued": await redis.zscore(keys.QUEUE, job_id),
                "job key": bool(await redis.exists(keys.ARQ_JOB + job_id)),
                "in progress": await redis.get(keys.ARQ_IN_PROGRESS + job_id),
                "in progress ttl": await redis.pttl(keys.ARQ_IN_PROGRESS + job_id),
                "result": bool(await redis.exists(keys.ARQ_RESULT + job_id)),
                "live workers": await redis.zrange(keys.WORKERS, 0, -1, withscores=True),
            })  # fmt: skip
        return found
    finally:
        await redis.aclose()


@pytest.mark.parametrize("ha", [{"REMINDER_EVERY_SECONDS": "10"}], indirect=True)
async def test_three_worker_hosts_one_cut_off_at_the_cron_boundary(ha: HACluster, figures: Figures) -> None:
    """d) Three worker hosts, one cut off just before a reminder cron run: every reminder is sent, once."""
    for name in ("w1", "w2", "w3"):
        ha.start_worker_on(name)
    async with await ha.client() as client:
        headers = await ha.sign_up(client, "due")
        due = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
        for n in range(30):
            created = await client.post("/tasks", headers=headers, json={"title": f"due-{n}", "due_at": due})
            assert created.status_code == 202
    await ha.settle()
    # Just before the next run (every 10 s: at :00, :10, ...), cut one host off for 30 s.
    await asyncio.sleep(10 - time.time() % 10 - 0.3)
    ha.hosts["w1"].cut()
    cut = time.monotonic()
    await asyncio.sleep(30)
    ha.hosts["w1"].reconnect()
    deadline = time.monotonic() + 120
    while len({m.subject for m in ha.mail.messages if m.subject.startswith("Reminder: due-")}) < 30:
        assert time.monotonic() < deadline, "reminders missing"
        await asyncio.sleep(0.5)
    all_sent = time.monotonic() - cut
    await asyncio.sleep(15)  # any late or second reminder would arrive by now
    reminders = Counter(m.subject for m in ha.mail.messages if m.subject.startswith("Reminder: due-"))
    figures["Hosts: three worker hosts, one cut off just before a reminder cron run"] = {
        "tasks due": 30,
        "reminders sent": len(reminders),
        "tasks reminded twice": sum(n > 1 for n in reminders.values()),
        "seconds from the cut until every reminder was sent": round(all_sent, 1),
    }
    assert len(reminders) == 30 and all(n == 1 for n in reminders.values())
