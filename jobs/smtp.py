"""Sending email over SMTP (aiosmtplib), at most once per key even when a job runs twice."""

import logging
from email.message import EmailMessage

import aiosmtplib

from jobs.context import JobContext
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
    await aiosmtplib.send(email, hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.smtp_timeout)


async def send_once(ctx: JobContext, *, key: str, to: str, subject: str, body: str) -> bool:
    """Send unless a run before this one did (True if sent now).

    What remains of "twice": a send that succeeded but whose mark failed (PostgreSQL lost between
    the two statements) is sent again by the next run, once the claim's lease has passed.
    """
    settings, db = ctx["settings"], ctx["db"]
    if not await emails.claim(db, key=key, recipient=to, subject=subject, job_id=ctx["job_id"]):
        log.info("email %s was sent before (or is being sent); not sending it again", key)
        return False
    await send(settings, message(settings, to=to, subject=subject, body=body))
    await emails.mark_sent(db, key=key)
    return True
