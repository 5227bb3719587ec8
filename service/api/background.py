"""The edge of background work: the per-user job quota, the 202 that answers a submission, and a
caller's own job by id."""

import re

from starlette.requests import Request
from starlette.responses import Response

from service.api.errors import NotFound
from service.api.responses import respond
from service.api.state import AppState, app_state
from service.api.throttle import Limit
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


async def within_quota(state: AppState, user: UserRecord) -> None:
    """At most ENQUEUE_QUOTA_PER_MINUTE jobs a minute per user (429 with Retry-After beyond)."""
    quota = state.settings.enqueue_quota_per_minute
    if quota:
        rule = Limit("enqueue", quota, 60)
        await state.throttle.check(rule, str(user.id), "Job quota exceeded: too many jobs this minute")
