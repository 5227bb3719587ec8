"""Sending email over SMTP (aiosmtplib), at most once per key even when a job runs twice."""

import asyncio
import contextlib
import logging
from email.message import EmailMessage

import aiosmtplib
from opentelemetry.trace import SpanKind

from jobs.context import JobContext
from service.core import tracing
from service.core.queries import emails
from service.core.settings import Settings

log = logging.getLogger(__name__)


def message(settings: Settings, *, to: str, subject: str, body: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = settings.smtp_from
    email["To"] = to
    email["Subject"] = subject
    email.set_content(body)
    return email


async def send(settings: Settings, email: EmailMessage) -> None:
    attributes: dict[str, str | int] = {"server.address": settings.smtp_host, "server.port": settings.smtp_port}
    with tracing.tracer.start_as_current_span("smtp send", kind=SpanKind.CLIENT, attributes=attributes):
        await aiosmtplib.send(
            email, hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.smtp_timeout
        )


NOT_DELIVERED = (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPResponseException, ConnectionRefusedError)


class EmailInFlight(Exception):
    """Another run holds the email's claim and may be sending it: try again once its lease has passed,
    in `wait` seconds. A wait, not a failure: it uses up none of the job's tries."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


async def send_once(ctx: JobContext, *, key: str, to: str, subject: str, body: str) -> bool:
    """Send unless a run before this one did (True if sent now, False if it was sent before).

    What remains of "twice": a send that succeeded but whose mark failed (PostgreSQL lost between
    the two statements) is sent again by a later run, once the claim's lease has passed.
    """
    settings, db = ctx["settings"], ctx["db"]
    run = f"{ctx['job_id']}#{ctx['job_try']}"
    claimed = await emails.claim(db, key=key, recipient=to, subject=subject, job_id=run)
    if claimed == "retaken":
        log.warning("email %s: an earlier run's claim ended unmarked; sending it again (it may have gone)", key)
    if claimed is None:
        if await emails.was_sent(db, key=key):
            log.info("email %s was sent before; not sending it again", key)
            return False
        wait = await emails.lease_left(db, key=key)
        raise EmailInFlight(f"email {key} is being sent by another run; trying again in {wait:.0f} s", wait=wait)
    try:
        await send(settings, message(settings, to=to, subject=subject, body=body))
    except NOT_DELIVERED:
        # The server refused, or was never reached: nothing went out, so the next try need not wait for
        # the lease. After a timeout or a lost connection the message may have gone: the claim stays.
        with contextlib.suppress(Exception):
            await asyncio.shield(emails.release(db, key=key, job_id=run))
        raise
    await emails.mark_sent(db, key=key)
    return True
