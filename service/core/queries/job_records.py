"""The job history in PostgreSQL: the source of truth for every job's status, beyond arq's result TTL.

Final states are sticky: every transition is guarded by `state IN (active states)`, so a late or
duplicate update from a re-run or a racing worker cannot turn a REVOKED or SUCCESS job back.
"""

import functools
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from databases import Database

from service.core.queries.prepared import Prepared, decoded, param
from service.core.queries.rows import as_dict
from service.core.queries.webhooks import job_finished_deliveries
from service.core.schemas import ACTIVE_STATES, JobQuery, JobRecord, JobState
from service.core.tables import jobs

_ACTIVE = [state.value for state in ACTIVE_STATES]


def _record(row: Any) -> JobRecord:
    return JobRecord.model_validate(as_dict(row))


async def get(db: Database, *, job_id: str, owner_id: int | None = None) -> JobRecord | None:
    """The job; with owner_id, only if it is theirs."""
    query = jobs.select().where(jobs.c.job_id == job_id)
    if owner_id is not None:
        query = query.where(jobs.c.owner_id == owner_id)
    row = await db.fetch_one(query)
    return None if row is None else _record(row)


async def page(db: Database, *, owner_id: int | None, query: JobQuery) -> list[JobRecord]:
    """Newest first; every job for owner_id None (admins), else that user's."""
    select = jobs.select().order_by(jobs.c.enqueued_at.desc(), jobs.c.job_id).limit(query.limit).offset(query.offset)
    if owner_id is not None:
        select = select.where(jobs.c.owner_id == owner_id)
    if query.state is not None:
        select = select.where(jobs.c.state == query.state.value)
    if query.name is not None:
        select = select.where(jobs.c.name == query.name)
    return [_record(row) for row in await db.fetch_all(select)]


@functools.cache
def _transition(columns: tuple[str, ...], final: bool) -> Prepared:
    """UPDATE of an active job to a new state, setting these columns (and finished_at when final; a final
    one queues the job.finished webhook deliveries in the same statement)."""
    values: dict[str, Any] = {name: param(name, type_=jobs.c[name].type) for name in ("state", *columns)}
    if final:
        values["finished_at"] = sa.func.now()
    prepared = Prepared(
        jobs.update()
        .where(jobs.c.job_id == param("job_id"), jobs.c.state.in_(_ACTIVE))
        .values(version=jobs.c.version + 1, **values)
        .returning(*jobs.c)
    )
    if final:
        prepared.sql = job_finished_deliveries(prepared.sql)
    return prepared


async def transition(db: Database, *, job_id: str, state: JobState, **values: Any) -> JobRecord | None:
    """Move an active job to state (setting values too); None if it is unknown or already final."""
    statement = _transition(tuple(sorted(values)), state.is_final)
    row = await statement.fetch_one(db, job_id=job_id, state=state.value, **values)
    return None if row is None else JobRecord.model_validate(row)


async def finish(db: Database, *, job_id: str, state: JobState, **values: Any) -> JobRecord | None:
    """Move an active job to a final state, stamping finished_at; None if it is unknown or already final."""
    assert state.is_final
    return await transition(db, job_id=job_id, state=state, **values)


async def unsettled(db: Database, *, older_than_seconds: int, limit: int = 1000) -> list[JobRecord]:
    """Active jobs that nothing has touched for a while: waiting since then, or running since then."""
    since = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds)
    waiting = jobs.c.state.in_([JobState.PENDING.value, JobState.RETRY.value])
    running = jobs.c.state.in_([JobState.STARTED.value, JobState.PROGRESS.value])
    query = (
        jobs.select()
        .where(sa.or_(sa.and_(waiting, jobs.c.enqueued_at < since), sa.and_(running, jobs.c.started_at < since)))
        .order_by(jobs.c.enqueued_at)
        .limit(limit)
    )
    return [_record(row) for row in await db.fetch_all(query)]


async def prune_unowned(db: Database, *, older_than_days: int) -> int:
    """Forget finished jobs nobody owns (cron runs) after a while; users' jobs are kept."""
    query = (
        jobs.delete()
        .where(
            jobs.c.owner_id.is_(None),
            jobs.c.finished_at < sa.func.now() - sa.func.make_interval(0, 0, 0, older_than_days),
        )
        .returning(jobs.c.job_id)
    )
    return len(await db.fetch_all(query))


async def count_running(db: Database) -> int:
    query = sa.select(sa.func.count()).where(jobs.c.state.in_([JobState.STARTED.value, JobState.PROGRESS.value]))
    return int(await db.fetch_val(query))


_ACTIVE_SQL = ", ".join(f"'{state}'" for state in sorted(_ACTIVE))
_START_MANY = f"""
INSERT INTO jobs (job_id, name, queue_name, args, state, tries, started_at, worker_id)
SELECT job_id, name, queue_name, args, 'STARTED', tries, now(), worker_id
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::jsonb[], $5::integer[], $6::varchar[])
    AS started(job_id, name, queue_name, args, tries, worker_id)
ON CONFLICT (job_id) DO UPDATE SET
    state = 'STARTED', tries = EXCLUDED.tries, started_at = now(), error = NULL, progress = NULL,
    worker_id = EXCLUDED.worker_id, version = jobs.version + 1
WHERE jobs.state IN ({_ACTIVE_SQL})
RETURNING jobs.*
"""
# With the job.finished webhook deliveries of those jobs queued in the same statement.
_SUCCEED_MANY = job_finished_deliveries(f"""
UPDATE jobs SET state = 'SUCCESS', result = done.result, finished_at = now(), version = jobs.version + 1
FROM unnest($1::varchar[], $2::jsonb[]) AS done(job_id, result)
WHERE jobs.job_id = done.job_id AND jobs.state IN ({_ACTIVE_SQL})
RETURNING jobs.*
""")
# A user may hold at most `cap` active jobs on a queue (caps: queue name -> cap; none for unowned jobs):
# the rows past that are left out, as are job ids known already. A job submitted with its owner's token
# version is left out too unless that owner is active and of that version (the request's token is not
# older than their last password change): the check a separate read of the user made before, here in
# the same statement.
_ACCEPTABLE = f"""
WITH incoming AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.owner_id, i.queue_name ORDER BY i.ord) AS nth
    FROM unnest(
        $1::varchar[], $2::varchar[], $3::varchar[], $4::bigint[], $5::jsonb[], $6::varchar[], $7::varchar[],
        $10::integer[]
    ) WITH ORDINALITY AS i(job_id, name, queue_name, owner_id, args, request_id, trace_context, owner_version, ord)
),
caps AS (SELECT * FROM unnest($8::varchar[], $9::integer[]) AS c(queue_name, cap)),
active AS (  -- counted up to the cap only: the count costs no more than the cap, however long the backlog
    SELECT p.owner_id, p.queue_name, (
        SELECT count(*) FROM (
            SELECT 1 FROM jobs j
            WHERE j.owner_id = p.owner_id AND j.queue_name = p.queue_name AND j.state IN ({_ACTIVE_SQL})
            LIMIT c.cap
        ) AS counted
    ) AS n
    FROM (SELECT DISTINCT owner_id, queue_name FROM incoming WHERE owner_id IS NOT NULL) AS p
    JOIN caps AS c USING (queue_name)
),
acceptable AS (
    SELECT i.* FROM incoming i
    LEFT JOIN caps c ON c.queue_name = i.queue_name
    LEFT JOIN active a ON a.owner_id = i.owner_id AND a.queue_name = i.queue_name
    LEFT JOIN users u ON u.id = i.owner_id AND i.owner_version IS NOT NULL
    WHERE (i.owner_id IS NULL OR c.cap IS NULL OR coalesce(a.n, 0) + i.nth <= c.cap)
        AND (i.owner_version IS NULL OR (u.is_active AND u.token_version = i.owner_version))
)
INSERT INTO jobs (job_id, name, queue_name, owner_id, args, request_id, trace_context)
SELECT job_id, name, queue_name, owner_id, args, request_id, trace_context FROM acceptable
"""
_ACCEPT_MANY = (
    _ACCEPTABLE
    + """
ORDER BY ord
ON CONFLICT (job_id) DO NOTHING
RETURNING jobs.*
"""
)
# All or none: nothing unless every row is acceptable, and a known job id fails the whole statement
# (a unique violation) instead of being left out.
_ACCEPT_ALL = (
    _ACCEPTABLE
    + """
WHERE (SELECT count(*) FROM acceptable) = (SELECT count(*) FROM incoming)
ORDER BY ord
RETURNING jobs.*
"""
)
_JSON_COLUMNS = frozenset({"args", "progress", "result", "error"})


async def _many(db: Database, sql: str, *columns: list[Any]) -> dict[str, JobRecord]:
    async with db.connection() as connection:
        records = await connection.raw_connection.fetch(sql, *columns)
    return {record["job_id"]: JobRecord.model_validate(decoded(record, _JSON_COLUMNS)) for record in records}


async def accept_many(
    db: Database, accepted: list[dict[str, Any]], caps: Mapping[str, int] | None = None
) -> dict[str, JobRecord]:
    """Record accepted jobs as PENDING, in one statement (joining the caller's transaction, if any):
    the rows it created, by job id. Left out: a job id known already, a job past its owner's cap of
    active jobs on its queue (caps: queue name -> cap), and one whose `owner_version` (the token version
    it was submitted with, if any) is not its active owner's."""
    return await _accept(db, _ACCEPT_MANY, accepted, caps or {})


async def accept_all(
    db: Database, accepted: list[dict[str, Any]], caps: Mapping[str, int] | None = None
) -> dict[str, JobRecord]:
    """`accept_many`, all or none, in one statement: every job's row, or none (empty) when one of them
    would be left out for its cap or its owner. A job id known already raises asyncpg's
    UniqueViolationError, and nothing is written."""
    return await _accept(db, _ACCEPT_ALL, accepted, caps or {})


async def _accept(
    db: Database, sql: str, accepted: list[dict[str, Any]], caps: Mapping[str, int]
) -> dict[str, JobRecord]:
    return await _many(
        db,
        sql,
        *([job[column] for job in accepted] for column in ("job_id", "name", "queue_name", "owner_id")),
        [orjson.dumps(job["args"]).decode() for job in accepted],
        [job["request_id"] for job in accepted],
        [job.get("trace_context") for job in accepted],
        list(caps),
        list(caps.values()),
        [job.get("owner_version") for job in accepted],
    )


async def get_many(db: Database, *, job_ids: list[str]) -> dict[str, JobRecord]:
    """The jobs of these ids that exist, by job id, in one statement."""
    rows = await db.fetch_all(jobs.select().where(jobs.c.job_id.in_(job_ids)))
    return {record.job_id: record for record in map(_record, rows)}


async def start_many(db: Database, started: list[dict[str, Any]]) -> dict[str, JobRecord]:
    """`start` for many jobs in one statement (each job at most once); jobs already final are left out."""
    return await _many(
        db,
        _START_MANY,
        [job["job_id"] for job in started],
        [job["name"] for job in started],
        [job["queue_name"] for job in started],
        [orjson.dumps(job["args"]).decode() for job in started],
        [job["tries"] for job in started],
        [job["worker_id"] for job in started],
    )


async def succeed_many(db: Database, results: dict[str, Any]) -> dict[str, JobRecord]:
    """`finish(SUCCESS, result=...)` for many jobs in one statement; jobs already final are left out."""
    return await _many(db, _SUCCEED_MANY, list(results), [orjson.dumps(result).decode() for result in results.values()])
