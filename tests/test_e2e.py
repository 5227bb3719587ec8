"""End to end: uvicorn and `arq jobs.worker.WorkerSettings` as real processes, driven over HTTP."""

import asyncio
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.constants import health_check_key_suffix
from redis.asyncio import Redis

from service.core import keys
from service.core.settings import Settings
from service.dev.embedded import EmbeddedValkey
from tests.conftest import PASSWORD, TEST_SECRET, Deployment, MailBox
from tests.processes import clean_env, python, start, stopped_at_exit

pytestmark = pytest.mark.e2e


async def _until(client: httpx.AsyncClient, url: str, headers: dict[str, str], state: str) -> dict[str, Any]:
    for _ in range(300):
        body: dict[str, Any] = (await client.get(url, headers=headers)).json()
        if body["state"] == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never reached {state}: {body}")


async def test_register_create_task_remind_over_real_processes(deployment: Deployment, mail: MailBox) -> None:
    async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10) as client:
        user = {"email": "erin@example.com", "username": "erin", "password": PASSWORD}
        assert (await client.post("/auth/register", json=user)).status_code == 201
        token = (await client.post("/auth/token", data={"username": "erin", "password": PASSWORD})).json()
        headers = {"Authorization": f"Bearer {token['access_token']}", "X-Request-ID": "e2e-request-1"}

        created = await client.post("/tasks", headers=headers, json={"title": "Renew passport"})
        assert created.status_code == 202
        done = await _until(client, created.headers["location"], headers, "SUCCESS")
        task_id = done["result"]["task_id"]
        assert (await client.get(f"/tasks/{task_id}", headers=headers)).json()["title"] == "Renew passport"

        # Reminders go to verified addresses only: follow the link in the welcome email, as erin would.
        assert (await client.post(f"/tasks/{task_id}/remind", headers=headers)).status_code == 403
        link = await _link_in_welcome(mail, "erin@example.com")
        verified = await client.get(link.removeprefix(deployment.base_url))
        assert verified.status_code == 200 and verified.json()["email_verified_at"] is not None
        remind = await client.post(f"/tasks/{task_id}/remind", headers=headers)
        await _until(client, remind.json()["status_url"], headers, "SUCCESS")

    subjects = sorted(m.subject for m in mail.to("erin@example.com"))
    assert subjects == ["Reminder: Renew passport", "Welcome to Task Manager, erin!"]
    reminder = next(m for m in mail.to("erin@example.com") if m.subject.startswith("Reminder"))
    assert 'your task "Renew passport"' in reminder.body


async def _link_in_welcome(mail: MailBox, address: str) -> str:
    for _ in range(200):
        for message in mail.to(address):
            if match := re.search(r"(https?://[^/\s]+/auth/verify-email\?token=[\w.-]+)", message.body):
                return match.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no verification link mailed to {address}")


async def test_arq_check_reports_the_worker_health(deployment: Deployment) -> None:
    def check() -> int:
        arq = python("-m", "arq", "jobs.worker.WorkerSettings", "--check")
        return subprocess.run(arq, env=deployment.env, capture_output=True, timeout=30).returncode

    for _ in range(100):  # the worker records its health right after it starts
        if await asyncio.to_thread(check) == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("arq --check never passed against a running worker")
    deployment.worker.signal_group(signal.SIGTERM)
    await asyncio.to_thread(deployment.worker.wait_group_gone, 15)
    assert await asyncio.to_thread(check) == 1  # a stopped worker removes its health key


async def _signed_up(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


async def test_request_id_follows_the_job_into_the_worker_log(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers = {**await _signed_up(client, "rita"), "X-Request-ID": "trace-4f2a9c"}
        created = await client.post("/tasks", headers=headers, json={"title": "Traced"})
        assert created.headers["x-request-id"] == "trace-4f2a9c"
        await _until(client, created.headers["location"], headers, "SUCCESS")

    api_lines = [line for line in deployment.api.output().splitlines() if "[trace-4f2a9c]" in line]
    assert any("POST /tasks 202" in line for line in api_lines), deployment.api.output()
    worker_lines = [line for line in deployment.worker.output().splitlines() if "[trace-4f2a9c]" in line]
    assert any("job started" in line and "job=process_new_task" in line for line in worker_lines), worker_lines
    assert any("job succeeded" in line and "duration_ms=" in line for line in worker_lines), worker_lines


async def _sigterm_mid_calculation(
    deployment: Deployment, client: httpx.AsyncClient, name: str, step_seconds: float
) -> tuple[dict[str, str], str, float]:
    """Start a calculation, SIGTERM its worker once it reports progress; how long the worker took to exit."""
    headers = await _signed_up(client, name)
    calc = await client.post("/jobs/long-calc", headers=headers, json={"a": 20, "b": 22, "step_seconds": step_seconds})
    url = calc.headers["location"]
    await _until(client, url, headers, "PROGRESS")
    deployment.slow_worker.process.send_signal(signal.SIGTERM)
    took = await asyncio.to_thread(deployment.slow_worker.wait_group_gone, 8 + 5)
    assert deployment.slow_worker.process.returncode == 0
    return headers, url, took


async def test_a_client_leaving_mid_body_is_no_server_error(deployment: Deployment) -> None:
    host, port = deployment.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    head = b"POST /auth/register HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    writer.write(head + b'{"email": ')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if "client disconnected during POST /auth/register" in deployment.api.output():
            break
        await asyncio.sleep(0.05)
    log = deployment.api.output()
    assert "client disconnected during POST /auth/register" in log, log
    assert "unhandled error" not in log and "Traceback" not in log, log


async def test_sigterm_lets_the_running_job_finish(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers, url, took = await _sigterm_mid_calculation(deployment, client, "sam", 0.5)
        done = (await client.get(url, headers=headers)).json()
    assert (done["state"], done["result"], done["tries"]) == ("SUCCESS", 42, 1)
    assert took < 8  # it waited for the job, not for the whole grace period
    assert "shutdown on SIGTERM" in deployment.slow_worker.output()


async def test_a_job_outliving_the_grace_period_is_finished_by_another_worker(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers, url, _ = await _sigterm_mid_calculation(deployment, client, "tom", 2.5)
        interrupted = (await client.get(url, headers=headers)).json()
        assert interrupted["state"] == "RETRY"
        assert interrupted["error"]["type"] == "Interrupted"
        with stopped_at_exit(deployment.start_worker("second-slow-worker", slow=True)):
            done = await _until(client, url, headers, "SUCCESS")
    assert (done["result"], done["tries"]) == (42, 2)


async def test_a_worker_stopped_as_redis_dies_exits_instead_of_starting_again(
    settings: Settings, tmp_path: Path
) -> None:
    """`make run` stops everything at once: SIGTERM reaches `python -m jobs` as Redis goes away. The worker's
    own restart-after-a-Redis-failure must not take that failure for an outage to ride out."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    env = clean_env(DATABASE_URL=settings.database_url, REDIS_URL=valkey.url, JWT_SECRET=TEST_SECRET)
    with stopped_at_exit(start(python("-m", "jobs"), env, tmp_path / "worker.log")) as worker:
        try:
            async with Redis.from_url(valkey.url) as redis:
                for _ in range(200):
                    if await redis.exists(keys.QUEUE + health_check_key_suffix):
                        break
                    await asyncio.sleep(0.05)
            valkey.kill()
            worker.signal_group(signal.SIGTERM)
            await asyncio.to_thread(worker.wait_group_gone, 15)
        finally:
            valkey.stop()
    assert worker.process.returncode == 0, worker.output()
    assert "starting the worker again" not in worker.output()
