"""Crashes, outages and floods, with the figures they produce."""

import asyncio
import signal
import statistics
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import Cluster, Load
from tests.processes import frozen

pytestmark = pytest.mark.timeout(600)

Figures = dict[str, dict[str, Any]]


async def _worker_pids_to_ids(cluster: Cluster) -> dict[int, str]:
    from redis.asyncio import Redis

    redis = Redis.from_url(cluster.valkey.url)
    try:
        ids = await redis.zrange("tm:workers", 0, -1)
        found = {}
        for worker_id in ids:
            pid = await redis.hget(b"tm:worker:" + worker_id, "pid")
            if pid:
                found[int(pid)] = worker_id.decode()
        return found
    finally:
        await redis.aclose()


async def test_worker_sigkilled_five_times(cluster: Cluster, figures: Figures) -> None:
    fast = [cluster.start_worker(), cluster.start_worker()]
    cluster.start_worker(slow=True)
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "kills")
        load = Load()
        titles = [f"kill-{n}" for n in range(2000)]
        creating = asyncio.create_task(cluster.create_tasks(client, headers, titles, load))
        lags: list[float] = []
        orphaned: list[int] = []
        for _ in range(5):
            await asyncio.sleep(1.5)
            victim = fast[0]
            worker_id = (await _worker_pids_to_ids(cluster)).get(victim.process.pid)
            victim.process.kill()
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.wait_group_gone, 10)
            orphans = [
                row["job_id"]
                for row in await cluster.sql(
                    "SELECT job_id FROM jobs WHERE worker_id = $1 AND state IN ('STARTED', 'PROGRESS')", worker_id
                )
            ]
            fast[0] = cluster.start_worker()
            orphaned.append(len(orphans))
            lags.append(await _recovered(cluster, orphans, killed_at))
        await creating
    await cluster.settle()
    outcome = await cluster.outcome(load, "kill-")
    figures["A worker SIGKILLed 5 times during 2,000 tasks"] = {
        **outcome,
        "jobs running on the killed worker, per kill": orphaned,
        "seconds from kill until those were done, per kill": [round(lag, 1) for lag in lags],
    }
    assert outcome["accepted"] == 2000
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert outcome["done"] == 2000


async def _recovered(cluster: Cluster, orphans: list[str], since: float) -> float:
    """Seconds from the kill until every job the killed worker held has finished elsewhere."""
    while orphans:
        rows = await cluster.sql(
            "SELECT count(*) AS n FROM jobs WHERE job_id = ANY($1) AND finished_at IS NULL", orphans
        )
        if rows[0]["n"] == 0:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - since


async def test_redis_killed_and_restarted_empty_twice(cluster: Cluster, figures: Figures) -> None:
    for _ in range(2):
        cluster.start_worker()
    cluster.start_worker(slow=True)
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "flushes")
        load = Load()
        creating = asyncio.create_task(cluster.create_tasks(client, headers, [f"redis-{n}" for n in range(1000)], load))
        for _ in range(2):
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.restart_valkey_empty)
        await creating
    await cluster.settle()
    outcome = await cluster.outcome(load, "redis-")
    figures["Redis SIGKILLed and restarted empty twice during 1,000 tasks"] = {
        **outcome,
        "responses seen": dict(sorted(load.statuses.items())),
        "connection errors": load.connection_errors,
    }
    assert set(load.statuses) <= {202, 503}
    assert outcome["accepted"] == 1000
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)


async def test_postgres_stopped_for_twenty_seconds(cluster: Cluster, figures: Figures) -> None:
    cluster.start_worker()
    cluster.start_worker(slow=True)
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "outage")
        load = Load()
        await cluster.create_tasks(client, headers, [f"pg-before-{n}" for n in range(300)], load)
        await asyncio.to_thread(cluster.postgres.stop)
        down_at = time.monotonic()
        latencies: list[float] = []
        statuses: list[int] = []
        while time.monotonic() - down_at < 20:
            started = time.monotonic()
            response = await client.post("/tasks", headers={**headers, "Idempotency-Key": "x"}, json={"title": "x"})
            latencies.append(time.monotonic() - started)
            statuses.append(response.status_code)
            await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.postgres.start)
        await cluster.create_tasks(client, headers, [f"pg-after-{n}" for n in range(300)], load)
    await cluster.settle()
    outcome = await cluster.outcome(load, "pg-")
    figures["PostgreSQL stopped for 20 s"] = {
        **outcome,
        "API answers while down": dict(Counter(statuses)),
        "slowest answer while down (ms)": round(max(latencies) * 1000),
        "median answer while down (ms)": round(statistics.median(latencies) * 1000),
    }
    assert set(statuses) == {503}
    assert max(latencies) < 1.0
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert outcome["done"] == 600


async def test_smtp_down_for_thirty_seconds(cluster: Cluster, figures: Figures) -> None:
    cluster.start_worker()
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "mailer")
        load = Load()
        await cluster.create_tasks(client, headers, [f"mail-{n}" for n in range(50)], load)
        await cluster.settle()
        ids = [row["id"] for row in await cluster.sql("SELECT id FROM tasks ORDER BY id")]
        await cluster.mail.stop()
        down_at = time.monotonic()
        for task_id in ids:
            assert (await client.post(f"/tasks/{task_id}/remind", headers=headers)).status_code == 202
        await asyncio.sleep(30 - (time.monotonic() - down_at))
        retrying = await cluster.sql(
            "SELECT count(*) AS n FROM jobs WHERE name = 'send_task_reminder_email' AND state = 'RETRY'"
        )
        await cluster.mail.start()
        await cluster.settle()
    reminders = [mail for mail in cluster.mail.messages if mail.subject.startswith("Reminder: mail-")]
    per_task = Counter(mail.subject for mail in reminders)
    figures["SMTP server down for 30 s"] = {
        "reminders requested": len(ids),
        "waiting to retry when it came back": retrying[0]["n"],
        "delivered": len(reminders),
        "delivered twice": sum(1 for n in per_task.values() if n > 1),
        "failed jobs": (await cluster.sql("SELECT count(*) AS n FROM jobs WHERE state = 'FAILURE'"))[0]["n"],
    }
    assert retrying[0]["n"] > 0
    assert len(reminders) == len(ids) == 50
    assert all(n == 1 for n in per_task.values())


@pytest.mark.parametrize("cluster", [{"REMINDER_EVERY_SECONDS": "5"}], indirect=True)
async def test_two_workers_three_cron_ticks_one_reminder_each(cluster: Cluster, figures: Figures) -> None:
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "due")
        due = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
        for n in range(20):
            await client.post("/tasks", headers=headers, json={"title": f"due-{n}", "due_at": due})
    cluster.start_worker()
    cluster.start_worker()
    await asyncio.sleep(16)  # at least three ticks of a cron running every 5 s, on two workers
    await cluster.settle()
    runs = await cluster.sql("SELECT count(*) AS n FROM jobs WHERE name = 'send_due_reminders' AND state = 'SUCCESS'")
    reminders = [mail for mail in cluster.mail.messages if mail.subject.startswith("Reminder: due-")]
    figures["Two workers, reminder cron every 5 s"] = {
        "tasks due": 20,
        "cron runs": runs[0]["n"],
        "reminders sent": len(reminders),
        "tasks reminded twice": 20 - len({mail.subject for mail in reminders}) if len(reminders) >= 20 else 0,
    }
    assert runs[0]["n"] >= 3
    assert sorted(mail.subject for mail in reminders) == sorted(f"Reminder: due-{n}" for n in range(20))


@pytest.mark.parametrize(
    "cluster", [{"LOGIN_FAILURES_PER_ACCOUNT": "10", "LOGIN_ATTEMPTS_PER_IP": "30"}], indirect=True
)
async def test_login_brute_force(cluster: Cluster, figures: Figures) -> None:
    async with await cluster.client() as client:
        await cluster.sign_up(client, "target")
        health: list[float] = []
        stop = threading.Event()

        def probe() -> None:  # in a thread of its own: the guesses' client does not delay the measure
            with httpx.Client(base_url=cluster.base_url) as prober:
                while not stop.is_set():
                    started = time.monotonic()
                    prober.get("/healthz")
                    health.append(time.monotonic() - started)
                    stop.wait(0.01)

        prober = asyncio.create_task(asyncio.to_thread(probe))
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(client.post("/auth/token", data={"username": "target", "password": f"guess {n}"}) for n in range(200))
        )
        took = time.monotonic() - started
        stop.set()
        await prober
    statuses = Counter(response.status_code for response in outcomes)
    quantiles = statistics.quantiles(health, n=100)
    figures["Login brute force: 200 guesses at one account from one address"] = {
        "answers": dict(statuses),
        "password checks made (401)": statuses.get(401, 0),
        "refused without hashing (429)": statuses.get(429, 0),
        "guesses took (s)": round(took, 2),
        "/healthz p50 / p99 meanwhile (ms)": f"{quantiles[49] * 1000:.1f} / {quantiles[98] * 1000:.1f}",
    }
    assert statuses.get(401, 0) <= 10
    assert statuses.get(429, 0) >= 190
    assert quantiles[98] < 0.5


class Probe:
    """/healthz and /readyz asked every 100 ms: the slowest answer of each, and what /readyz said. In a
    thread of its own, so that the load this process generates does not delay its own measure."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.slowest = {"/healthz": 0.0, "/readyz": 0.0}
        self.readyz: Counter[str] = Counter()
        self._stop = threading.Event()

    async def run(self) -> None:
        await asyncio.to_thread(self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                for path in self.slowest:
                    started = time.monotonic()
                    response = client.get(path)
                    self.slowest[path] = max(self.slowest[path], time.monotonic() - started)
                    if path == "/readyz":
                        self.readyz[response.json().get("detail", "ok")] += 1
                self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()


async def test_frozen_valkey_then_frozen_postgres(cluster: Cluster, figures: Figures) -> None:
    """SIGSTOP Valkey for 15 s, then PostgreSQL for 10 s, while clients submit tasks throughout."""
    cluster.start_worker()
    cluster.start_worker(slow=True)
    assert cluster.postgres.process is not None and cluster.valkey.process is not None
    async with await cluster.client() as client:
        headers = await cluster.sign_up(client, "frozen")
        load = Load()
        probe = Probe(cluster.base_url)
        probing = asyncio.create_task(probe.run())
        done = asyncio.Event()

        async def submit_until_done() -> None:
            sent = 0
            while not done.is_set():
                batch = [f"frozen-{sent + n}" for n in range(40)]
                sent += len(batch)
                await cluster.create_tasks(client, headers, batch, load, concurrency=8)
                await asyncio.sleep(0.5)

        creating = asyncio.create_task(submit_until_done())
        await asyncio.sleep(3)
        with frozen(cluster.valkey.process.pid):
            await asyncio.sleep(15)
        await asyncio.sleep(5)
        with frozen(cluster.postgres.process.pid):
            await asyncio.sleep(10)
        await asyncio.sleep(5)
        done.set()
        await creating
        probe.stop()
        await probing
    await cluster.settle()
    outcome = await cluster.outcome(load, "frozen-")
    tries = await cluster.sql("SELECT max(tries) AS most, count(*) FILTER (WHERE tries > 1) AS n FROM jobs")
    figures["Valkey frozen (SIGSTOP) for 15 s, then PostgreSQL for 10 s, while clients submit tasks"] = {
        **outcome,
        "responses seen": dict(sorted(load.statuses.items())),
        "connection errors": load.connection_errors,
        "slowest answer to POST /tasks (ms)": round(load.slowest * 1000),
        "slowest /healthz (ms)": round(probe.slowest["/healthz"] * 1000),
        "slowest /readyz (ms)": round(probe.slowest["/readyz"] * 1000),
        "what /readyz said": dict(probe.readyz),
        "jobs run more than once / most tries": f"{tries[0]['n']} / {tries[0]['most']}",
    }
    assert outcome["accepted"] == outcome["attempted"]
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
    assert load.connection_errors == 0
    assert load.slowest < 3.0
    assert probe.slowest["/healthz"] < 0.1
    assert any("redis" in said for said in probe.readyz) and any("database" in said for said in probe.readyz)
    assert tries[0]["most"] == 1  # an outage of our own servers uses up no job's tries


async def test_redis_loses_the_payloads_of_jobs_paused_workers_had_claimed(cluster: Cluster, figures: Figures) -> None:
    """Workers paused (SIGSTOP) with a backlog; Redis loses the jobs' payloads but not the queue; the
    workers resume, claim every job and find nothing to read: arq records each as "job expired".
    Deterministic: every job meets the fault. Then a plain FLUSHDB while they work through a second backlog."""
    from redis.asyncio import Redis

    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.start_worker(slow=True)
    async with await cluster.client() as client, Redis.from_url(cluster.valkey.url) as redis:
        headers = await cluster.sign_up(client, "expired")
        await asyncio.sleep(1)  # the welcome email is out of the way
        load = Load()
        for worker in workers:
            worker.signal_group(signal.SIGSTOP)
        await cluster.create_tasks(client, headers, [f"expired-{n}" for n in range(300)], load)
        payloads = [key async for key in redis.scan_iter(match="arq:job:*")]
        await redis.delete(*payloads)
        for worker in workers:
            worker.signal_group(signal.SIGCONT)
        await asyncio.sleep(2)
        expired = len([key async for key in redis.scan_iter(match="arq:result:*")])
        await cluster.settle()  # the reconciler meets arq's verdicts before anything else happens
        for worker in workers:
            worker.signal_group(signal.SIGSTOP)
        await cluster.create_tasks(client, headers, [f"expired-flush-{n}" for n in range(300)], load)
        for worker in workers:
            worker.signal_group(signal.SIGCONT)
        await asyncio.sleep(0.05)
        await redis.flushdb()
    await cluster.settle()
    outcome = await cluster.outcome(load, "expired-")
    figures["Redis loses the payloads of 300 jobs paused workers then claim; then FLUSHDB under 300 more"] = {
        **outcome,
        "jobs arq recorded as expired (or otherwise finished) before the reconciler ran": expired,
        "responses seen": dict(sorted(load.statuses.items())),
        "slowest answer to POST /tasks (ms)": round(load.slowest * 1000),
    }
    assert expired > 0  # the fault did happen
    assert outcome["accepted"] == 600
    assert (outcome["lost"], outcome["duplicated"], outcome["failed_jobs"]) == (0, 0, 0)
