"""Background jobs: the demo jobs, the status of any job of yours, its live events, abort."""

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.api.auth import current_user
from service.api.background import accepted, own_job, submit, submitter
from service.api.conditional import Tagged, none_match
from service.api.errors import Conflict, Forbidden, NotFound
from service.api.http import parse_body, parse_query, while_connected
from service.api.middleware import extend_deadline
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import app_state
from service.api.streams import changed, status_events
from service.core import dispatch
from service.core.queries import job_records
from service.core.schemas import (
    JobAccepted,
    JobQuery,
    JobRecord,
    JobStatus,
    JobWait,
    LongCalcRequest,
    ReportRequest,
    SendEmailRequest,
)


async def _submit(request: Request, name: str, args: dict[str, object]) -> Response:
    record = await submit(request, await submitter(request), name=name, args=args)
    return accepted(record, f"/jobs/{record.job_id}")


@operation(summary="Email yourself the welcome message (demo job)", tag="jobs", body=SendEmailRequest,
           response=JobAccepted, status=202, errors=(403, 429))  # fmt: skip
async def send_email(request: Request) -> Response:
    data = await parse_body(request, SendEmailRequest)
    user = await current_user(request)
    # Mail goes only to an address its owner verified: the service never mails a stranger for a caller.
    if data.recipient_email.lower() != user.email or user.email_verified_at is None:
        raise Forbidden("Mail goes only to your own address, once you have verified it")
    return await _submit(request, "send_welcome_email", data.model_dump(mode="json"))


@operation(summary="A CSV report of your tasks", tag="jobs", body=ReportRequest, response=JobAccepted, status=202,
           errors=(429,))  # fmt: skip
async def generate_report(request: Request) -> Response:
    await parse_body(request, ReportRequest)
    user = await current_user(request)
    return await _submit(request, "generate_report", {"owner_id": user.id})


@operation(summary="a + b, slowly, with progress", tag="jobs", body=LongCalcRequest, response=JobAccepted, status=202,
           errors=(429,))  # fmt: skip
async def long_calc(request: Request) -> Response:
    data = await parse_body(request, LongCalcRequest)
    return await _submit(request, "long_running_calculation", data.model_dump(mode="json"))


@operation(summary="Your jobs, newest first", tag="jobs", query=JobQuery, response=JobStatus, many=True)
async def list_jobs(request: Request) -> Response:
    user = await current_user(request)
    found = await job_records.page(app_state(request).db, owner_id=user.id, query=parse_query(request, JobQuery))
    return respond([record.status() for record in found])


@operation(summary="The status of one of your jobs; with wait and If-None-Match, at its next change", tag="jobs",
           query=JobWait, response=JobStatus, errors=(404, 429), etag=True)  # fmt: skip
async def job_status(request: Request) -> Response:
    """A long-poll when asked to wait with the ETag of the status it holds: the answer comes at the job's
    next change (200), or once `wait` seconds have passed (304). Without If-None-Match, or with another
    tag, or for a finished job, the answer is at once."""
    user = await current_user(request)
    wait = parse_query(request, JobWait).wait
    record = await own_job(request, user)
    status = Tagged(record.status())
    held = request.headers.get("if-none-match")
    # `*` matches every status there will be: nothing to wait for.
    if wait and not record.state.is_final and held and held.strip() != "*" and none_match(held, status.etag):
        status = Tagged((await _next_change(request, user.id, record, status.etag, wait)).status())
    return status.response(request)


async def _next_change(request: Request, user_id: int, record: JobRecord, etag: str, wait: float) -> JobRecord:
    """The job at its next change, or as it is after `wait` seconds: a stream, for the caps (429 beyond)."""
    state = app_state(request)
    state.streams.admit(user_id)
    extend_deadline(request.scope, wait)

    async def follow() -> JobRecord | None:
        async with state.streams.follow(record.job_id, user_id) as changes:
            return await changed(state.db, changes, record.job_id, etag, wait)

    found = await while_connected(request, follow())  # a client gone frees its stream at once
    if found is None:
        raise NotFound("Job not found")
    return found


@operation(summary="Abort one of your queued or running jobs", tag="jobs", response=JobStatus, errors=(404, 409))
async def abort_job(request: Request) -> Response:
    record = await own_job(request, await current_user(request))
    state = app_state(request)
    revoked = await dispatch.revoke(state.db, state.redis, record)
    if revoked is None:
        raise Conflict(f"Job already finished ({record.state})")
    return respond(revoked.status())


@operation(summary="Your job's state and progress as Server-Sent Events", tag="jobs", errors=(404, 429),
           events=JobStatus)  # fmt: skip
async def job_events(request: Request) -> Response:
    user = await current_user(request)
    record = await own_job(request, user)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    state = app_state(request)
    state.streams.admit(user.id)  # 429 beyond the caps

    async def stream() -> AsyncIterator[bytes]:
        # Followed from the stream's first step to its last: a client gone early holds nothing.
        async with state.streams.follow(record.job_id, user.id) as changes:
            async for event in status_events(state.db, changes, record.job_id):
                yield event

    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


routes = [
    Route("/jobs/send-email", send_email, methods=["POST"]),
    Route("/jobs/generate-report", generate_report, methods=["POST"]),
    Route("/jobs/long-calc", long_calc, methods=["POST"]),
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs/{job_id:str}", job_status, methods=["GET"]),
    Route("/jobs/{job_id:str}", abort_job, methods=["DELETE"]),
    Route("/jobs/{job_id:str}/events", job_events, methods=["GET"]),
]
