"""The arq `ctx` our jobs receive, typed (saq's Context, for arq)."""

from datetime import datetime
from typing import TypedDict

from arq.connections import ArqRedis
from databases import Database

from jobs.heartbeat import WorkerStats
from jobs.history import History
from service.core.settings import Settings


class WorkerContext(TypedDict):
    """Set once per worker process: by arq (redis) and by our on_startup."""

    redis: ArqRedis
    settings: Settings
    db: Database
    stats: WorkerStats
    history: History


class JobContext(WorkerContext):
    """What each job run gets: the worker's context plus arq's facts about this run."""

    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
