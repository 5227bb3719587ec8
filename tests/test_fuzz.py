"""Property-based: schemathesis over every documented operation, and a stateful model of the task API."""

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest
from databases import Database
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import PASSWORD, Deployment
from tests.processes import PROJECT_DIR, python

pytestmark = pytest.mark.e2e

CONFIG = PROJECT_DIR / "tests" / "fuzz" / "schemathesis.toml"
EXCLUDED = (
    "delete_me",  # it would delete the fuzzer itself
    # Refused (403) for all but a link the service mailed, and the caller's own verified address:
    # nothing a fuzzer can guess. tests/test_accounts.py drives both.
    "verify_email",
    "send_email",
)


def _sign_up(client: httpx.Client, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert client.post("/auth/register", json=user).status_code == 201
    token = client.post("/auth/token", data={"username": name, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(deployment: Deployment, db: Database) -> None:
    with httpx.Client(base_url=deployment.base_url) as client:
        headers = _sign_up(client, "fuzzer")
        document = client.get("/openapi.json").json()
    # An admin, so that GET /users is reachable; verified, so that reminders are.
    await db.execute("UPDATE users SET is_admin = true, email_verified_at = now() WHERE username = 'fuzzer'")
    command = python(
        "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{deployment.base_url}/openapi.json",
        "--header", f"Authorization: {headers['Authorization']}",
        "--checks", "all", "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--workers", "1",
        "--seed", "20261124", "--request-timeout", "20",
        *(option for operation in EXCLUDED for option in ("--exclude-operation-id", operation)),
    )  # fmt: skip
    # One worker thread: with two, hypothesis describes its filters with ast.parse from both threads at
    # once, and CPython 3.11's parser is not safe for that ("AST constructor recursion depth mismatch").
    # Run beside the event loop, not blocking it: the SMTP server the worker mails to lives in this loop.
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=PROJECT_DIR
    )
    output, _ = await asyncio.wait_for(process.communicate(), 540)
    report = output.decode(errors="replace")[-8000:]
    assert process.returncode == 0, report
    # Every operation was reached with a working token; only the token endpoint may answer nothing but
    # 401: the fuzzer's made-up credentials are all wrong.
    # (The operations listed under that warning only: other warnings list theirs the same way.)
    section = re.search(r"Authentication failed:.*?(?=\n\s*💡|\Z)", report, re.DOTALL)
    listed = section.group(0) if section else ""
    refused = set(re.findall(r"^\s+- ((?:GET|POST|PUT|PATCH|DELETE) \S+)$", listed, re.MULTILINE))
    assert "Authentication failed" not in report or refused <= {"POST /auth/token"}, report
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations - len(EXCLUDED)}" in report


class TaskAPI(RuleBasedStateMachine):
    """Random sequences of task operations against the live API, checked against a model."""

    tasks = Bundle("tasks")
    deployment: Deployment

    @initialize()
    def sign_up(self) -> None:
        self.client = httpx.Client(base_url=self.deployment.base_url, timeout=10)
        self.me = _sign_up(self.client, f"u{uuid.uuid4().hex[:10]}")
        self.other = _sign_up(self.client, f"o{uuid.uuid4().hex[:10]}")
        self.model: dict[int, dict[str, Any]] = {}

    def teardown(self) -> None:
        if hasattr(self, "client"):
            self.client.close()

    @rule(
        target=tasks,
        title=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
            str.strip
        ),
        priority=st.sampled_from(["low", "normal", "high", "urgent"]),
    )
    def create(self, title: str, priority: str) -> int:
        accepted = self.client.post("/tasks", headers=self.me, json={"title": title, "priority": priority})
        assert accepted.status_code == 202, accepted.text
        status = self._wait(accepted.headers["location"])
        task_id: int = status["result"]["task_id"]
        self.model[task_id] = {"title": title.strip(), "priority": priority, "status": "todo"}
        return task_id

    def _wait(self, url: str) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status: dict[str, Any] = self.client.get(url, headers=self.me).json()
            if status["state"] in ("SUCCESS", "FAILURE"):
                assert status["state"] == "SUCCESS", status
                return status
            time.sleep(0.02)
        raise AssertionError(f"{url} did not finish")

    @rule(
        task=tasks, status=st.sampled_from(["todo", "in_progress", "done"]), priority=st.sampled_from(["low", "high"])
    )
    def update(self, task: int, status: str, priority: str) -> None:
        response = self.client.patch(f"/tasks/{task}", headers=self.me, json={"status": status, "priority": priority})
        if task in self.model:
            assert response.status_code == 200, response.text
            self.model[task].update(status=status, priority=priority)
        else:
            assert response.status_code == 404

    @rule(task=consumes(tasks))
    def delete(self, task: int) -> None:
        response = self.client.delete(f"/tasks/{task}", headers=self.me)
        assert response.status_code == (204 if task in self.model else 404)
        self.model.pop(task, None)

    @rule(task=tasks)
    def read(self, task: int) -> None:
        response = self.client.get(f"/tasks/{task}", headers=self.me)
        if task in self.model:
            body = response.json()
            assert {key: body[key] for key in ("title", "priority", "status")} == self.model[task]
        else:
            assert response.status_code == 404

    @rule(task=tasks)
    def someone_else_tries(self, task: int) -> None:
        assert self.client.get(f"/tasks/{task}", headers=self.other).status_code == 404
        assert self.client.patch(f"/tasks/{task}", headers=self.other, json={"title": "mine"}).status_code == 404
        assert self.client.delete(f"/tasks/{task}", headers=self.other).status_code == 404

    @invariant()
    def listing_matches_the_model(self) -> None:
        if not hasattr(self, "client"):
            return
        listed = self.client.get("/tasks", headers=self.me, params={"limit": 100}).json()
        assert {task["id"]: task["status"] for task in listed} == {
            key: value["status"] for key, value in self.model.items()
        }
        for status in ("todo", "done"):
            filtered = self.client.get("/tasks", headers=self.me, params={"status": status}).json()
            assert sorted(task["id"] for task in filtered) == sorted(
                k for k, v in self.model.items() if v["status"] == status
            )
        assert self.client.get("/tasks", headers=self.other).json() == []


async def test_the_task_api_behaves_like_its_model(deployment: Deployment) -> None:
    TaskAPI.deployment = deployment
    budget = settings(max_examples=10, stateful_step_count=10, deadline=None, suppress_health_check=list(HealthCheck))
    # In a thread, so that this event loop (and the SMTP server in it) keeps serving the worker.
    await asyncio.to_thread(run_state_machine_as_test, TaskAPI, settings=budget)
