"""Findings of the penetration test (issue: abuse resistance), each held by a test."""

import csv
import io
from collections.abc import Awaitable, Callable

import httpx
import pytest
from databases import Database

from service.core.settings import Settings
from tests.conftest import api_client, drain
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
    for path in ("/dashboard/login", "/docs"):
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
