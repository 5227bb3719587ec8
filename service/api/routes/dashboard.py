"""GET /dashboard: a live page for operators (admins), in the spirit of Flower.

Browsers log in with a form that sets an HttpOnly, SameSite=Strict cookie; API clients may send
a Bearer token instead. Requests that change something and came with the cookie must also carry
the page's CSRF token (a header a cross-site form cannot set, derived from the session).
"""

import hashlib
import hmac
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from service.api.auth import authenticate, bearer_token, client_ip, user_for_session, user_for_token
from service.api.errors import Conflict, Forbidden, NotFound, Unauthorized
from service.api.http import parse_form, parse_query
from service.api.pages import STATIC, templates
from service.api.responses import JSONResponse, respond
from service.api.state import AppState, app_state
from service.api.throttle import TooManyRequests
from service.core import dispatch, keys
from service.core.dispatch import user_caps
from service.core.queries import dashboard
from service.core.queries import webhooks as webhook_queries
from service.core.queuestats import live_workers, queue_stats
from service.core.schemas import DashboardJobQuery, JobState, LoginForm, UserRecord
from service.core.settings import Environment

COOKIE = "tm_dashboard"
CSRF_HEADER = "x-csrf-token"
RETRYABLE = {JobState.FAILURE, JobState.REVOKED}


def csrf_token(state: AppState, session: str) -> str:
    return hmac.new(state.tokens.key.encode(), b"csrf:" + session.encode(), hashlib.sha256).hexdigest()


async def admin(request: Request, *, changes_state: bool = False) -> UserRecord:
    """The admin behind the Bearer header or the dashboard cookie (which, to change anything, needs the
    CSRF header too); 401 without a valid one, 403 for a user who is not an admin."""
    state = app_state(request)
    token = bearer_token(request)
    if token is not None:
        user = await user_for_token(state, token)
    else:
        session = request.cookies.get(COOKIE)
        if session is None:
            raise Unauthorized()
        given = request.headers.get(CSRF_HEADER, "")
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
        if changes_state and not hmac.compare_digest(given.encode(), csrf_token(state, session).encode()):
            raise Forbidden("Missing or invalid CSRF token")
        user = await user_for_session(state, session)
    if not user.is_admin:
        raise Forbidden("Administrator rights required")
    return user


def _login_page(error: str | None = None, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(templates.get_template("dashboard_login.html").render(error=error), status_code=status_code)


async def login_page(request: Request) -> Response:
    return _login_page()


async def login(request: Request) -> Response:
    form = await parse_form(request, LoginForm)
    state = app_state(request)
    try:
        user = await authenticate(state, login=form.username, password=form.password, client_ip=client_ip(request))
    except TooManyRequests as refused:
        return _login_page(f"{refused.detail}. Try again later.", 429)
    if user is None:
        return _login_page("Incorrect username or password.", 401)
    if not user.is_admin:
        return _login_page("The dashboard is for administrators.", 403)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        await state.sessions.start(user.id, user.token_version),  # a session, not an API token
        max_age=state.sessions.lifetime_seconds,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=state.settings.env is Environment.PRODUCTION,
    )
    return response


async def logout(request: Request) -> Response:
    if session := request.cookies.get(COOKIE):
        await app_state(request).sessions.end(session)  # the cookie, kept or stolen, opens nothing now
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


async def page(request: Request) -> Response:
    try:
        user = await admin(request)
    except Unauthorized:
        return RedirectResponse("/dashboard/login", status_code=303)
    except Forbidden:
        return _login_page("The dashboard is for administrators.", 403)
    state = app_state(request)
    session = request.cookies.get(COOKIE) or bearer_token(request) or ""
    html = templates.get_template("dashboard.html").render(user=user, csrf=csrf_token(state, session))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _worker(info: dict[bytes, bytes], now: float) -> dict[str, Any]:
    worker: dict[str, Any] = {key.decode(): value.decode() for key, value in info.items()}
    for key in ("pid", "complete", "failed", "retried", "ongoing"):
        worker[key] = int(worker[key])
    worker["uptime"] = now - float(worker["started_at"])
    worker["seen_ago"] = now - float(worker["last_beat"])
    return worker


async def _workers(state: AppState) -> list[dict[str, Any]]:
    """Every worker with a heartbeat in the last few seconds, from its own record."""
    now = time.time()
    ids = await live_workers(state.redis)
    async with state.redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(keys.WORKER + worker_id)
        found = await pipe.execute()
    workers = [_worker(info, now) for info in found if info]
    return sorted(workers, key=lambda worker: (worker["host"], worker["pid"]))


async def _cron(state: AppState) -> list[dict[str, Any]]:
    raw: dict[bytes, bytes] = await state.redis.hgetall(keys.CRON)  # type: ignore[misc]
    entries = {name.decode(): json.loads(value) for name, value in raw.items()}
    last = await dashboard.last_runs(state.db, names=list(entries))
    return [{"name": name, **entry, "last_run": last.get(name)} for name, entry in sorted(entries.items())]


async def overview(request: Request) -> Response:
    await admin(request)
    state = app_state(request)
    queue = await queue_stats(state.redis)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    body = {
        "now": time.time(),
        "queue": asdict(queue),
        "workers": await _workers(state),
        "cron": await _cron(state),
        "running": [job.model_dump(mode="json") for job in await dashboard.running_jobs(state.db)],
        "throughput": await dashboard.throughput(state.db, since=hour_ago),
        "durations": await dashboard.durations(state.db, since=hour_ago),
        "share": await _share(state),
        # Webhook deliveries failing (as the job history shows dead letters): failed, or retrying after a failure.
        "webhooks_failing": [row.model_dump(mode="json") for row in await webhook_queries.failing(state.db)],
    }
    return JSONResponse(body)


async def _share(state: AppState) -> list[dict[str, Any]]:
    """Who holds the most of each queue's fair share (USER_JOBS_ACTIVE, USER_SLOW_JOBS_ACTIVE)."""
    caps = user_caps(state.settings)
    return [{**row, "cap": caps.get(row["queue_name"])} for row in await dashboard.fair_share(state.db)]


async def search(request: Request) -> Response:
    await admin(request)
    query = parse_query(request, DashboardJobQuery)
    return respond(await dashboard.search_jobs(app_state(request).db, query=query))


async def _job(request: Request) -> Any:
    found = await dashboard.get_job(app_state(request).db, job_id=request.path_params["job_id"])
    if found is None:
        raise NotFound("Job not found")
    return found


async def job_detail(request: Request) -> Response:
    await admin(request)
    return respond(await _job(request))


async def retry(request: Request) -> Response:
    """Run a failed or revoked job again, with the same arguments and owner, as a new job."""
    await admin(request, changes_state=True)
    original = await _job(request)
    if original.state not in RETRYABLE:
        raise Conflict(f"Only failed or revoked jobs can be retried; this one is {original.state}")
    state = app_state(request)
    new = await state.dispatcher.submit(name=original.name, owner_id=original.owner_id, args=original.args)
    return respond(new.status(), status_code=202)


async def abort(request: Request) -> Response:
    await admin(request, changes_state=True)
    original = await _job(request)
    state = app_state(request)
    revoked = await dispatch.revoke(state.db, state.redis, original)
    if revoked is None:
        raise Conflict(f"Job already finished ({original.state})")
    return respond(revoked.status())


routes = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/login", login_page, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/api/overview", overview, methods=["GET"]),
    Route("/dashboard/api/jobs", search, methods=["GET"]),
    Route("/dashboard/api/jobs/{job_id:str}", job_detail, methods=["GET"]),
    Route("/dashboard/api/jobs/{job_id:str}/retry", retry, methods=["POST"]),
    Route("/dashboard/api/jobs/{job_id:str}/abort", abort, methods=["POST"]),
    Mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static"),
]
