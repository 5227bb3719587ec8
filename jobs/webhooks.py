"""Webhook delivery, in every worker of the fast queue, and the cron that emits task.due.

The deliverer takes due rows from webhook_deliveries (service.core.queries.webhooks.claim_due), a few at
a time, and POSTs each with httpx: to an address that service.core.ssrf checked (the connection goes
to that address, the Host header and TLS name stay the URL's), redirects followed by hand, each hop
checked again. A 2xx delivers it; anything else is retried with exponential backoff and jitter until
WEBHOOK_MAX_ATTEMPTS, then marked failed. A URL refused as unsafe fails at once.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx
from databases import Database

from jobs.context import JobContext
from jobs.lifecycle import job
from jobs.retry import backoff
from service.core import ssrf, webhooks
from service.core.queries import webhooks as queries
from service.core.schemas import DeliveryStatus
from service.core.settings import Settings

log = logging.getLogger(__name__)
LEASE_MARGIN = 30.0  # seconds beyond an attempt's timeout before another worker may take the row over


@dataclass(frozen=True)
class Attempt:
    """What came of one POST: the receiver's status, or why there was none."""

    status_code: int | None = None
    error: str | None = None
    refused: bool = False  # the URL (or a redirect) leads somewhere webhooks may not go: no retry

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _pinned(target: ssrf.Target) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL with the checked address in place of the host, the Host header, and the TLS name."""
    address = target.addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    default = ssrf.DEFAULT_PORTS[target.url.scheme] == target.port
    netloc = shown if default else f"{shown}:{target.port}"
    url = target.url._replace(netloc=netloc).geturl()
    host = target.url.netloc.rpartition("@")[2]  # as the URL gave it (credentials were refused already)
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    return url, {"host": host}, extensions


class Sender:
    """POSTs signed events where the policy allows, through one httpx client (its pool reused)."""

    def __init__(self, settings: Settings) -> None:
        self.policy = ssrf.Policy.parse(settings.webhook_allowed_hosts)
        self.timeout = settings.webhook_timeout_seconds
        self.max_redirects = settings.webhook_max_redirects
        # No proxy from the environment: a proxy would connect to the host by its name, not the checked address.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False, verify=True
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def post(self, url: str, payload: bytes, headers: dict[str, str]) -> Attempt:
        try:
            async with asyncio.timeout(self.timeout):  # the whole attempt, redirects included
                return await self._follow(url, payload, headers)
        except ssrf.Unresolvable as error:
            return Attempt(error=error.message)
        except ssrf.UnsafeTarget as error:
            return Attempt(error=f"refused: {error.message}", refused=True)
        except TimeoutError:
            return Attempt(error=f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as error:
            return Attempt(error=f"{type(error).__name__}: {error}"[:500])

    async def _follow(self, url: str, payload: bytes, headers: dict[str, str]) -> Attempt:
        for _hop in range(self.max_redirects + 1):
            target = await ssrf.check(url, self.policy)
            pinned, host, extensions = _pinned(target)
            request = self.client.build_request(
                "POST", pinned, content=payload, headers={**headers, **host}, extensions=extensions
            )
            response = await self.client.send(request, stream=True)  # the body is not read: a status is all
            await response.aclose()
            location = response.headers.get("location")
            if not (response.is_redirect and location):
                return Attempt(status_code=response.status_code)
            url = urljoin(url, location)
        return Attempt(error=f"more than {self.max_redirects} redirects", refused=True)


def _next_step(attempt: Attempt, tries: int, settings: Settings) -> tuple[DeliveryStatus, float | None]:
    """The delivery's status after this attempt, and when the next one goes (None: none)."""
    if attempt.delivered:
        return DeliveryStatus.DELIVERED, None
    if attempt.refused or tries >= settings.webhook_max_attempts:
        return DeliveryStatus.FAILED, None
    wait = backoff(tries, base=settings.webhook_retry_base_seconds, cap=settings.webhook_retry_max_seconds)
    return DeliveryStatus.RETRYING, wait


async def deliver(db: Database, sender: Sender, settings: Settings, row: dict[str, Any]) -> Attempt:
    """One attempt of one claimed delivery, and its outcome recorded."""
    if not row["active"]:
        attempt = Attempt(error="the webhook is disabled", refused=True)
    else:
        payload = webhooks.body(row["event_type"], row["created_at"], row["data"])
        now = datetime.now(UTC)
        headers = webhooks.signed_headers(event_id=row["event_id"], payload=payload, secrets=row["secrets"], now=now)
        attempt = await sender.post(row["url"], payload, headers)
    status, retry_in = _next_step(attempt, row["attempts"], settings)
    extra = {"delivery": row["id"], "event_id": row["event_id"], "attempt": row["attempts"], "status": status.value}
    log.info("webhook %s: %s", status.value, attempt.error or attempt.status_code, extra=extra)
    error = attempt.error or (None if attempt.delivered else f"the receiver answered {attempt.status_code}")
    await queries.record_outcome(
        db,
        delivery_id=row["id"],
        attempt=row["attempts"],
        status=status,
        status_code=attempt.status_code,
        error=error,
        retry_in=retry_in,
    )
    return attempt


async def run_deliveries(db: Database, settings: Settings) -> None:
    """Until cancelled: take due deliveries (up to WEBHOOK_CONCURRENCY at once) and send them; when
    fewer were due, wait WEBHOOK_POLL_SECONDS (one indexed query a poll while idle)."""
    sender = Sender(settings)
    lease = settings.webhook_timeout_seconds + LEASE_MARGIN
    try:
        while True:
            claimed: list[dict[str, Any]] = []
            try:
                claimed = await queries.claim_due(db, limit=settings.webhook_concurrency, lease_seconds=lease)
                await asyncio.gather(*(deliver(db, sender, settings, row) for row in claimed))
            except Exception:  # PostgreSQL away: the leases bring the rows back; try again at the next poll
                log.warning("webhook deliveries interrupted; trying again shortly", exc_info=True)
            if len(claimed) < settings.webhook_concurrency:
                await asyncio.sleep(settings.webhook_poll_seconds)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(sender.close())


@job(timeout=20)
async def announce_due_tasks(ctx: JobContext) -> dict[str, int]:
    """Cron: task.due for each open task whose due time has passed, once per task and due date."""
    tasks = deliveries = 0
    while True:
        found, queued = await queries.announce_due_tasks(ctx["db"])
        tasks, deliveries = tasks + found, deliveries + queued
        if found < queries.DUE_PAGE:
            return {"tasks": tasks, "deliveries": deliveries}
