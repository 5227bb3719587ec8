"""What the dashboard shows from PostgreSQL: jobs searched every way, throughput and durations."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql import distinct_on

from service.core.queries.rows import as_dict
from service.core.schemas import ACTIVE_STATES, DashboardJob, DashboardJobQuery, JobState
from service.core.tables import jobs, users

_WITH_OWNER = jobs.outerjoin(users, users.c.id == jobs.c.owner_id)


def _select() -> sa.Select[Any]:
    return sa.select(*jobs.c, users.c.username).select_from(_WITH_OWNER)


def _filters(query: DashboardJobQuery) -> list[sa.ColumnElement[bool]]:
    filters: list[sa.ColumnElement[bool]] = []
    if query.name:
        filters.append(jobs.c.name == query.name)
    if query.state:
        filters.append(jobs.c.state == query.state.value)
    if query.user:
        who = query.user.strip().lower()
        match = sa.or_(sa.func.lower(users.c.username) == who, users.c.email == who)
        filters.append(sa.or_(match, users.c.id == int(who)) if who.isascii() and who.isdigit() else match)
    if query.since:
        filters.append(jobs.c.enqueued_at >= query.since)
    if query.until:
        filters.append(jobs.c.enqueued_at < query.until)
    if query.q:
        text = "%" + query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        filters.append(
            sa.or_(
                jobs.c.job_id == query.q,
                sa.cast(jobs.c.args, sa.Text).ilike(text),
                sa.cast(jobs.c.error, sa.Text).ilike(text),
            )
        )
    if query.dead:
        filters.append(sa.and_(jobs.c.state == JobState.FAILURE.value, jobs.c.error["exhausted"].as_boolean()))
    return filters


async def search_jobs(db: Database, *, query: DashboardJobQuery) -> list[DashboardJob]:
    select = (
        _select()
        .where(*_filters(query))
        .order_by(jobs.c.enqueued_at.desc(), jobs.c.job_id)
        .limit(query.limit)
        .offset(query.offset)
    )
    return [DashboardJob.model_validate(as_dict(row)) for row in await db.fetch_all(select)]


async def get_job(db: Database, *, job_id: str) -> DashboardJob | None:
    row = await db.fetch_one(_select().where(jobs.c.job_id == job_id))
    return None if row is None else DashboardJob.model_validate(as_dict(row))


async def running_jobs(db: Database, *, limit: int = 50) -> list[DashboardJob]:
    select = (
        _select()
        .where(jobs.c.state.in_([JobState.STARTED.value, JobState.PROGRESS.value]))
        .order_by(jobs.c.started_at)
        .limit(limit)
    )
    return [DashboardJob.model_validate(as_dict(row)) for row in await db.fetch_all(select)]


async def throughput(db: Database, *, since: datetime) -> list[dict[str, Any]]:
    """Jobs finished per minute, succeeded and failed, since then."""
    minute = sa.func.date_trunc("minute", jobs.c.finished_at).label("minute")
    select = (
        sa.select(
            minute,
            sa.func.count().filter(jobs.c.state == JobState.SUCCESS.value).label("succeeded"),
            sa.func.count().filter(jobs.c.state == JobState.FAILURE.value).label("failed"),
        )
        .where(jobs.c.finished_at >= since)
        .group_by(minute)
        .order_by(minute)
    )
    return [as_dict(row) for row in await db.fetch_all(select)]


async def durations(db: Database, *, since: datetime) -> list[dict[str, Any]]:
    """Run time per job name of the jobs that succeeded since then: count, mean and 95th percentile."""
    seconds = sa.func.extract("epoch", jobs.c.finished_at - jobs.c.started_at)
    select = (
        sa.select(
            jobs.c.name,
            sa.func.count().label("count"),
            sa.func.avg(seconds).label("mean"),
            sa.func.percentile_cont(0.95).within_group(seconds).label("p95"),
        )
        .where(jobs.c.finished_at >= since, jobs.c.state == JobState.SUCCESS.value, jobs.c.started_at.is_not(None))
        .group_by(jobs.c.name)
        .order_by(jobs.c.name)
    )
    return [
        {"name": row["name"], "count": row["count"], "mean": float(row["mean"]), "p95": float(row["p95"])}
        for row in await db.fetch_all(select)
    ]


async def last_runs(db: Database, *, names: list[str]) -> dict[str, dict[str, Any]]:
    """For each job name, when its latest run started and how it ended."""
    latest = (
        sa.select(jobs.c.name, jobs.c.state, jobs.c.started_at)
        .where(jobs.c.name.in_(names), jobs.c.started_at.is_not(None))
        .ext(distinct_on(jobs.c.name))
        .order_by(jobs.c.name, jobs.c.started_at.desc())
    )
    return {row["name"]: {"state": row["state"], "started_at": row["started_at"]} for row in await db.fetch_all(latest)}


async def fair_share(db: Database, *, limit: int = 10) -> list[dict[str, Any]]:
    """The users with the most jobs waiting or running, per queue (ix_jobs_active_owner_queue)."""
    active = jobs.c.state.in_([state.value for state in ACTIVE_STATES])
    query = (
        sa.select(users.c.username, jobs.c.queue_name, sa.func.count().label("active"))
        .select_from(jobs.join(users, users.c.id == jobs.c.owner_id))
        .where(active)
        .group_by(users.c.username, jobs.c.queue_name)
        .order_by(sa.func.count().desc(), users.c.username)
        .limit(limit)
    )
    return [as_dict(row) for row in await db.fetch_all(query)]
