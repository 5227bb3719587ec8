"""The edge of background work: the per-user job quota, the 202 that answers a submission, and a
caller's own job by id."""

import re
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from service.api.auth import active_user, client_ip, token_subject
from service.api.errors import InvalidAuthToken, NotFound
from service.api.responses import respond
from service.api.state import AppState, app_state
from service.api.throttle import Check, Limit, TooManyRequests
from service.core.errors import OwnerNotActive
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


class Submitter(NamedTuple):
    """Who submits a job: the user id and token version of a checked token. Whether that user is
    active, and the token not older than their last password change, is checked where the job is
    recorded (service.core.dispatch), in the same statement, not by a read of its own."""

    user_id: int
    token_version: int


async def submitter(request: Request, jobs: int = 1) -> Submitter:
    """The caller of a submission of `jobs` jobs, once their job quota has room for them all. A bad token
    is 401 before anything; a user that is gone is 401 before a full quota's 429."""
    caller = Submitter(*token_subject(request))
    state = app_state(request)
    try:
        await within_quota(state, caller.user_id, client_ip(request), jobs)
    except TooManyRequests:
        await active_user(state, caller.user_id, caller.token_version)
        raise
    return caller


async def submit(
    request: Request, caller: Submitter, *, name: str, args: dict[str, Any], job_id: str | None = None
) -> JobRecord:
    """Accept the caller's job (401 if the caller is no longer active, or the token older than their
    last password change)."""
    try:
        return await app_state(request).dispatcher.submit(
            name=name, owner_id=caller.user_id, args=args, job_id=job_id, owner_version=caller.token_version
        )
    except OwnerNotActive:
        raise InvalidAuthToken() from None


async def submit_all(
    request: Request, caller: Submitter, *, name: str, args: list[dict[str, Any]], batch_id: str | None
) -> list[JobRecord]:
    """`submit` for a batch, all or none (service.core.dispatch.Dispatcher.submit_all)."""
    try:
        return await app_state(request).dispatcher.submit_all(
            name=name, owner_id=caller.user_id, args=args, batch_id=batch_id, owner_version=caller.token_version
        )
    except OwnerNotActive:
        raise InvalidAuthToken() from None


async def within_quota(state: AppState, user_id: int, address: str, jobs: int = 1) -> None:
    """At most ENQUEUE_QUOTA_PER_MINUTE jobs a minute per user, and ENQUEUE_QUOTA_PER_ADDRESS_PER_MINUTE
    per client address, so that fresh accounts do not bring fresh quotas (429 with Retry-After beyond).
    A submission of several jobs counts as that many."""
    settings = state.settings
    checks = []
    if settings.enqueue_quota_per_minute:
        per_user = Limit("enqueue", settings.enqueue_quota_per_minute, 60)
        checks.append(Check(per_user, str(user_id), "Job quota exceeded: too many jobs this minute", jobs))
    if settings.enqueue_quota_per_address_per_minute:
        per_address = Limit("enqueue-ip", settings.enqueue_quota_per_address_per_minute, 60)
        message = "Job quota exceeded: too many jobs from this address this minute"
        checks.append(Check(per_address, address, message, jobs))
    if checks:
        await state.throttle.check(*checks)  # counted together, in one round trip (service.api.throttle)
