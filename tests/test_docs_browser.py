"""/docs in real headless Chromium: Swagger UI, served by the API itself (nothing from a CDN), where
Authorize runs the OAuth2 password flow and "Try it out" creates a task, through real uvicorn."""

import asyncio
import json

import pytest
from playwright.async_api import Browser, Request, expect

from tests.conftest import PASSWORD, Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


async def test_authorize_then_create_a_task_from_the_docs(deployment: Deployment, browser: Browser) -> None:
    async with await deployment.client() as client:
        user = {"email": "dora@example.com", "username": "dora", "password": PASSWORD}
        assert (await client.post("/auth/register", json=user)).status_code == 201
    page = await browser.new_page()
    elsewhere: list[str] = []  # requests to anything but this API
    errors: list[str] = []  # what the page's console reports (a script refused by the policy, say)

    def watch(request: Request) -> None:
        if not request.url.startswith((deployment.base_url, "data:")):
            elsewhere.append(request.url)

    page.on("request", watch)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    await page.goto(f"{deployment.base_url}/docs")

    await page.locator(".auth-wrapper button.authorize").click()
    await page.fill("#oauth_username", "dora")
    await page.fill("#oauth_password", PASSWORD)
    await page.locator(".auth-btn-wrapper button.authorize").click()
    await expect(page.locator(".auth-container h6")).to_have_text("Authorized")  # /auth/token gave a token
    await expect(page.get_by_role("button", name="Remove authorization")).to_be_visible()
    await page.locator(".auth-btn-wrapper button.btn-done").click()

    create = page.locator("#operations-tasks-create_task")
    await create.locator(".opblock-summary").click()
    await create.locator("button.try-out__btn").click()
    await create.locator("textarea.body-param__text").fill(json.dumps({"title": "Made in the docs"}))
    await create.locator("button.execute").click()
    status = create.locator(".live-responses-table .response .response-col_status").first
    await expect(status).to_have_text("202", timeout=10_000)
    body = json.loads(await create.locator(".live-responses-table .microlight").first.inner_text())
    assert body["status_url"] == f"/tasks/background/{body['job_id']}/status"

    async with await deployment.client() as client:  # the worker made the task
        token = (await client.post("/auth/token", data={"username": "dora", "password": PASSWORD})).json()
        mine = {"Authorization": f"Bearer {token['access_token']}"}
        for _ in range(100):
            titles = [task["title"] for task in (await client.get("/tasks", headers=mine)).json()]
            if titles:
                break
            await asyncio.sleep(0.1)
    assert titles == ["Made in the docs"]
    assert elsewhere == []
    assert errors == []
