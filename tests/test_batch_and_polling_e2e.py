"""Batches and long-polls end to end: uvicorn and arq workers as real processes, driven over HTTP."""

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, Deployment

pytestmark = pytest.mark.e2e


@pytest.fixture
def deployment_env() -> dict[str, str]:
    return {"SSE_MAX_STREAMS_PER_USER": "1"}  # one stream or long-poll at a time per user


async def _signed_up(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


async def _changes(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[tuple[dict[str, Any], float]]:
    """Each status of the job as long-polls return it, with when it arrived, until it is final."""
    answer = await client.get(url, headers=headers)
    seen = [(answer.json(), time.time())]
    while seen[-1][0]["state"] not in ("SUCCESS", "FAILURE", "REVOKED"):
        answer = await client.get(f"{url}?wait=20", headers={**headers, "If-None-Match": answer.headers["etag"]})
        assert answer.status_code == 200, answer.text  # the job changed well before the deadline
        seen.append((answer.json(), time.time()))
    return seen


async def test_a_batch_of_100_in_one_request_is_done_by_the_worker(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers = await _signed_up(client, "bulk")
        body = {"tasks": [{"title": f"import {n}", "priority": "low"} for n in range(100)]}
        accepted = await client.post("/tasks/batch", headers={**headers, "Idempotency-Key": "import-1"}, json=body)
        assert accepted.status_code == 202, accepted.text
        jobs = accepted.json()["jobs"]
        assert len(jobs) == 100

        task_ids = []
        for job in jobs:
            final, _ = (await _changes(client, f"/jobs/{job['job_id']}", headers))[-1]
            assert final["state"] == "SUCCESS", final
            task_ids.append(final["result"]["task_id"])
        retried = await client.post("/tasks/batch", headers={**headers, "Idempotency-Key": "import-1"}, json=body)
        assert retried.json() == accepted.json()
        listed = (await client.get("/tasks?limit=100", headers=headers)).json()
    titles = {task["id"]: task["title"] for task in listed}
    assert [titles[task_id] for task_id in task_ids] == [f"import {n}" for n in range(100)]


async def test_a_long_poll_answers_each_change_of_a_running_job_at_once(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers = await _signed_up(client, "watcher")
        calc = await client.post("/jobs/long-calc", headers=headers, json={"a": 2, "b": 3, "step_seconds": 0.4})
        seen = await _changes(client, calc.headers["location"], headers)

    states = [status["state"] for status, _ in seen]
    assert states[-1] == "SUCCESS" and "PROGRESS" in states and len(seen) <= 9  # no polling: one answer a change
    final, answered = seen[-1]
    lag = answered - datetime.fromisoformat(final["finished_at"]).timestamp()
    assert 0 <= lag < 0.3, lag  # the worker's change, to the client, through PostgreSQL, Redis and the API
    started = next((status, at) for status, at in seen if status["state"] != "PENDING")
    if started[0]["state"] == "STARTED":
        assert started[1] - datetime.fromisoformat(started[0]["started_at"]).timestamp() < 0.3


async def test_a_client_leaving_a_long_poll_frees_its_slot(deployment: Deployment) -> None:
    async with await deployment.client() as client:
        headers = await _signed_up(client, "leaver")
        calc = await client.post("/jobs/long-calc", headers=headers, json={"a": 1, "b": 1, "step_seconds": 10})
        url = calc.headers["location"]
        for _ in range(200):  # running, and then unchanged for 10 s
            status = await client.get(url, headers=headers)
            if status.json()["state"] == "STARTED":
                break
            await asyncio.sleep(0.02)
        held = {**headers, "If-None-Match": status.headers["etag"]}

        leaving = httpx.AsyncClient(base_url=deployment.base_url, timeout=30)
        poll = asyncio.create_task(leaving.get(f"{url}?wait=30", headers=held))
        await asyncio.sleep(0.5)
        assert not poll.done()
        refused = await client.get(f"{url}?wait=1", headers=held)
        assert refused.status_code == 429  # the user's one slot is taken

        poll.cancel()  # the client goes away mid-wait
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        await leaving.aclose()
        for _ in range(40):  # the server notices the closed connection and lets the slot go
            answer = await client.get(f"{url}?wait=0.5", headers=held)
            if answer.status_code != 429:
                break
            await asyncio.sleep(0.05)
        assert answer.status_code == 304, answer.text
        assert (await client.delete(url, headers=headers)).status_code == 200
