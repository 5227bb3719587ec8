"""Email claims: each email is claimed before it is sent and marked after, so a re-run sends it once.

A claim belongs to one run of a job (its job id and try): another run, even of the same job (a worker
cut off the network, its job run again elsewhere), waits for the claim to be marked sent, released, or
to outlive its lease; the run that made it may still be sending."""

from typing import Literal

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql import insert

from service.core.tables import emails

# A claim older than this, never marked sent, was made by a run that has ended: longer than any email
# job may run (their timeout is 15 s; arq cancels them a second later), so that another run waits no
# longer than needed when a worker is lost with its claim.
CLAIM_LEASE_SECONDS = 30
LEASE = sa.text(f"interval '{CLAIM_LEASE_SECONDS} seconds'")


Claim = Literal["new", "retaken"]


async def claim(db: Database, *, key: str, recipient: str, subject: str, job_id: str) -> Claim | None:
    """Whether this run (job_id: the job's id and try) may send the email named key: nobody sent it, and
    no live claim of another run holds it. "retaken": an earlier claim ended unmarked (its lease
    passed, or it was this run's own, given again): that send's outcome is unknown, so this one may
    be a second copy. A released claim (the send was refused) is deleted, so claiming after it is new."""
    query = (
        insert(emails)
        .values(key=key, recipient=recipient, subject=subject, job_id=job_id)
        .on_conflict_do_update(
            index_elements=[emails.c.key],
            set_={"job_id": job_id, "claimed_at": sa.func.now()},
            where=sa.and_(
                emails.c.sent_at.is_(None),
                sa.or_(
                    emails.c.job_id == job_id,
                    emails.c.claimed_at < sa.func.now() - LEASE,
                ),
            ),
        )
        .returning(sa.literal_column("xmax::text <> '0'", sa.Boolean))  # updated (an earlier claim), not inserted
    )
    row = await db.fetch_one(query)
    if row is None:
        return None
    return "retaken" if row[0] else "new"


async def mark_sent(db: Database, *, key: str) -> None:
    await db.execute(emails.update().where(emails.c.key == key).values(sent_at=sa.func.now()))


async def release(db: Database, *, key: str, job_id: str) -> None:
    """Give up this run's claim (its send was refused: nothing went out): the next run may claim at once."""
    query = emails.delete().where(emails.c.key == key, emails.c.job_id == job_id, emails.c.sent_at.is_(None))
    await db.execute(query)


async def lease_left(db: Database, *, key: str) -> float:
    """Seconds until the claim on the email named key has outlived its lease (0 if it has, or is gone)."""
    left = sa.func.extract("epoch", emails.c.claimed_at + LEASE - sa.func.now())
    seconds = await db.fetch_val(sa.select(sa.func.greatest(left, 0)).where(emails.c.key == key))
    return float(seconds or 0)


async def was_sent(db: Database, *, key: str) -> bool:
    return await db.fetch_val(sa.select(emails.c.sent_at).where(emails.c.key == key)) is not None
