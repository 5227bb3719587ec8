"""The dashboard's HTTP side: who may see it, the cookie, CSRF, and what its JSON says."""

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx
from databases import Database

from service.core.settings import Settings
from tests.conftest import PASSWORD, MailBox, api_client, background_worker, drain, login, register, verify

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
ROOT_EMAIL = "root@example.com"  # make_admin's user, verified: the demo email goes to no one else


async def make_admin(client: httpx.AsyncClient, db: Database, name: str = "root") -> dict[str, str]:
    await register(client, name)
    await verify(db, name)
    await db.execute("UPDATE users SET is_admin = true WHERE username = :name", {"name": name})
    return await login(client, name)


async def csrf_of(browser: httpx.AsyncClient, name: str) -> str:
    """Log the browser in through the form (it keeps the cookie); the page's CSRF token."""
    response = await browser.post("/dashboard/login", data={"username": name, "password": PASSWORD})
    assert response.status_code == 303, response.text
    page = await browser.get("/dashboard")
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert match, page.text
    return match.group(1)


async def test_the_page_wants_an_admin(client: httpx.AsyncClient, db: Database, make_user: MakeUser) -> None:
    anonymous = await client.get("/dashboard")
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/dashboard/login")
    assert (await client.get("/dashboard/login")).status_code == 200

    await register(client, "mallory")
    refused = await client.post("/dashboard/login", data={"username": "mallory", "password": PASSWORD})
    assert refused.status_code == 403
    assert "tm_dashboard" not in refused.cookies
    wrong = await client.post("/dashboard/login", data={"username": "mallory", "password": "nope nope"})
    assert wrong.status_code == 401
    mallory = await login(client, "mallory")
    assert (await client.get("/dashboard/api/overview", headers=mallory)).status_code == 403
    assert (await client.get("/dashboard", headers=mallory)).status_code == 403

    bearer = await make_admin(client, db)
    assert (await client.get("/dashboard", headers=bearer)).status_code == 200
    assert (await client.get("/dashboard/api/overview", headers=bearer)).status_code == 200


async def test_login_sets_a_strict_http_only_cookie(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    await make_admin(client, db)
    async with api_client(settings) as browser:
        response = await browser.post("/dashboard/login", data={"username": "root", "password": PASSWORD})
        set_cookie = response.headers["set-cookie"].lower()
        for attribute in ("tm_dashboard=", "httponly", "samesite=strict", "path=/dashboard", "max-age=1800"):
            assert attribute in set_cookie
        page = await browser.get("/dashboard")
        assert (await browser.get("/users/me")).status_code == 401  # the cookie is for the dashboard only
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "root" in page.text


async def test_state_changes_by_cookie_need_the_csrf_token(
    client: httpx.AsyncClient, db: Database, settings: Settings, mail: MailBox
) -> None:
    admin = await make_admin(client, db)
    await drain(settings)  # the welcome email
    mail.messages.clear()
    mail.refuse_next = ["550 no such user"]
    failed = (
        await client.post("/jobs/send-email", headers=admin, json={"recipient_email": ROOT_EMAIL, "username": "A"})
    ).json()
    await drain(settings)
    url = f"/dashboard/api/jobs/{failed['job_id']}/retry"
    async with api_client(settings) as browser:
        csrf = await csrf_of(browser, "root")
        assert (await browser.post(url)).status_code == 403
        assert (await browser.post(url, headers={"X-CSRF-Token": "0" * 64})).status_code == 403
        retried = await browser.post(url, headers={"X-CSRF-Token": csrf})
    assert retried.status_code == 202
    assert retried.json()["job_id"] != failed["job_id"]
    assert retried.json()["state"] == "PENDING"
    assert (await client.post(url, headers=admin)).status_code == 202  # a Bearer token needs no CSRF token
    await drain(settings)
    assert len(mail.to(ROOT_EMAIL)) == 2


async def test_abort_and_retry_rules(client: httpx.AsyncClient, db: Database, settings: Settings) -> None:
    admin = await make_admin(client, db)
    job = (await client.post("/jobs/long-calc", headers=admin, json={"a": 1, "b": 1, "step_seconds": 0})).json()
    retry_running = await client.post(f"/dashboard/api/jobs/{job['job_id']}/retry", headers=admin)
    assert retry_running.status_code == 409
    aborted = await client.post(f"/dashboard/api/jobs/{job['job_id']}/abort", headers=admin)
    assert aborted.json()["state"] == "REVOKED"
    assert (await client.post(f"/dashboard/api/jobs/{job['job_id']}/abort", headers=admin)).status_code == 409
    assert (await client.post(f"/dashboard/api/jobs/{job['job_id']}/retry", headers=admin)).status_code == 202
    assert (await client.post("/dashboard/api/jobs/nope/retry", headers=admin)).status_code == 404


async def test_search_filters(client: httpx.AsyncClient, db: Database, settings: Settings, mail: MailBox) -> None:
    admin = await make_admin(client, db)
    bob = await register(client, "bob") and await login(client, "bob")
    await client.post("/tasks", headers=bob, json={"title": "needle in a haystack"})
    await drain(settings)
    mail.refuse_next = ["421 busy"] * 20  # every try refused: the job exhausts its tries
    await client.post("/jobs/send-email", headers=admin, json={"recipient_email": ROOT_EMAIL, "username": "Z"})
    await drain(settings.model_copy(update={"job_max_tries": 3}))

    async def names(**params: str) -> list[str]:
        response = await client.get("/dashboard/api/jobs", headers=admin, params=params)
        assert response.status_code == 200, response.text
        return sorted(job["name"] for job in response.json())

    assert await names(user="bob") == ["process_new_task", "send_welcome_email"]
    assert await names(q="needle") == ["process_new_task"]
    assert await names(name="send_welcome_email", state="SUCCESS") == ["send_welcome_email", "send_welcome_email"]
    assert await names(dead="true") == ["send_welcome_email"]
    assert await names(state="FAILURE", user="root") == ["send_welcome_email"]
    assert await names(since="2100-01-01T00:00:00Z") == []
    detail = (await client.get("/dashboard/api/jobs", headers=admin, params={"dead": "true"})).json()[0]
    assert detail["error"]["message"].startswith("gave up after 3 tries")
    assert detail["username"] == "root"
    assert detail["args"] == {"recipient_email": ROOT_EMAIL, "username": "Z"}


async def test_overview_shows_workers_cron_and_charts(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    admin = await make_admin(client, db)
    await client.post("/jobs/long-calc", headers=admin, json={"a": 1, "b": 1, "step_seconds": 0.05})
    async with background_worker(settings, cron=True):
        for _ in range(100):  # heartbeats come every 2 s
            overview = (await client.get("/dashboard/api/overview", headers=admin)).json()
            done = sum(worker["complete"] for worker in overview["workers"])
            if done >= 3 and not overview["running"]:
                break
            await asyncio.sleep(0.1)
    workers = {worker["queue"]: worker for worker in overview["workers"]}
    assert set(workers) == {"arq:queue", "tm:queue:slow"}
    assert workers["arq:queue"]["complete"] >= 2  # the welcome email and the cron run
    assert workers["tm:queue:slow"]["complete"] == 1  # the calculation
    assert all(worker["pid"] > 0 and worker["seen_ago"] < 10 for worker in workers.values())
    cron = {entry["name"]: entry for entry in overview["cron"]}
    assert cron["send_due_reminders"]["schedule"] == "every minute at :00"
    assert set(cron) == {"send_due_reminders", "delete_old_reports", "announce_due_tasks"}
    assert cron["announce_due_tasks"]["schedule"] == "every minute at :00"
    assert cron["delete_old_reports"]["schedule"] == "every hour at :17:00"
    assert cron["send_due_reminders"]["last_run"]["state"] == "SUCCESS"
    assert sum(point["succeeded"] for point in overview["throughput"]) >= 3
    durations = {row["name"]: row for row in overview["durations"]}
    assert durations["long_running_calculation"]["mean"] >= 0.25
