"""Webhooks end to end: uvicorn and arq workers as real processes deliver to a real HTTP receiver on
localhost (allowed by WEBHOOK_ALLOWED_HOSTS, which allows 127.0.0.1 and nothing else), whose handler
verifies every signature with the standardwebhooks library."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.dev.embedded import free_port
from tests.conftest import PASSWORD, Deployment

pytestmark = pytest.mark.e2e
METADATA_URL = "http://169.254.169.254/latest/meta-data/"


@pytest.fixture
def deployment_env() -> dict[str, str]:
    return {
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",  # the receiver's address, and only it
        "WEBHOOK_RETRY_BASE_SECONDS": "0.3",
        "WEBHOOK_MAX_ATTEMPTS": "3",
        "WEBHOOK_POLL_SECONDS": "0.1",
        "WEBHOOK_TIMEOUT_SECONDS": "5",
    }


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: list[str]  # which of the endpoint's secrets verified it


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1: /ok answers 204, /flaky 500 then 204, /redirect sends to METADATA_URL."""

    port: int = field(default_factory=free_port)
    secrets: dict[str, list[str]] = field(default_factory=dict)  # path -> the secrets that should verify
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: Request) -> Response:
        body, path = await request.body(), request.url.path
        headers = dict(request.headers)
        verified = []
        for secret in self.secrets.get(path, []):
            with contextlib.suppress(WebhookVerificationError):
                Webhook(secret).verify(body, headers)
                verified.append(secret)
        self.received.append(Received(path, headers, body, verified))
        if not verified:
            return Response(status_code=401)
        if path == "/redirect":
            return Response(status_code=307, headers={"location": METADATA_URL})
        if path == "/flaky" and len(self.at(path, headers["webhook-id"])) == 1:
            return Response(status_code=500)
        return Response(status_code=204)

    def at(self, path: str, event_id: str) -> list[Received]:
        return [got for got in self.received if got.path == path and got.headers["webhook-id"] == event_id]

    async def wait_for(self, path: str, event_id: str, count: int) -> list[Received]:
        for _ in range(200):
            if len(found := self.at(path, event_id)) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} got {len(self.at(path, event_id))} of {event_id}, not {count}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiving = Receiver()
    app = Starlette(routes=[Route("/{name}", receiving.handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=receiving.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield receiving
    server.should_exit = True
    await task


async def _user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert (await client.post("/auth/register", json=user)).status_code == 201
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


async def _hook(client: httpx.AsyncClient, auth: dict[str, str], receiver: Receiver, path: str) -> dict[str, Any]:
    created = await client.post("/webhooks", headers=auth, json={"url": receiver.url(path), "events": ["job.finished"]})
    assert created.status_code == 201, created.text
    hook: dict[str, Any] = created.json()
    receiver.secrets[path] = [hook["secret"]]
    return hook


async def _delivery(
    client: httpx.AsyncClient, auth: dict[str, str], hook: dict[str, Any], event_id: str, final: str
) -> dict[str, Any]:
    """The webhook's delivery of this event, once it is `final` (its welcome email's job has one too)."""
    for _ in range(300):
        log: list[Any] = (await client.get(f"/webhooks/{hook['id']}/deliveries", headers=auth)).json()
        found: list[dict[str, Any]] = [entry for entry in log if entry["event_id"] == event_id]
        if found and found[0]["status"] == final:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event_id} never reached {final}: {log}")


async def _finished_job(client: httpx.AsyncClient, auth: dict[str, str], title: str) -> str:
    created = await client.post("/tasks", headers=auth, json={"title": title})
    assert created.status_code == 202
    return f"job.finished:{created.json()['job_id']}"


async def test_delivered_retried_replayed_refused_and_rotated(deployment: Deployment, receiver: Receiver) -> None:
    async with await deployment.client() as client:
        auth = await _user(client, "wendy")
        ok = await _hook(client, auth, receiver, "/ok")
        flaky = await _hook(client, auth, receiver, "/flaky")
        redirect = await _hook(client, auth, receiver, "/redirect")
        event_id = await _finished_job(client, auth, "Ship it")

        # Delivered, signed, with the event's id as webhook-id.
        delivered = await _delivery(client, auth, ok, event_id, "delivered")
        [got] = await receiver.wait_for("/ok", event_id, 1)
        assert got.verified_by == [ok["secret"]]
        event = Webhook(ok["secret"]).verify(got.body, got.headers)
        assert event["type"] == "job.finished" and f"job.finished:{event['data']['job_id']}" == event_id
        assert event["data"]["state"] == "SUCCESS" and event["data"]["name"] == "process_new_task"
        assert delivered["attempts"] == 1 and delivered["last_status_code"] == 204

        # Failed once (500), retried after a backoff, then delivered: the same webhook-id both times.
        retried = await _delivery(client, auth, flaky, event_id, "delivered")
        first, second = await receiver.wait_for("/flaky", event_id, 2)
        assert second.verified_by == [flaky["secret"]] and first.body == second.body
        assert retried["attempts"] == 2 and retried["last_status_code"] == 204

        # A redirect to the metadata address is refused at delivery (the first hop, 127.0.0.1, was allowed).
        refused = await _delivery(client, auth, redirect, event_id, "failed")
        assert refused["attempts"] == 1 and "169.254.169.254" in refused["last_error"], refused
        assert "refused" in refused["last_error"] and len(receiver.at("/redirect", event_id)) == 1

        # A replay sends the delivered event again, same webhook-id.
        replay = await client.post(f"/webhooks/{ok['id']}/deliveries/{delivered['id']}/replay", headers=auth)
        assert replay.status_code == 200 and replay.json()["status"] == "pending"
        again = (await receiver.wait_for("/ok", event_id, 2))[1]
        assert again.verified_by == [ok["secret"]]
        assert (await _delivery(client, auth, ok, event_id, "delivered"))["attempts"] == 1

        # After a rotation, each attempt carries a signature by the new secret and one by the old.
        rotated = (await client.post(f"/webhooks/{ok['id']}/rotate-secret", headers=auth)).json()
        receiver.secrets["/ok"] = [rotated["secret"], ok["secret"]]
        second_event = await _finished_job(client, auth, "Ship it again")
        [latest] = await receiver.wait_for("/ok", second_event, 1)
        assert latest.verified_by == [rotated["secret"], ok["secret"]]
        assert len(latest.headers["webhook-signature"].split(" ")) == 2
