"""The dashboard in real headless Chromium, against real uvicorn and arq processes."""

from pathlib import Path

import httpx
import pytest
from databases import Database
from playwright.async_api import Browser, Page, expect

from tests.conftest import PASSWORD, Deployment, MailBox

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


async def _user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


async def _log_in(page: Page, base_url: str, name: str) -> None:
    await page.goto(f"{base_url}/dashboard")
    await expect(page).to_have_url(f"{base_url}/dashboard/login")
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")


async def test_an_admin_watches_progress_and_retries_a_failure(
    deployment: Deployment, browser: Browser, db: Database, mail: MailBox
) -> None:
    async with await deployment.client() as client:
        admin = await _user(client, "ops")
        await db.execute("UPDATE users SET is_admin = true, email_verified_at = now() WHERE username = 'ops'")
        for title in ("Book flights", "Pay rent", "Call the plumber"):
            await client.post("/tasks", headers=admin, json={"title": title})
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        await _log_in(page, deployment.base_url, "ops")
        await expect(page).to_have_url(f"{deployment.base_url}/dashboard")
        await expect(page.locator("#workers tbody tr")).to_have_count(2)  # one per queue

        calc = (await client.post("/jobs/long-calc", headers=admin, json={"a": 40, "b": 2, "step_seconds": 1})).json()
        bar = page.locator(f'#running tr[data-job-id="{calc["job_id"]}"] .progress')
        await expect(bar).to_be_visible(timeout=10_000)
        first = int(await bar.get_attribute("data-percent") or 0)
        await expect(bar).not_to_have_attribute("data-percent", str(first), timeout=5_000)
        advanced = int(await bar.get_attribute("data-percent") or 0)
        assert advanced > first
        await page.screenshot(path=str(SCREENSHOT))  # the README's picture: a job in flight, the charts, the lists

        finished = page.locator(f'#jobs tr[data-job-id="{calc["job_id"]}"]')
        await expect(finished).to_have_attribute("data-state", "SUCCESS", timeout=15_000)
        await expect(bar).to_have_count(0)

        mail.refuse_next = ["550 5.1.1 mailbox unavailable"]
        failed = (
            await client.post(
                "/jobs/send-email", headers=admin, json={"recipient_email": "ops@example.com", "username": "N"}
            )
        ).json()
        failed_row = page.locator(f'#jobs tr[data-job-id="{failed["job_id"]}"]')
        await expect(failed_row).to_have_attribute("data-state", "FAILURE", timeout=10_000)
        rows_before = await page.locator("#jobs tbody tr").count()
        await failed_row.locator("button.retry").click()
        await expect(page.locator("#toast")).to_contain_text("Retried as")
        await expect(page.locator("#jobs tbody tr")).to_have_count(rows_before + 1, timeout=5_000)
        newest = page.locator("#jobs tbody tr").first
        assert await newest.get_attribute("data-job-id") != failed["job_id"]
        await expect(newest).to_have_attribute("data-state", "SUCCESS", timeout=10_000)
        retried = [m for m in mail.to("ops@example.com") if m.subject == "Welcome to Task Manager, N!"]
        assert len(retried) == 1  # the retry delivered it


async def test_a_user_who_is_not_an_admin_is_refused(deployment: Deployment, browser: Browser) -> None:
    async with await deployment.client() as client:
        await _user(client, "plain")
    page = await browser.new_page()
    await _log_in(page, deployment.base_url, "plain")
    await expect(page.locator(".error")).to_have_text("The dashboard is for administrators.")
    await expect(page).to_have_url(f"{deployment.base_url}/dashboard/login")
    await page.goto(f"{deployment.base_url}/dashboard")
    await expect(page).to_have_url(f"{deployment.base_url}/dashboard/login")
