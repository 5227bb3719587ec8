"""Hostile input: forged tokens, other people's ids, privileged fields, brute force, floods, pickles."""

import base64
import hashlib
import hmac
import json
import pickle
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from arq.utils import timestamp_ms
from databases import Database
from redis.asyncio import Redis

from service.core import keys
from service.core.settings import Settings
from tests.conftest import PASSWORD, TEST_SECRET, api_client, drain, login, register

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


def _claims(subject: str | None, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + 600, "iss": "taskmanager", "aud": "taskmanager-api", **changes}
    return {key: value for key, value in claims.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


def _sign(claims: dict[str, Any], key: str = TEST_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _hs512(claims: dict[str, Any]) -> str:
    """Signed with the right key, by an algorithm the service does not accept."""
    unsigned = _raw({"alg": "HS512", "typ": "JWT"}, claims).rstrip(".")
    signature = hmac.new(TEST_SECRET.encode(), unsigned.encode(), hashlib.sha512).digest()
    return f"{unsigned}.{_b64(signature)}"


def _tamper(token: str, sub: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(_claims(sub)).encode())}.{signature}"


FORGERIES: dict[str, Callable[[str, str], str]] = {
    "expired": lambda sub, good: _sign(_claims(sub, iat=1, exp=2)),
    "signed with another key": lambda sub, good: _sign(_claims(sub), "another-secret-" + "y" * 40),
    "alg none": lambda sub, good: _raw({"alg": "none", "typ": "JWT"}, _claims(sub)),
    "alg None, capitalised": lambda sub, good: _raw({"alg": "None", "typ": "JWT"}, _claims(sub)),
    "HS512 with the right key": lambda sub, good: _hs512(_claims(sub)),
    "RS256 header, HMAC signature": lambda sub, good: _raw({"alg": "RS256"}, _claims(sub), good.split(".")[2]),
    "no exp": lambda sub, good: _sign(_claims(sub, exp=None)),
    "no iat": lambda sub, good: _sign(_claims(sub, iat=None)),
    "no sub": lambda sub, good: _sign(_claims(None)),
    "no iss": lambda sub, good: _sign(_claims(sub, iss=None)),
    "wrong iss": lambda sub, good: _sign(_claims(sub, iss="someone-else")),
    "no aud": lambda sub, good: _sign(_claims(sub, aud=None)),
    "wrong aud": lambda sub, good: _sign(_claims(sub, aud="another-api")),
    "not yet valid": lambda sub, good: _sign(_claims(sub, nbf=int(time.time()) + 3600)),
    "payload changed, signature kept": lambda sub, good: _tamper(good, str(int(sub) + 1)),
    "signature cut short": lambda sub, good: good[:-8],
    "sub not a number": lambda sub, good: _sign(_claims("admin")),
    "sub of nobody": lambda sub, good: _sign(_claims("999999")),
    "two segments": lambda sub, good: ".".join(good.split(".")[:2]),
    "garbage": lambda sub, good: "%%%.not-base64.@@@",
    "exp as text": lambda sub, good: _raw({"alg": "HS256"}, _claims(sub, exp="tomorrow"), good.split(".")[2]),
}


async def test_twenty_kinds_of_forged_tokens_are_all_401(client: httpx.AsyncClient) -> None:
    user = await register(client, "victim")
    good = (await login(client, "victim"))["Authorization"].removeprefix("Bearer ")
    assert len(FORGERIES) >= 20
    accepted = []
    for kind, forge in FORGERIES.items():
        response = await client.get("/users/me", headers={"Authorization": f"Bearer {forge(str(user['id']), good)}"})
        if response.status_code != 401 or "invalid_token" not in response.headers.get("www-authenticate", ""):
            accepted.append((kind, response.status_code))
    assert accepted == []
    for header in ("Bearer ", "Basic dmljdGltOnB3", good, f"Token {good}"):
        assert (await client.get("/users/me", headers={"Authorization": header})).status_code == 401


async def test_none_of_a_thousand_cross_user_accesses_succeeds(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice, mallory = await make_user("alice"), await make_user("mallory")
    alice_id = (await client.get("/users/me", headers=alice)).json()["id"]
    items = [(await client.post("/items", headers=alice, json={"title": f"item {n}"})).json()["id"] for n in range(5)]
    for n in range(5):
        await client.post("/tasks", headers=alice, json={"title": f"task {n}"})
    report = (await client.post("/jobs/generate-report", headers=alice, json={})).json()["job_id"]
    await drain(settings)
    task_ids = [row["id"] for row in (await client.get("/tasks", headers=alice)).json()]
    job_ids = [row["job_id"] for row in (await client.get("/jobs", headers=alice)).json()]
    report_url = (await client.get(f"/jobs/{report}", headers=alice)).json()["result"]["report_url"]
    before = {
        "items": (await client.get("/items", headers=alice)).json(),
        "tasks": (await client.get("/tasks", headers=alice)).json(),
        "jobs": (await client.get("/jobs", headers=alice)).json(),
    }

    attempts: list[tuple[str, str, dict[str, Any] | None]] = []
    for item in items:
        attempts += [("GET", f"/items/{item}", None), ("PATCH", f"/items/{item}", {"title": "mine"})]
        attempts += [("DELETE", f"/items/{item}", None)]
    for task in task_ids:
        attempts += [("GET", f"/tasks/{task}", None), ("PATCH", f"/tasks/{task}", {"status": "done"})]
        attempts += [("DELETE", f"/tasks/{task}", None), ("POST", f"/tasks/{task}/remind", None)]
    for job in job_ids:
        attempts += [("GET", f"/jobs/{job}", None), ("GET", f"/tasks/background/{job}/status", None)]
        attempts += [("GET", f"/jobs/{job}/events", None), ("DELETE", f"/jobs/{job}", None)]
    attempts += [
        ("GET", report_url, None),
        ("GET", f"/users/{alice_id}", None),
        ("GET", f"/users/{alice_id}/items", None),
    ]
    attempts += [("GET", "/users", None), ("GET", "/dashboard/api/overview", None)]
    tried = successes = 0
    while tried < 1000:
        for method, path, body in attempts:
            response = await client.request(method, path, headers=mallory, json=body)
            tried += 1
            if response.status_code < 400 or response.status_code not in (403, 404):
                successes += 1
    assert tried >= 1000
    assert successes == 0
    assert {
        "items": (await client.get("/items", headers=alice)).json(),
        "tasks": (await client.get("/tasks", headers=alice)).json(),
        "jobs": (await client.get("/jobs", headers=alice)).json(),
    } == before


async def _counts(db: Database) -> list[int]:
    return [await db.fetch_val(f"SELECT count(*) FROM {table}") for table in ("items", "tasks", "jobs")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/auth/register",
            {"email": "x@example.com", "username": "sneaky", "password": PASSWORD, "is_admin": True},
        ),
        ("PATCH", "/users/me", {"is_admin": True}),
        ("PATCH", "/users/me", {"is_active": False, "id": 1}),
        ("POST", "/items", {"title": "x", "owner_id": 1}),
        ("POST", "/tasks", {"title": "x", "owner_id": 1}),
        ("POST", "/tasks", {"title": "x", "job_id": "chosen-by-me"}),
        ("POST", "/tasks", {"title": "x", "status": "done"}),
        ("PATCH", "/tasks/1", {"owner_id": 1}),
        ("POST", "/jobs/generate-report", {"owner_id": 1}),
    ],
)
async def test_privileged_fields_are_refused_and_never_stored(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser, method: str, path: str, body: dict[str, Any]
) -> None:
    victim, attacker = await make_user("victim"), await make_user("attacker")
    await db.execute("INSERT INTO tasks (owner_id, title) VALUES (1, 'the victim''s')")
    snapshot = [dict(row._mapping) for row in await db.fetch_all("SELECT * FROM users ORDER BY id")]
    counts = await _counts(db)
    response = await client.request(method, path, headers=attacker, json=body)
    assert response.status_code == 422
    assert {tuple(error["loc"][:1]) for error in response.json()["detail"]} == {("body",)}
    assert [dict(row._mapping) for row in await db.fetch_all("SELECT * FROM users ORDER BY id")] == snapshot
    assert await _counts(db) == counts
    assert (await client.get("/users", headers=attacker)).status_code == 403
    assert (await client.get("/tasks", headers=victim)).json()[0]["title"] == "the victim's"


async def test_login_brute_force_is_throttled(client: httpx.AsyncClient, settings: Settings) -> None:
    await register(client, "target")
    limit = settings.login_failures_per_account
    statuses = []
    for _ in range(limit + 3):
        response = await client.post("/auth/token", data={"username": "target", "password": "guess guess"})
        statuses.append(response.status_code)
    assert statuses == [401] * limit + [429] * 3
    assert 1 <= int(response.headers["retry-after"]) <= 15 * 60
    assert response.json() == {"detail": "Too many failed logins for this account"}
    # Locked means locked: even the right password waits, so guessing on cannot find it.
    assert (await client.post("/auth/token", data={"username": "target", "password": PASSWORD})).status_code == 429
    # Someone else's account is not locked by it.
    await register(client, "bystander")
    await login(client, "bystander")


async def test_one_address_cannot_spray_many_accounts(client: httpx.AsyncClient, settings: Settings) -> None:
    statuses = []
    for n in range(settings.login_attempts_per_ip + 2):
        response = await client.post("/auth/token", data={"username": f"user{n}", "password": "password1"})
        statuses.append(response.status_code)
    assert statuses.count(401) == settings.login_attempts_per_ip
    assert statuses[-2:] == [429, 429]
    assert response.json() == {"detail": "Too many login attempts from this address"}
    assert int(response.headers["retry-after"]) <= 60


async def test_a_good_login_clears_the_failures(client: httpx.AsyncClient, settings: Settings) -> None:
    await register(client, "forgetful")
    for _ in range(settings.login_failures_per_account - 1):
        await client.post("/auth/token", data={"username": "forgetful", "password": "wrong wrong"})
    await login(client, "forgetful")
    for _ in range(settings.login_failures_per_account - 1):
        assert (
            await client.post("/auth/token", data={"username": "forgetful", "password": "nope nope"})
        ).status_code == 401


async def test_enqueue_quota_per_user(settings: Settings, db: Database) -> None:
    async with api_client(settings.model_copy(update={"enqueue_quota_per_minute": 5})) as client:
        await register(client, "busy")
        headers = await login(client, "busy")
        statuses = [
            (await client.post("/tasks", headers=headers, json={"title": f"t{n}"})).status_code for n in range(7)
        ]
        refused = await client.post("/jobs/long-calc", headers=headers, json={"a": 1, "b": 2})
    assert statuses == [202] * 5 + [429] * 2
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert await db.fetch_val("SELECT count(*) FROM jobs WHERE name = 'process_new_task'") == 5


class _Exploit:
    """Unpickling this creates a file: proof that a worker ran code it was sent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


async def test_a_pickled_payload_in_redis_runs_nothing(
    redis: Redis, db: Database, settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"t": 1, "f": "process_new_task", "a": [_Exploit(marker)], "k": {}, "et": timestamp_ms()})
    await redis.set(keys.ARQ_JOB + "evil", payload)
    await redis.zadd(keys.QUEUE, {"evil": timestamp_ms()})
    worker = await drain(settings)
    assert not marker.exists()
    assert worker.jobs_failed == 1 and worker.jobs_complete == 0
    assert await db.fetch_val("SELECT count(*) FROM tasks") == 0
    assert await redis.zcard(keys.QUEUE) == 0  # refused and removed, not retried forever
