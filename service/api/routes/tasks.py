import hashlib
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import client_ip, current_user, token_subject
from service.api.background import accepted, own_job, submit, submit_all, submitter, within_quota
from service.api.conditional import respond_tagged
from service.api.errors import Forbidden, InvalidRequest, NotFound
from service.api.http import parse_body, parse_query
from service.api.openapi import operation
from service.api.owned import OwnedEndpoints
from service.api.responses import respond
from service.api.state import app_state
from service.core.queries.tasks import task_filters, tasks
from service.core.schemas import (
    JobAccepted,
    JobsAccepted,
    JobStatus,
    OccurrenceQuery,
    Occurrences,
    TaskBatchCreate,
    TaskCreate,
    TaskQuery,
    TaskUpdate,
)

endpoints = OwnedEndpoints(
    noun="task", tag="tasks", store=tasks, update_model=TaskUpdate, query_model=TaskQuery, filters=task_filters
)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as header values should be


def task_job_id(owner_id: int, idempotency_key: str | None) -> str | None:
    """The same key from the same user names the same job: the retried POST finds it instead of a new one."""
    if idempotency_key is None:
        return None
    if not IDEMPOTENCY_KEY.match(idempotency_key):
        message = "Must be 1 to 255 visible ASCII characters"
        raise InvalidRequest.header("Idempotency-Key", message, "string_pattern_mismatch")
    return f"task-{owner_id}-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}"


def _status_url(job_id: str) -> str:
    return f"/tasks/background/{job_id}/status"


@operation(summary="Create a task (in the background)", tag="tasks", body=TaskCreate, response=JobAccepted, status=202,
           errors=(422, 429), headers=("IdempotencyKey",))  # fmt: skip
async def create_task(request: Request) -> Response:
    token_subject(request)  # 401 before anything else
    data = await parse_body(request, TaskCreate)
    caller = await submitter(request)
    job_id = task_job_id(caller.user_id, request.headers.get("idempotency-key"))
    args = {"owner_id": caller.user_id, **data.model_dump(mode="json")}
    record = await submit(request, caller, name="process_new_task", args=args, job_id=job_id)
    return accepted(record, _status_url(record.job_id))


@operation(summary="Create up to 100 tasks (in the background), all or none", tag="tasks", body=TaskBatchCreate,
           response=JobsAccepted, status=202, errors=(422, 429), headers=("IdempotencyKey",),
           location=False)  # fmt: skip
async def create_tasks(request: Request) -> Response:
    """One job per task, in order; the batch's Idempotency-Key names job i `{key's job id}-{i}`."""
    token_subject(request)
    data = await parse_body(request, TaskBatchCreate)  # every item valid, or a 422 naming the bad ones
    caller = await submitter(request, jobs=len(data.tasks))
    batch_id = task_job_id(caller.user_id, request.headers.get("idempotency-key"))
    args = [{"owner_id": caller.user_id, **task.model_dump(mode="json")} for task in data.tasks]
    records = await submit_all(request, caller, name="process_new_task", args=args, batch_id=batch_id)
    jobs = [JobAccepted(job_id=record.job_id, status_url=_status_url(record.job_id)) for record in records]
    return respond(JobsAccepted(jobs=jobs), 202)


@operation(summary="Email yourself a reminder of a task", tag="tasks", response=JobAccepted, status=202,
           errors=(403, 404, 429))  # fmt: skip
async def remind(request: Request) -> Response:
    user = await current_user(request)
    if user.email_verified_at is None:
        raise Forbidden("Verify your email address first: follow the link in your welcome email")
    state = app_state(request)
    await within_quota(state, user.id, client_ip(request))
    task = await tasks.get(state.db, owner_id=user.id, row_id=request.path_params["id"])
    if task is None:
        raise NotFound("Task not found")
    args = {"task_id": task.id}
    record = await state.dispatcher.submit(name="send_task_reminder_email", owner_id=user.id, args=args)
    return accepted(record, _status_url(record.job_id))


@operation(summary="A task's next due times, in UTC, computed in your time zone", tag="tasks",
           query=OccurrenceQuery, response=Occurrences, errors=(404,))  # fmt: skip
async def occurrences(request: Request) -> Response:
    user = await current_user(request)
    count = parse_query(request, OccurrenceQuery).count
    found = await tasks.occurrences(
        app_state(request).db, owner_id=user.id, row_id=request.path_params["id"], count=count
    )
    if found is None:
        raise NotFound("Task not found")
    return respond(found)


@operation(summary="The status of a background job of yours", tag="tasks", response=JobStatus, errors=(404,),
           etag=True)  # fmt: skip
async def background_status(request: Request) -> Response:
    return respond_tagged(request, (await own_job(request, await current_user(request))).status())


routes = [
    Route("/tasks", create_task, methods=["POST"]),
    Route("/tasks/batch", create_tasks, methods=["POST"]),
    *endpoints.routes("/tasks"),
    Route("/tasks/{id:id}/remind", remind, methods=["POST"]),
    Route("/tasks/{id:id}/occurrences", occurrences, methods=["GET"]),
    Route("/tasks/background/{job_id:str}/status", background_status, methods=["GET"]),
]
