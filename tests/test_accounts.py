"""Accounts that one stolen token, one address or one flood cannot take over: verified addresses,
the current password for what matters, tokens and sessions that end, limits per account and address."""

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from databases import Database

from service.api.security import Passwords
from service.core.settings import Settings
from tests.conftest import PASSWORD, MailBox, api_client, drain, login, register
from tests.test_dashboard import csrf_of, make_admin

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
LINK = re.compile(r"https?://[^/\s]+(/auth/verify-email\?token=[\w.-]+)")


def _link(mail: MailBox, address: str, subject_start: str) -> str:
    [message] = [m for m in mail.to(address) if m.subject.startswith(subject_start)]
    match = LINK.search(message.body)
    assert match, message.body
    return match.group(1)


async def test_the_welcome_email_verifies_the_address(
    client: httpx.AsyncClient, settings: Settings, mail: MailBox
) -> None:
    await register(client, "vera")
    vera = await login(client, "vera")
    assert (await client.get("/users/me", headers=vera)).json()["email_verified_at"] is None
    await drain(settings)
    verified = await client.get(_link(mail, "vera@example.com", "Welcome"))
    assert verified.status_code == 200
    assert (await client.get("/users/me", headers=vera)).json()["email_verified_at"] is not None


@pytest.mark.parametrize("token", ["forged.token.here", "x" * 40])
async def test_a_forged_link_verifies_nothing(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/auth/verify-email", params={"token": token})
    assert response.status_code == 403
    assert "not valid" in response.json()["detail"]


async def test_an_access_token_is_no_verification_link(client: httpx.AsyncClient) -> None:
    await register(client, "tom")
    access = (await login(client, "tom"))["Authorization"].removeprefix("Bearer ")
    assert (await client.get("/auth/verify-email", params={"token": access})).status_code == 403


async def test_mail_goes_only_to_the_callers_verified_address(
    client: httpx.AsyncClient, db: Database, settings: Settings, mail: MailBox
) -> None:
    """The pen test mailed "Your account is locked, visit evil.example" to 20 strangers of its choice."""
    await register(client, "eve")
    eve = await login(client, "eve")
    phishing = {"recipient_email": "victim@example.com", "username": "Your account is locked, visit evil.example"}
    assert (await client.post("/jobs/send-email", headers=eve, json=phishing)).status_code == 403
    own = {"recipient_email": "eve@example.com", "username": "Eve"}
    assert (await client.post("/jobs/send-email", headers=eve, json=own)).status_code == 403  # not verified yet
    await drain(settings)
    await client.get(_link(mail, "eve@example.com", "Welcome"))
    assert (await client.post("/jobs/send-email", headers=eve, json=own)).status_code == 202
    await drain(settings)
    assert mail.to("victim@example.com") == []


async def test_reminders_wait_for_a_verified_address(
    client: httpx.AsyncClient, settings: Settings, mail: MailBox
) -> None:
    await register(client, "rita")
    rita = await login(client, "rita")
    await client.post("/tasks", headers=rita, json={"title": "t"})
    await drain(settings)
    task_id = (await client.get("/tasks", headers=rita)).json()[0]["id"]
    refused = await client.post(f"/tasks/{task_id}/remind", headers=rita)
    assert refused.status_code == 403
    assert "Verify your email" in refused.json()["detail"]


async def test_changing_the_email_needs_the_password_and_unverifies_it(
    client: httpx.AsyncClient, settings: Settings, mail: MailBox, make_user: MakeUser
) -> None:
    ann = await make_user("ann")
    change = {"email": "ann@new.example"}
    assert (await client.patch("/users/me", headers=ann, json=change)).status_code == 403
    wrong = {**change, "current_password": "not it at all"}
    assert (await client.patch("/users/me", headers=ann, json=wrong)).status_code == 403
    changed = await client.patch("/users/me", headers=ann, json={**change, "current_password": PASSWORD})
    assert changed.status_code == 200
    assert changed.json()["email"] == "ann@new.example" and changed.json()["email_verified_at"] is None
    await drain(settings)
    assert (await client.get(_link(mail, "ann@new.example", "Confirm"))).status_code == 200
    assert (await client.get("/users/me", headers=ann)).json()["email_verified_at"] is not None


async def test_a_link_for_an_old_address_verifies_nothing(
    client: httpx.AsyncClient, settings: Settings, mail: MailBox
) -> None:
    await register(client, "otto")
    otto = await login(client, "otto")
    await drain(settings)
    old_link = _link(mail, "otto@example.com", "Welcome")
    moved = {"email": "otto@new.example", "current_password": PASSWORD}
    assert (await client.patch("/users/me", headers=otto, json=moved)).status_code == 200
    assert (await client.get(old_link)).status_code == 403
    assert (await client.get("/users/me", headers=otto)).json()["email_verified_at"] is None


async def test_a_password_change_ends_every_older_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    pat = await make_user("pat")
    other_device = await login(client, "pat")
    new = {"password": "another long password"}
    assert (await client.patch("/users/me", headers=pat, json=new)).status_code == 403
    assert (await client.patch("/users/me", headers=pat, json={**new, "current_password": PASSWORD})).status_code == 200
    assert (await client.get("/users/me", headers=pat)).status_code == 401
    assert (await client.get("/users/me", headers=other_device)).status_code == 401
    fresh = await login(client, "pat", "another long password")
    assert (await client.get("/users/me", headers=fresh)).status_code == 200


async def test_older_tokens_submit_no_jobs(client: httpx.AsyncClient, make_user: MakeUser, db: Database) -> None:
    """The owner is checked where the job is recorded: a token older than the password, of a deactivated
    or of a deleted user is 401 and records nothing, even with an Idempotency-Key that named a job."""
    old = await make_user("pia")
    key = {"Idempotency-Key": "pia-1"}
    assert (await client.post("/tasks", headers={**old, **key}, json={"title": "before"})).status_code == 202
    change = {"password": "another long password", "current_password": PASSWORD}
    assert (await client.patch("/users/me", headers=old, json=change)).status_code == 200
    for path, body, headers in (
        ("/tasks", {"title": "after"}, old),
        ("/tasks", {"title": "before"}, {**old, **key}),  # the job that key named is not handed out
        ("/jobs/long-calc", {"a": 1, "b": 2}, old),
    ):
        answer = await client.post(path, headers=headers, json=body)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    fresh = await login(client, "pia", "another long password")
    await db.execute("UPDATE users SET is_active = false WHERE username = 'pia'")
    assert (await client.post("/tasks", headers=fresh, json={"title": "inactive"})).status_code == 401
    await db.execute("UPDATE users SET is_active = true WHERE username = 'pia'")
    assert (await client.post("/tasks", headers=fresh, json={"title": "active again"})).status_code == 202
    titles = await db.fetch_all("SELECT args->>'title' AS title FROM jobs WHERE name = 'process_new_task'")
    assert sorted(row["title"] for row in titles) == ["active again", "before"]
    gone = {"current_password": "another long password"}
    assert (await client.request("DELETE", "/users/me", headers=fresh, json=gone)).status_code == 204
    assert (await client.post("/tasks", headers=fresh, json={"title": "deleted"})).status_code == 401


async def test_a_gone_user_is_401_before_a_full_quota(settings: Settings, make_user: MakeUser) -> None:
    limited = settings.model_copy(update={"enqueue_quota_per_minute": 1})
    async with api_client(limited) as client:
        await register(client, "quin")
        headers = await login(client, "quin")
        assert (await client.post("/tasks", headers=headers, json={"title": "one"})).status_code == 202
        assert (await client.post("/tasks", headers=headers, json={"title": "two"})).status_code == 429
        deleted = await client.request("DELETE", "/users/me", headers=headers, json={"current_password": PASSWORD})
        assert deleted.status_code == 204
        assert (await client.post("/tasks", headers=headers, json={"title": "three"})).status_code == 401


async def test_deleting_the_account_needs_the_password(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    dan = await make_user("dan")
    assert (await client.delete("/users/me", headers=dan)).status_code == 422  # no confirmation at all
    wrong = await client.request("DELETE", "/users/me", headers=dan, json={"current_password": "wrong guess"})
    assert wrong.status_code == 403
    assert (await client.get("/users/me", headers=dan)).status_code == 200
    right = await client.request("DELETE", "/users/me", headers=dan, json={"current_password": PASSWORD})
    assert right.status_code == 204


async def test_the_dashboard_session_ends_at_logout_and_is_no_api_token(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    await make_admin(client, db)
    async with api_client(settings) as browser:
        await csrf_of(browser, "root")
        session = browser.cookies["tm_dashboard"]
        assert session.count(".") != 2  # not a JWT
        assert (await browser.get("/dashboard/api/overview")).status_code == 200
        assert (await client.get("/users/me", headers={"Authorization": f"Bearer {session}"})).status_code == 401
        assert (await browser.post("/dashboard/logout")).status_code == 303
    async with api_client(settings) as thief:  # the cookie, kept after logout
        thief.cookies.set("tm_dashboard", session, path="/dashboard")
        assert (await thief.get("/dashboard/api/overview")).status_code == 401


async def test_a_password_change_ends_the_dashboard_session(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    root = await make_admin(client, db)
    async with api_client(settings) as browser:
        await csrf_of(browser, "root")
        change = {"password": "root's new password", "current_password": PASSWORD}
        assert (await client.patch("/users/me", headers=root, json=change)).status_code == 200
        assert (await browser.get("/dashboard/api/overview")).status_code == 401


async def test_failed_logins_count_per_account_whatever_names_it(client: httpx.AsyncClient, settings: Settings) -> None:
    """The pen test got 10 guesses by username and 10 more by email."""
    await register(client, "sam")
    names = ["sam", "sam@example.com", "SAM", "Sam@Example.com"]
    answers = [
        (await client.post("/auth/token", data={"username": names[n % 4], "password": f"guess {n}"})).status_code
        for n in range(settings.login_failures_per_account + 4)
    ]
    assert answers.count(401) == settings.login_failures_per_account
    assert answers[-4:] == [429] * 4


async def test_registrations_per_address_are_limited(settings: Settings) -> None:
    limited = settings.model_copy(update={"registrations_per_address_per_hour": 3})
    async with api_client(limited) as client:
        answers = [
            (
                await client.post(
                    "/auth/register", json={"email": f"u{n}@example.com", "username": f"user{n}", "password": PASSWORD}
                )
            ).status_code
            for n in range(5)
        ]
    assert answers == [201, 201, 201, 429, 429]


async def test_fresh_accounts_bring_no_fresh_job_quota(settings: Settings, db: Database) -> None:
    limited = settings.model_copy(update={"enqueue_quota_per_minute": 3, "enqueue_quota_per_address_per_minute": 5})
    answers = []
    async with api_client(limited) as client:
        for name in ("fay", "fox", "fig"):
            await register(client, name)
            headers = await login(client, name)
            for n in range(3):
                answers.append((await client.post("/tasks", headers=headers, json={"title": f"{n}"})).status_code)
    assert answers.count(202) == 5  # the address's quota, whichever account asks
    assert answers[5:] == [429] * 4


async def test_logins_have_hashing_slots_registrations_cannot_take() -> None:
    passwords = Passwords(concurrency=1, new_password_concurrency=1)
    hashed = await passwords.hash("a password")
    async with passwords._new_slots:  # every slot for new passwords taken, as by a flood of registrations
        assert await asyncio.wait_for(passwords.verify(hashed, "a password"), 5)
