"""`make bench`: the service against baselines measured in the same run, on servers of its own.

Prints a table and writes it to docs/benchmarks.md. Not part of `make test`: figures are read, not
asserted, because the machine is shared and noisy; compare the ratios measured side by side.
"""

import asyncio
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa
from arq import create_pool
from arq.connections import RedisSettings
from databases import Database
from redis.asyncio import Redis

from jobs.progress import report_progress
from service.core.connections import open_redis
from service.core.dispatch import Dispatcher, record_job
from service.dev import migrate
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from service.dev.servers import ensure_database
from tests.bench import profile, timing

PROJECT = Path(__file__).resolve().parents[2]
REPORT = PROJECT / "docs" / "benchmarks.md"
RAW = Path(os.environ.get("BENCH_RAW", PROJECT / "docs" / "benchmarks.json"))  # the figures, for tests.bench.ranges
SECRET = "bench-secret-" + "b" * 40
PASSWORD = "bench password"
CONNECTIONS = (16, 64)  # wrk's concurrent connections: a few busy clients, and many
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
IDLE_SECONDS = int(os.environ.get("BENCH_IDLE_SECONDS", "60"))
JOBS = int(os.environ.get("BENCH_JOBS", "5000"))
SOAK = int(os.environ.get("BENCH_SOAK_SECONDS", "60"))
PICKUPS = 200
CELERY_VENV = PROJECT / ".venv-celery"
# The tutorial's stack; its own virtualenv, since Celery's Redis transport needs a redis-py arq does not support.
CELERY_REQUIREMENTS = ["fastapi>=0.115,<1", "celery[redis]>=5.4,<6", "uvicorn[standard]>=0.30", "pyjwt>=2.8,<3"]
PROGRESS_UPDATES = 200


@dataclass
class Figure:
    runs: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)

    def best(self) -> float:
        return max(self.runs)

    def ratios(self, baseline: "Figure") -> list[float]:
        """This figure over the baseline's, run by run (each pair measured one after the other)."""
        return [mine / theirs for mine, theirs in zip(self.runs, baseline.runs, strict=True)]

    def ratio(self, baseline: "Figure") -> str:
        """min-max of `ratios`."""
        ratios = self.ratios(baseline)
        low, high = min(ratios), max(ratios)
        return f"{high:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"

    def spread(self, unit: str = "") -> str:
        low, high = min(self.runs), max(self.runs)
        return (
            f"{high:,.0f}{unit}"
            if len(self.runs) == 1 or round(low) == round(high)
            else f"{low:,.0f}-{high:,.0f}{unit}"
        )


@dataclass
class Bench:
    base: Path
    postgres: EmbeddedPostgres = field(init=False)
    valkey: EmbeddedValkey = field(init=False)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, figure, latency, ratio
    notes: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # insert jobs/s, by worker, for the ratios
    cpu: dict[int, dict[str, float]] = field(default_factory=dict)  # see _ours_rate
    # The figures behind the rows, by name, each a list of values (one per turn or run), for
    # `python -m tests.bench.ranges`: ranges over several `make bench` runs.
    figures: dict[str, list[float]] = field(default_factory=dict)

    def record(self, name: str, *values: float) -> None:
        self.figures.setdefault(name, []).extend(values)

    @property
    def database_url(self) -> str:
        return sa.make_url(self.postgres.url).set(database="bench").render_as_string(hide_password=False)

    def env(self, **extra: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET")}
        return {
            **keep,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.valkey.url,
            "JWT_SECRET": SECRET,
            # The quota is checked on every job, as by default, at a limit the benchmark cannot reach.
            "ENQUEUE_QUOTA_PER_MINUTE": "1000000000",
            "ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE": "1000000000",
            "USER_JOBS_ACTIVE": "0",  # one user floods the queue, on purpose: no cap
            "LOGIN_ATTEMPTS_PER_IP": "100000",
            "ACCESS_LOG": "false",  # as behind a proxy that keeps its own; the README gives its cost
            "PYTHONPATH": str(PROJECT),
            **extra,
        }

    def start_servers(self) -> None:
        self.postgres = EmbeddedPostgres(self.base / "postgres")
        self.valkey = EmbeddedValkey(self.base / "valkey")
        self.postgres.start()
        self.valkey.start()
        asyncio.run(ensure_database(self.database_url))
        migrate.upgrade(self.database_url)
        asyncio.run(self.sql("CREATE TABLE IF NOT EXISTS bench_tasks (id bigserial PRIMARY KEY, title text)"))

    def stop_servers(self) -> None:
        self.valkey.stop()
        self.postgres.stop()

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def flush_redis(self) -> None:
        redis = Redis.from_url(self.valkey.url)
        await redis.flushdb()
        await redis.aclose()

    def process(self, argv: list[str], name: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("ab")
        extra = {"CELERY_BROKER_URL": self.valkey.url, **env}
        return subprocess.Popen(argv, cwd=PROJECT, env=self.env(**extra), stdout=log, stderr=log)

    def serve(
        self, app: str, name: str, *, factory: bool = False, python: str = sys.executable
    ) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        argv = [python, "-m", "uvicorn", *(["--factory"] if factory else []), app]
        argv += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        proc = self.process(argv, name)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz" if factory else f"{base}/const", timeout=1).status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; see {self.base / name}.log")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's CPU time so far (user + system), by pid, with its command name."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        found[int(stat.parent.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def cpu_split(before: dict[int, tuple[str, float]], seconds: float, workers: list[int]) -> dict[str, float]:
    """The share of the machine's cores each kind of process used since `before`, over `seconds`
    (the worker processes by pid, the rest by command name), the largest first."""
    shares: dict[str, float] = {}
    cores = os.cpu_count() or 1
    for pid, (name, used) in cpu_seconds().items():
        kind = "worker" if pid in workers else name
        shares[kind] = shares.get(kind, 0.0) + (used - before.get(pid, (name, 0.0))[1]) / seconds / cores
    return dict(sorted(((kind, share) for kind, share in shares.items() if share >= 0.005), key=lambda kv: -kv[1]))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


# HTTP, with wrk


def wrk(
    url: str,
    *,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    connections: int = 64,
    seconds: int = DURATION,
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 in milliseconds."""
    script = ["wrk.method = " + json.dumps(method)]
    if body is not None:
        script.append("wrk.body = " + json.dumps(body))
    for key, value in (headers or {}).items():
        script.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write("\n".join(script) + "\n")
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    os.unlink(lua.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error responses\n{out}")
    return rps, _ms(out, "50%"), _ms(out, "99%")


def _ms(out: str, quantile: str) -> float:
    value, unit = re.search(rf"{quantile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(run: Callable[[], tuple[float, float, float]]) -> Figure:
    return measure_together({"": run})[""]


def measure_together(runs: dict[str, Callable[[], tuple[float, float, float]]]) -> dict[str, Figure]:
    """Each run REPEATS times, in turns (a, b, c, a, b, c, ...): a ratio of two of them, run by run,
    compares figures measured seconds apart, on the same machine in the same state."""
    figures = {name: Figure() for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            rps, p50, p99 = run()
            figures[name].runs.append(rps)
            figures[name].p50.append(p50)
            figures[name].p99.append(p99)
    return figures


def latency(figure: Figure) -> str:
    low, high = min(figure.p99), max(figure.p99)
    p99 = f"{high:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"
    return f"p50 {min(figure.p50):.1f} ms, p99 {p99} ms"


def http_benchmarks(bench: Bench) -> None:
    service, ours = bench.serve("service.app:create_app", "api", factory=True)
    baseline, base = bench.serve("tests.bench.baseline_app:app", "baseline")
    try:
        auth = _login(ours)
        post = {**auth, "Content-Type": "application/json"}
        task = json.dumps({"title": "Benchmark the service", "priority": "high"})
        found = {}
        for c in CONNECTIONS:
            found[c] = measure_together({
                "const": lambda c=c: wrk(f"{base}/const", connections=c),
                "jwt": lambda c=c: wrk(f"{base}/jwt", headers=auth, connections=c),
                "arq": lambda c=c: wrk(f"{base}/enqueue", method="POST", body=task, headers=post, connections=c),
                "ours": lambda c=c: wrk(f"{ours}/tasks", method="POST", body=task, headers=post, connections=c),
            })  # fmt: skip
        api_rss = rss_mb(service.pid)
    finally:
        stop(service)
        stop(baseline)
    celery = celery_baseline(bench, task, post)
    for connections, figures in found.items():
        const, checked, raw_arq, tasks = figures["const"], figures["jwt"], figures["arq"], figures["ours"]
        at = f", {connections} connections"
        bench.record(f"http.c{connections}.starlette req/s", *const.runs)
        bench.record(f"http.c{connections}.jwt-only req/s", *checked.runs)
        bench.record(f"http.c{connections}.raw arq req/s", *raw_arq.runs)
        bench.record(f"http.c{connections}.POST /tasks req/s", *tasks.runs)
        bench.record(f"http.c{connections}.POST /tasks / raw arq", *tasks.ratios(raw_arq))
        bench.record(f"http.c{connections}.POST /tasks / jwt-only", *tasks.ratios(checked))
        bench.record(f"http.c{connections}.POST /tasks p99 ms", *tasks.p99)
        bench.record(f"http.c{connections}.raw arq p99 ms", *raw_arq.p99)
        bench.rows += [
            (f"Starlette, constant JSON (baseline){at}", const.spread(" req/s"), latency(const), "the machine's speed"),
            (f"Starlette, JWT check only (baseline){at}", checked.spread(" req/s"), latency(checked), ""),
            (f"Starlette + raw arq `enqueue_job` (baseline){at}", raw_arq.spread(" req/s"), latency(raw_arq), "1.00x"),
            (
                f"**ours: `POST /tasks`** (JWT, user, quota, validation, job row, enqueue, metrics){at}",
                tasks.spread(" req/s"),
                latency(tasks),
                f"{tasks.ratio(raw_arq)} raw arq, {tasks.ratio(checked)} JWT-only",
            ),
        ]
    if celery:
        bench.rows.append(
            (
                "FastAPI + Celery `.delay()`, as in the classic tutorial (baseline), 64 connections",
                celery.spread(" req/s"),
                latency(celery),
                f"ours: {found[64]['ours'].best() / celery.best():.1f}x (best runs)",
            ),
        )
    bench.notes.append(f"API process RSS after its load: {api_rss:.0f} MB.")
    if celery:
        bench.record("http.c64.POST /tasks / FastAPI+Celery (best runs)", found[64]["ours"].best() / celery.best())


def _login(base: str) -> dict[str, str]:
    user = {"email": "bench@example.com", "username": "bench", "password": PASSWORD}
    if httpx.post(f"{base}/auth/register", json=user).status_code not in (201, 409):
        raise RuntimeError("could not register the benchmark's user")
    token = httpx.post(f"{base}/auth/token", data={"username": "bench", "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def celery_python(bench: Bench) -> str | None:
    """The Python of the Celery baseline's virtualenv, made on first use; None if it cannot be made."""
    python, made = CELERY_VENV / "bin" / "python", CELERY_VENV / ".installed"
    if not made.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
            subprocess.run([python, "-m", "pip", "install", "--quiet", *CELERY_REQUIREMENTS], check=True)
        except subprocess.CalledProcessError:
            bench.notes.append("The FastAPI + Celery baseline could not be installed here: its row is missing.")
            return None
        made.touch()
    return str(python)


def celery_baseline(bench: Bench, task: str, post: dict[str, str]) -> Figure | None:
    python = celery_python(bench)
    if python is None:
        return None
    celery, base = bench.serve("tests.bench.celery_app:app", "celery-api", python=python)
    try:
        return measure(lambda: wrk(f"{base}/tasks", method="POST", body=task, headers=post))
    finally:
        stop(celery)
        asyncio.run(bench.flush_redis())


# Live progress over Server-Sent Events


async def _progress_delays(bench: Bench, base: str, auth: dict[str, str]) -> list[float]:
    """Seconds from a job's `report_progress` call (its row updated, the change published) to the
    event reaching a client following the job's SSE stream through the API."""
    async with Database(bench.database_url, min_size=1, max_size=2) as db:
        redis = open_redis(_settings(bench))
        owner = (await bench.sql("SELECT id FROM users WHERE username = 'bench'"))[0]["id"]
        job = await record_job(db, name="long_running_calculation", owner_id=owner, args={})
        ctx: Any = {"db": db, "redis": redis, "job_id": job.job_id}
        sent: dict[int, float] = {}
        delays: list[float] = []
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
            async with client.stream("GET", f"/jobs/{job.job_id}/events") as stream:

                async def follow() -> None:
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            progress = json.loads(line[6:])["progress"]
                            if progress and progress["current"] in sent:
                                delays.append(time.perf_counter() - sent[progress["current"]])
                                if len(delays) == PROGRESS_UPDATES:
                                    return

                follower = asyncio.create_task(follow())
                await asyncio.sleep(0.5)  # subscribed, first event (PENDING) read
                for step in range(1, PROGRESS_UPDATES + 1):
                    sent[step] = time.perf_counter()
                    await report_progress(ctx, step, PROGRESS_UPDATES + 1)
                    await asyncio.sleep(0.02)
                await asyncio.wait_for(follower, 10)
        await redis.aclose()
    return delays


def sse_latency(bench: Bench) -> None:
    service, base = bench.serve("service.app:create_app", "api-sse", factory=True)
    try:
        delays = asyncio.run(_progress_delays(bench, base, _login(base)))
    finally:
        stop(service)
    bench.record("sse.p50 ms", percentile(delays, 0.5) * 1000)
    bench.record("sse.p99 ms", percentile(delays, 0.99) * 1000)
    bench.rows.append(
        (
            f"**ours: live progress**, {len(delays)} updates to an SSE client (row update, publish, relay)",
            "",
            f"{quantiles(delays)}, max {max(delays) * 1000:.1f} ms",
            "",
        )
    )


# Memory under sustained load


def soak(bench: Bench) -> None:
    """POST /tasks and the worker under load for SOAK seconds; RSS sampled every few seconds."""
    asyncio.run(bench.flush_redis())
    service, base = bench.serve("service.app:create_app", "api-soak", factory=True)
    worker = bench.process([sys.executable, "-m", "jobs"], "worker-soak")
    post = {**_login(base), "Content-Type": "application/json"}
    task = json.dumps({"title": "Soak the service", "priority": "low"})
    chunk = 5
    samples: list[tuple[float, float]] = []
    try:
        for _ in range(max(1, SOAK // chunk)):
            wrk(f"{base}/tasks", method="POST", body=task, headers=post, connections=16, seconds=chunk)
            samples.append((rss_mb(service.pid), rss_mb(worker.pid)))
    finally:
        stop(worker)
        stop(service)
    api, work = [sample[0] for sample in samples], [sample[1] for sample in samples]
    settled = len(samples) // 4  # after the first quarter: pools and caches filled
    bench.record("soak.API MB growth after the first quarter", api[-1] - api[settled])
    bench.record("soak.worker MB growth after the first quarter", work[-1] - work[settled])
    bench.record("soak.API MB", max(api))
    bench.record("soak.worker MB", max(work))
    bench.notes.append(
        f"Memory over a {SOAK} s soak (POST /tasks at 16 connections, the worker taking the jobs), RSS sampled "
        f"every {chunk} s: API {api[0]:.0f} -> {api[-1]:.0f} MB (max {max(api):.0f}; "
        f"{api[-1] - api[settled]:+.1f} MB after the first quarter), worker {work[0]:.0f} -> {work[-1]:.0f} MB "
        f"(max {max(work):.0f}; {work[-1] - work[settled]:+.1f} MB after the first quarter)."
    )


# Workers


async def _submit_ours(bench: Bench, count: int, *, spacing: float = 0.0) -> None:
    async with Database(bench.database_url, min_size=1, max_size=20) as db:
        owner = await _job_owner(bench)
        pool = open_redis(_settings(bench))
        dispatcher = Dispatcher(db, pool)
        try:
            if spacing:
                for n in range(count):
                    await _one(dispatcher, owner, n)
                    await asyncio.sleep(spacing)
            else:
                for start in range(0, count, 200):
                    await asyncio.gather(*(_one(dispatcher, owner, n) for n in range(start, min(count, start + 200))))
        finally:
            await pool.aclose()


async def _job_owner(bench: Bench) -> int:
    """A user to own the queued jobs: the HTTP part's, or one made here when that part did not run."""
    found = await bench.sql("SELECT id FROM users ORDER BY id LIMIT 1")
    if found:
        return int(found[0]["id"])
    made = await bench.sql(
        "INSERT INTO users (email, username, hashed_password) VALUES ('jobs@example.com', 'jobs', '!') RETURNING id"
    )
    return int(made[0]["id"])


def _settings(bench: Bench) -> Any:
    from service.core.settings import Settings

    return Settings(database_url=bench.database_url, redis_url=bench.valkey.url, jwt_secret=SECRET)


async def _one(dispatcher: Dispatcher, owner: int, n: int) -> None:
    args = {"owner_id": owner, "title": f"bench {n}", "description": None, "due_at": None, "priority": "normal"}
    await dispatcher.submit(name="process_new_task", owner_id=owner, args=args)


async def _ours_window(bench: Bench, count: int) -> tuple[float, list[float]]:
    """Jobs per second between the first start and the last finish; each job's pickup delay (s)."""
    rows = await bench.sql(
        "SELECT started_at, finished_at, enqueued_at FROM jobs WHERE name = 'process_new_task' AND state = 'SUCCESS'"
        " ORDER BY enqueued_at DESC LIMIT $1",
        count,
    )
    first = min(row["started_at"] for row in rows)
    last = max(row["finished_at"] for row in rows)
    pickups = [(row["started_at"] - row["enqueued_at"]).total_seconds() for row in rows]
    return len(rows) / (last - first).total_seconds(), pickups


async def _wait_done(bench: Bench, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await bench.sql("SELECT count(*) AS n FROM jobs WHERE name = 'process_new_task' AND state = 'SUCCESS'")
        if done[0]["n"] >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("our worker did not finish the jobs in time")


def _ours_rate(bench: Bench, processes: int) -> tuple[float, float]:
    """JOBS queued beforehand, then taken by this many worker processes: jobs/s, and the first one's RSS.
    Where the machine's CPU went meanwhile is kept in bench.cpu, by the number of processes."""
    asyncio.run(bench.sql("DELETE FROM jobs WHERE name = 'process_new_task'"))
    asyncio.run(bench.flush_redis())
    asyncio.run(_submit_ours(bench, JOBS))
    before, started = cpu_seconds(), time.monotonic()
    workers = [bench.process([sys.executable, "-m", "jobs"], f"worker-{n}") for n in range(processes)]
    try:
        asyncio.run(_wait_done(bench, JOBS))
        bench.cpu[processes] = cpu_split(before, time.monotonic() - started, [worker.pid for worker in workers])
        rate, _ = asyncio.run(_ours_window(bench, JOBS))
        return rate, rss_mb(workers[0].pid)
    finally:
        for worker in workers:
            stop(worker)


def ours_worker(bench: Bench) -> None:
    runs = [_ours_rate(bench, 1) for _ in range(REPEATS)]
    rates = [rate for rate, _ in runs]
    bench.rates["ours"] = max(rates)
    two = max(_ours_rate(bench, 2)[0] for _ in range(2))
    asyncio.run(bench.sql("DELETE FROM jobs WHERE name = 'process_new_task'"))
    asyncio.run(bench.flush_redis())
    worker = bench.process([sys.executable, "-m", "jobs"], "worker-idle")
    try:
        idle, idle_by_command = asyncio.run(_idle_commands(bench, IDLE_SECONDS))
        asyncio.run(_submit_ours(bench, PICKUPS, spacing=0.02))
        asyncio.run(_wait_done(bench, PICKUPS))
        _, pickups = asyncio.run(_ours_window(bench, PICKUPS))
    finally:
        stop(worker)
    bench.record("worker.ours jobs/s", *rates)
    bench.record("worker.two processes / one (best runs)", two / max(rates))
    bench.record("worker.idle Redis commands/s", idle)
    bench.record("worker.pickup p50 ms", percentile(pickups, 0.5) * 1000)
    bench.record("worker.pickup p99 ms", percentile(pickups, 0.99) * 1000)
    bench.rows.append(
        (
            "**ours: `process_new_task`**, 1 worker process (insert + job history + events + metrics)",
            Figure(runs=rates).spread(" jobs/s"),
            _pickup(pickups),
            f"{idle:.1f} Redis commands/s idle (over {IDLE_SECONDS} s)",
        )
    )
    bench.rows.append(
        (
            "**ours: `process_new_task`**, 2 worker processes",
            f"{two:,.0f} jobs/s",
            "",
            f"{two / max(rates):.2f}x one process (best runs)",
        )
    )
    bench.notes.append(f"Worker RSS after {JOBS:,} jobs: {max(rss for _, rss in runs):.0f} MB.")
    for processes, shares in sorted(bench.cpu.items()):
        split = ", ".join(f"{kind} {share:.0%}" for kind, share in list(shares.items())[:6])
        bench.notes.append(f"The machine's two cores while {processes} worker process(es) took the jobs: {split}.")
    commands = ", ".join(f"{name} {rate:.2f}" for name, rate in list(idle_by_command.items())[:8])
    bench.notes.append(f"Idle worker's Redis commands per second, the most frequent first: {commands}.")


async def _idle_commands(bench: Bench, seconds: float = 10.0) -> tuple[float, dict[str, float]]:
    """Redis commands per second while the worker has nothing to do (after a few seconds' rest), in
    all and by command (the largest first), from the server's own counts."""
    redis = Redis.from_url(bench.valkey.url)
    await asyncio.sleep(3)
    before = await redis.info("commandstats")
    await asyncio.sleep(seconds)
    after = await redis.info("commandstats")
    await redis.aclose()
    calls = {
        name.removeprefix("cmdstat_"): (stats["calls"] - before.get(name, {}).get("calls", 0)) / seconds
        for name, stats in after.items()
        if name != "cmdstat_info"  # our two INFO commands
    }
    by_command = dict(sorted(((name, rate) for name, rate in calls.items() if rate), key=lambda kv: -kv[1]))
    return sum(by_command.values()), by_command


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (the median for q = 0.5): right for small samples too."""
    ordered = sorted(values)
    return statistics.median(ordered) if q == 0.5 else ordered[math.ceil(len(ordered) * q) - 1]


def quantiles(seconds: list[float]) -> str:
    """p50 and p99 of durations, in milliseconds."""
    return f"p50 {percentile(seconds, 0.5) * 1000:.1f} ms, p99 {percentile(seconds, 0.99) * 1000:.1f} ms"


def _pickup(seconds: list[float]) -> str:
    return f"pickup {quantiles(seconds)}"


async def _enqueue_baseline(bench: Bench, kind: str, function: str, count: int, spacing: float = 0.0) -> None:
    async def one(n: int) -> None:
        if kind == "saq":
            await saq_queue.enqueue(function, title=f"bench {n}")
        else:
            await arq_pool.enqueue_job(function, f"bench {n}")

    if kind == "saq":
        from saq import Queue

        saq_queue = Queue.from_url(bench.valkey.url)
        await saq_queue.connect()
    else:
        arq_pool = await create_pool(RedisSettings.from_dsn(bench.valkey.url))
    try:
        if spacing:
            for n in range(count):
                await one(n)
                await asyncio.sleep(spacing)
        else:
            for start in range(0, count, 500):
                await asyncio.gather(*(one(n) for n in range(start, min(count, start + 500))))
    finally:
        await (saq_queue.disconnect() if kind == "saq" else arq_pool.aclose())


def baseline_worker(bench: Bench, kind: str, function: str, *, pickups: bool = False) -> dict[str, Any]:
    asyncio.run(bench.flush_redis())
    count = PICKUPS if pickups else JOBS
    if not pickups:
        asyncio.run(_enqueue_baseline(bench, kind, function, count))
    log = (bench.base / f"{kind}-{function}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.workers", kind, str(count)],
        cwd=PROJECT, env=bench.env(), stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    if pickups:
        time.sleep(2)  # idle, as a worker waiting for work
        asyncio.run(_enqueue_baseline(bench, kind, function, count, spacing=0.02))
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed; see {log.name}")
    return json.loads(out.decode().strip().splitlines()[-1])


def baseline_workers(bench: Bench) -> None:
    for kind, label in (
        ("arq-default", "arq, defaults (max_jobs 10, poll 0.5 s)"),
        ("arq-tuned", "arq, tuned (max_jobs 100, poll 0.01 s)"),
        ("saq", "SAQ (blocking dequeue, concurrency 100, max_concurrent_ops 100)"),
    ):
        if kind == "saq" and not _saq_installed():
            bench.notes.append("SAQ is not installed beside arq here: its rows are missing.")
            continue
        rates: dict[str, list[float]] = {"noop": [], "insert": []}
        for _ in range(REPEATS):
            for function in ("noop", "insert"):
                result = baseline_worker(bench, kind, function)
                rates[function].append(result["done"] / (result["last_finish"] - result["first_start"]))
        bench.rates[kind] = max(rates["insert"])
        pickups = baseline_worker(bench, kind, "noop", pickups=True)["pickups"]
        bench.record(f"worker.{kind} insert jobs/s", *rates["insert"])
        bench.record(f"worker.{kind} pickup p50 ms", percentile(pickups, 0.5) * 1000)
        bench.record(f"worker.{kind} pickup p99 ms", percentile(pickups, 0.99) * 1000)
        if "ours" in bench.rates:
            bench.record(f"worker.ours / {kind} insert jobs/s (best runs)", bench.rates["ours"] / bench.rates[kind])
        mine = bench.rates.get("ours")
        bench.rows.append(
            (
                f"{label} (baseline)",
                f"{Figure(runs=rates['noop']).spread()} noop, {Figure(runs=rates['insert']).spread()} insert jobs/s",
                _pickup(pickups),
                f"ours: {mine / bench.rates[kind]:.2f}x its insert jobs/s (best runs)" if mine else "",
            )
        )


def keeping_time(bench: Bench) -> None:
    """Lateness with no wake-up message: our worker against arq's own, polling every 50 ms."""
    found = {}
    for kind in ("arq", "ours"):
        asyncio.run(bench.flush_redis())
        proc = bench.process([sys.executable, "-m", "tests.bench.timing", kind], f"timing-{kind}")
        try:
            time.sleep(2)
            found[kind] = asyncio.run(timing.measure(bench.valkey.url))
        finally:
            stop(proc)
    for event, ours in found["ours"].items():
        arq = found["arq"][event]
        baseline = f"arq, poll 0.05 s: {quantiles(arq)}"
        for who, lateness in (("ours", ours), ("arq", arq)):
            bench.record(f"timing.{event}.{who} p50 ms", percentile(lateness, 0.5) * 1000)
            bench.record(f"timing.{event}.{who} p99 ms", percentile(lateness, 0.99) * 1000)
        bench.rows.append((f"keeping time: {event}", "", f"ours: {quantiles(ours)}", baseline))


def profiles(bench: Bench) -> None:
    """Where the CPU goes: py-spy on the API under POST /tasks, and on a worker taking JOBS jobs."""
    asyncio.run(bench.flush_redis())
    service, ours = bench.serve("service.app:create_app", "api-profile", factory=True)
    api_samples = bench.base / "api.profile.txt"
    try:
        post = {**_login(ours), "Content-Type": "application/json"}
        task = json.dumps({"title": "Profile the service", "priority": "high"})
        recorder = profile.record(service.pid, DURATION, api_samples)
        wrk(f"{ours}/tasks", method="POST", body=task, headers=post, connections=64, seconds=DURATION)
        recorder.wait(60)
    finally:
        stop(service)
    asyncio.run(bench.sql("DELETE FROM jobs WHERE name = 'process_new_task'"))
    asyncio.run(bench.flush_redis())
    asyncio.run(_submit_ours(bench, JOBS))
    worker = bench.process([sys.executable, "-m", "jobs"], "worker-profile")
    worker_samples = bench.base / "worker.profile.txt"
    try:
        time.sleep(1)  # started, taking jobs
        profile.record(worker.pid, 4, worker_samples).wait(60)
        asyncio.run(_wait_done(bench, JOBS))
    finally:
        stop(worker)
    bench.notes.append(f"Profile of the API under `POST /tasks` (64 connections): {profile.summary(api_samples)}.")
    bench.notes.append(f"Profile of a worker taking `process_new_task` jobs: {profile.summary(worker_samples)}.")


def _saq_installed() -> bool:
    return subprocess.run([sys.executable, "-c", "import saq"], capture_output=True).returncode == 0


def render(bench: Bench) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"`make bench`, {time.strftime('%Y-%m-%d')}, on {os.cpu_count()} cores shared by the load generator (wrk, "
        f"{DURATION} s x {REPEATS} runs at each number of connections, in turns with the baselines), the server, "
        "PostgreSQL and Valkey. One uvicorn process, one worker process unless said. Ranges are min-max over the "
        "runs; a ratio range compares each run with the baseline's run just before it.",
        "",
        "| what | throughput | latency | ratio / note |",
        "|---|---|---|---|",
        *(f"| {what} | {figure} | {lat} | {ratio} |" for what, figure, lat, ratio in bench.rows),
        "",
        *(f"- {note}" for note in bench.notes),
        "",
    ]
    return "\n".join(lines)


BENCHMARKS: dict[str, Callable[[Bench], None]] = {
    "http": http_benchmarks,
    "sse": sse_latency,
    "worker": ours_worker,
    "baselines": baseline_workers,
    "timing": keeping_time,
    "soak": soak,
    "profile": profiles,
}
# BENCH_PARTS=timing,worker make bench: only those parts (all by default), to measure one change quickly.
PARTS = [part for part in os.environ.get("BENCH_PARTS", ",".join(BENCHMARKS)).split(",") if part]


def main() -> None:
    if unknown := set(PARTS) - set(BENCHMARKS):
        sys.exit(f"BENCH_PARTS: unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: `make bench` installs Debian's package when run as root, or install it yourself.")
    base = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(base)
    bench.start_servers()
    try:
        for part in PARTS:
            BENCHMARKS[part](bench)
    finally:
        bench.stop_servers()
    REPORT.write_text(render(bench))
    RAW.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "figures": bench.figures}, indent=1) + "\n")
    print(render(bench))


if __name__ == "__main__":
    main()
