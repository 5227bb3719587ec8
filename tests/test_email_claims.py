"""An email's claim belongs to one run of a job: a second run of the same job (the first one's worker cut
off, the job run again elsewhere) neither sends it again nor gives up on it."""

from typing import Any

import pytest
from databases import Database

from jobs.smtp import EmailInFlight, send_once
from service.core.queries import emails
from service.core.settings import Settings
from tests.conftest import MailBox


def _run(db: Database, settings: Settings, job_try: int) -> Any:
    return {"db": db, "settings": settings, "job_id": "job-1", "job_try": job_try}


async def test_a_second_run_waits_for_the_first_runs_claim(db: Database, settings: Settings, mail: MailBox) -> None:
    message = {"key": "k1", "to": "a@example.com", "subject": "s", "body": "b"}
    # The first run claimed the email and is still sending it (its worker cut off, say).
    assert await emails.claim(db, key="k1", recipient="a@example.com", subject="s", job_id="job-1#1")
    with pytest.raises(EmailInFlight) as waiting:
        await send_once(_run(db, settings, 2), **message)
    assert emails.CLAIM_LEASE_SECONDS - 5 < waiting.value.wait <= emails.CLAIM_LEASE_SECONDS  # until the lease ends
    assert mail.messages == []
    await emails.mark_sent(db, key="k1")  # the first run got through after all
    assert await send_once(_run(db, settings, 3), **message) is False
    assert mail.messages == []


async def test_a_refused_send_releases_its_claim_for_the_next_try(
    db: Database, settings: Settings, mail: MailBox
) -> None:
    message = {"key": "k2", "to": "b@example.com", "subject": "s", "body": "b"}
    mail.refuse_next = ["421 try again later"]
    with pytest.raises(Exception, match="try again later"):
        await send_once(_run(db, settings, 1), **message)
    assert await send_once(_run(db, settings, 2), **message) is True  # no lease to wait out
    assert len(mail.to("b@example.com")) == 1


def test_a_claim_outlives_every_run_that_can_hold_it() -> None:
    """The lease is longer than an email job can run (its timeout, and arq's a second later): a claim older
    than that belongs to a run that has ended, and another run need not wait longer (a lost worker's
    reminder waited two minutes)."""
    from jobs.emails import send_email_confirmation, send_task_reminder_email, send_welcome_email

    for function in (send_welcome_email, send_email_confirmation, send_task_reminder_email):
        assert function.timeout_s is not None
        assert function.timeout_s + 5 < emails.CLAIM_LEASE_SECONDS


async def test_a_claim_taken_over_after_its_lease_is_marked_as_possibly_sent_twice(db: Database) -> None:
    """A run that takes over a claim whose lease passed unmarked cannot know whether that send went out:
    the claim says so ("retaken"), and the worker logs it. A released claim (the send was refused,
    nothing went out) is gone, so the next claim is new."""
    fields = {"key": "k3", "recipient": "c@example.com", "subject": "s"}
    assert await emails.claim(db, **fields, job_id="job-3#1") == "new"
    assert await emails.claim(db, **fields, job_id="job-3#2") is None  # the first run's lease holds
    await db.execute("UPDATE emails SET claimed_at = now() - interval '1 hour' WHERE key = 'k3'")
    assert await emails.claim(db, **fields, job_id="job-3#2") == "retaken"
    await emails.release(db, key="k3", job_id="job-3#2")
    assert await emails.claim(db, **fields, job_id="job-3#3") == "new"
