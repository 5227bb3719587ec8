"""The edge of background work: the per-user job quota, the 202 that answers a submission, and a
caller's own job by id."""

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response

from service.api.auth import active_user, client_ip, token_subject
from service.api.errors import NotFound
from service.api.responses import respond
from service.api.state import AppState, app_state
from service.api.throttle import Check, Limit
from service.core.queries import job_records
from service.core.schemas import JobAccepted, JobRecord, UserRecord

JOB_ID = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")


def accepted(record: JobRecord, status_url: str) -> Response:
    """202 with the job id and where to follow it."""
    return respond(JobAccepted(job_id=record.job_id, status_url=status_url), 202, headers={"Location": status_url})


async def own_job(request: Request, user: UserRecord) -> JobRecord:
    """The job named in the path if it is the caller's; 404 otherwise (never a hint that it exists)."""
    job_id: str = request.path_params["job_id"]
    record = (
        await job_records.get(app_state(request).db, job_id=job_id, owner_id=user.id) if JOB_ID.match(job_id) else None
    )
    if record is None:
        raise NotFound("Job not found")
    return record


async def within_write_quota(state: AppState, user: UserRecord) -> None:
    """At most WRITE_QUOTA_PER_MINUTE item and task writes a minute per user (429 with Retry-After beyond)."""
    if quota := state.settings.write_quota_per_minute:
        await state.throttle.check(Check(Limit("writes", quota, 60), str(user.id), "Too many changes this minute"))


async def submitter(request: Request) -> UserRecord:
    """The caller of a job submission, once their job quota has room: the user is read and the quota
    counted at the same time, one round trip of each kind in parallel rather than one after the other.
    A bad token is 401 before anything; a user that is gone is 401 before a full quota's 429."""
    user_id, token_version = token_subject(request)
    state = app_state(request)
    user, counted = await asyncio.gather(
        active_user(state, user_id, token_version),
        within_quota(state, user_id, client_ip(request)),
        return_exceptions=True,
    )
    for outcome in (user, counted):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(user, UserRecord)
    return user


async def within_quota(state: AppState, user_id: int, address: str) -> None:
    """At most ENQUEUE_QUOTA_PER_MINUTE jobs a minute per user, and ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE
    per client address, so that fresh accounts do not bring fresh quotas (429 with Retry-After beyond)."""
    settings = state.settings
    checks = []
    if settings.enqueue_quota_per_minute:
        per_user = Limit("enqueue", settings.enqueue_quota_per_minute, 60)
        checks.append(Check(per_user, str(user_id), "Job quota exceeded: too many jobs this minute"))
    if settings.enqueue_quota_per_address_per_minute:
        per_address = Limit("enqueue-ip", settings.enqueue_quota_per_address_per_minute, 60)
        checks.append(Check(per_address, address, "Job quota exceeded: too many jobs from this address this minute"))
    if checks:
        await state.throttle.check(*checks)  # counted together, in one round trip (service.api.throttle)
