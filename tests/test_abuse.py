"""Findings of the penetration test (issue: abuse resistance), each held by a test."""

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from databases import Database
from redis.asyncio import Redis

from jobs.worker import shutdown, startup
from service.core.connections import PoolTooLarge, open_redis
from service.core.dispatch import Dispatcher
from service.core.settings import Settings
from tests.conftest import METRICS_TOKEN, api_client, drain, login, register
from tests.test_dashboard import csrf_of, make_admin

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


async def test_report_cells_that_a_spreadsheet_would_run_are_escaped(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    """OWASP's CSV injection: a cell beginning with = + - @ (or tab, CR) is a formula to a spreadsheet."""
    alice = await make_user("alice")
    titles = ['=HYPERLINK("http://evil.example")', "+1+1", "-2+3", "@SUM(A1)", "plain", "-", "a=b"]
    for title in titles:
        assert (await client.post("/tasks", headers=alice, json={"title": title})).status_code == 202
    await client.post("/tasks", headers=alice, json={"title": "tabbed", "description": "\tcmd"})
    await drain(settings)
    job = (await client.post("/jobs/generate-report", headers=alice, json={})).json()
    await drain(settings)
    url = (await client.get(f"/jobs/{job['job_id']}", headers=alice)).json()["result"]["report_url"]
    rows = list(csv.DictReader(io.StringIO((await client.get(url, headers=alice)).text)))
    escaped = {"'" + title if title[0] in "=+-@" else title for title in titles}
    assert {row["title"] for row in rows} == escaped | {"tabbed"}
    assert next(row for row in rows if row["title"] == "tabbed")["description"] == "'\tcmd"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/tasks?due_before=0001-01-01T00:00:00%2B14:00", None),
        ("POST", "/tasks", {"title": "far", "due_at": "9999-12-31T23:59:59-14:00"}),
        ("POST", "/tasks", {"title": "early", "due_at": "0001-01-01T00:00:00+14:00"}),
    ],
)
async def test_dates_the_database_cannot_hold_are_422(
    client: httpx.AsyncClient, make_user: MakeUser, method: str, path: str, body: object
) -> None:
    alice = await make_user("alice")
    response = await client.request(method, path, headers=alice, json=body)
    assert response.status_code == 422, response.text
    assert "out of range" in response.text


async def test_a_patch_with_a_date_out_of_range_is_422(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await client.post("/tasks", headers=alice, json={"title": "t"})
    await drain(settings)
    task_id = (await client.get("/tasks", headers=alice)).json()[0]["id"]
    response = await client.patch(f"/tasks/{task_id}", headers=alice, json={"due_at": "9999-12-31T23:59:59-14:00"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("bad", ["line\nbreak", "carriage\rreturn", "bell\x07", "del\x7f", "tab\tin a title"])
async def test_control_characters_in_titles_and_names_are_422(
    client: httpx.AsyncClient, make_user: MakeUser, bad: str
) -> None:
    alice = await make_user("alice")
    assert (await client.post("/tasks", headers=alice, json={"title": bad})).status_code == 422
    assert (await client.post("/items", headers=alice, json={"title": bad})).status_code == 422
    email = {"recipient_email": "a@b.example", "username": bad}
    assert (await client.post("/jobs/send-email", headers=alice, json=email)).status_code == 422


async def test_descriptions_keep_their_line_breaks(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    response = await client.post("/tasks", headers=alice, json={"title": "t", "description": "one\ntwo\tthree"})
    assert response.status_code == 202


async def test_html_pages_carry_security_headers(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/login", "/docs", "/docs/reference"):
        page = await client.get(path)
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
        script_src = policy.split("script-src")[1].split(";")[0]
        assert script_src.strip() in ("'self'", "'none'")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
    api = await client.get("/healthz")
    assert api.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("user", ["\u00b2", "12345678901234567890", "\u0663"])
async def test_a_user_filter_that_is_no_valid_id_is_422(client: httpx.AsyncClient, db: Database, user: str) -> None:
    admin = await make_admin(client, db)
    response = await client.get("/dashboard/api/jobs", headers=admin, params={"user": user})
    assert response.status_code == 422, response.text


async def test_a_non_ascii_csrf_token_is_403(client: httpx.AsyncClient, db: Database, settings: Settings) -> None:
    await make_admin(client, db)
    async with api_client(settings) as browser:
        await csrf_of(browser, "root")
        response = await browser.post("/dashboard/api/jobs/nothing/retry", headers={"X-CSRF-Token": "é".encode() * 32})
    assert response.status_code == 403


async def test_metrics_want_their_token(settings: Settings) -> None:
    async with api_client(settings) as client:
        assert (await client.get("/metrics")).status_code == 403
        assert (await client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})).status_code == 403
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).status_code == 200
    async with api_client(settings.model_copy(update={"metrics_token": None})) as client:
        assert (await client.get("/metrics")).status_code == 403  # no token set: closed, outside development


def test_an_empty_metrics_token_is_no_token() -> None:
    assert Settings(jwt_secret="k" * 40, metrics_token="").metrics_token is None
    with pytest.raises(ValueError, match="at least 16"):
        Settings(jwt_secret="k" * 40, metrics_token="short")


async def test_a_pool_postgresql_could_never_serve_is_refused_at_start(settings: Settings) -> None:
    """The pen test: the API and two workers could open 114 connections, beyond max_connections (100)."""
    with pytest.raises(PoolTooLarge, match="DB_POOL_MAX=100000 for one API process"):
        async with api_client(settings.model_copy(update={"db_pool_max": 100_000})):
            pass


async def test_the_worker_pool_is_db_pool_max_not_one_per_job(settings: Settings) -> None:
    worker_settings = settings.model_copy(update={"worker_max_jobs": 50, "db_pool_max": 7, "reconcile_seconds": 0})
    ctx: dict[str, Any] = {"settings": worker_settings, "cron_jobs": [], "queue_name": "test", "redis": None}
    ctx["redis"] = open_redis(worker_settings)
    await startup(ctx)
    try:
        assert ctx["db"]._backend._pool._maxsize == 7  # what the pool really holds
    finally:
        await shutdown(ctx)
        await ctx["redis"].aclose()


async def test_item_and_task_writes_have_a_quota(settings: Settings, db: Database) -> None:
    """The pen test wrote 1,000 items in 1.6 s."""
    async with api_client(settings.model_copy(update={"write_quota_per_minute": 3})) as client:
        await register(client, "wendy")
        headers = await login(client, "wendy")
        answers = [
            (await client.post("/items", headers=headers, json={"title": f"i{n}"})).status_code for n in range(4)
        ]
        assert answers == [201, 201, 201, 429]
        refused = await client.patch("/items/1", headers=headers, json={"title": "x"})
    assert refused.status_code == 429 and "retry-after" in refused.headers


async def test_a_report_stops_at_its_size_cap(
    client: httpx.AsyncClient, db: Database, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    for n in range(20):
        await client.post("/tasks", headers=alice, json={"title": f"t{n}", "description": "d" * 500})
    capped = settings.model_copy(update={"report_max_bytes": 4096})
    await drain(capped)
    job = (await client.post("/jobs/generate-report", headers=alice, json={})).json()
    await drain(capped)
    result = (await client.get(f"/jobs/{job['job_id']}", headers=alice)).json()["result"]
    assert result["truncated"] is True and 0 < result["rows"] < 20
    content = (await client.get(result["report_url"], headers=alice)).content
    assert len(content) <= 4096
    assert len(list(csv.reader(io.StringIO(content.decode())))) == result["rows"] + 1


async def test_reports_are_deleted_after_their_retention(
    client: httpx.AsyncClient, db: Database, redis: Redis, settings: Settings, make_user: MakeUser
) -> None:
    """The pen test: reports were never deleted (63 MB for 30)."""
    alice = await make_user("alice")
    urls = []
    for _ in range(2):
        job = (await client.post("/jobs/generate-report", headers=alice, json={})).json()
        await drain(settings)
        urls.append((await client.get(f"/jobs/{job['job_id']}", headers=alice)).json()["result"]["report_url"])
    await db.execute("UPDATE reports SET created_at = now() - interval '8 days' WHERE id = :id",
                     {"id": int(urls[0].rsplit("/", 1)[1])})  # fmt: skip
    await Dispatcher(db, redis).submit(name="delete_old_reports", owner_id=None, args={})
    await drain(settings)
    assert (await client.get(urls[0], headers=alice)).status_code == 404
    assert (await client.get(urls[1], headers=alice)).status_code == 200
