"""Every Redis key, channel and queue name the service and the worker share, in one namespace.

arq's own keys (arq:job:*, arq:result:*, arq:in-progress:*, arq:abort) keep arq's names so that the
arq CLI and any arq worker understand our jobs.
"""

from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

PREFIX = "tm:"

QUEUE = default_queue_name  # `arq jobs.worker.WorkerSettings` listens here, as any arq user expects
# Slow jobs have a queue and workers of their own (`arq jobs.worker.SlowWorkerSettings`): arq re-runs a
# crashed worker's job only once its in-progress key expires, after the longest timeout of that
# worker's functions, so fast jobs must not share a worker with jobs allowed to run for minutes.
SLOW_QUEUE = PREFIX + "queue:slow"
SLOW_JOBS = frozenset({"generate_report", "long_running_calculation"})
QUEUES = (QUEUE, SLOW_QUEUE)

THROTTLE = PREFIX + "throttle:"  # + rule + ":" + subject: a counter for the rule's current window
SESSION = PREFIX + "session:"  # + session id: "user id:token version", a dashboard login, expiring
RECONCILER_LOCK = PREFIX + "reconciler"  # held by the one worker reconciling at a time

JOB_OWNER = PREFIX + "owner:"  # + job id: the id of the user who submitted it, while it is queued (fair share)
JOB_EVENTS = PREFIX + "job-events:"  # + job id: a pub/sub channel, one message per state or progress change

METRICS_JOB_EVENTS = PREFIX + "metrics:job-events"  # hash "name|event" -> count, for every process
# hash "name|bucket" -> count of runs that took at most bucket seconds and more than the bucket below it;
# "name|sum" -> seconds in all
METRICS_JOB_DURATION = PREFIX + "metrics:job-durations"

WORKERS = PREFIX + "workers"  # sorted set: worker id -> last heartbeat (ms)
WORKER = PREFIX + "worker:"  # + worker id: a hash describing it, expiring unless refreshed
CRON = PREFIX + "cron"  # hash: cron job name -> {"schedule", "next_run"}, kept current by the workers
WORKER_BEAT_SECONDS = 5.0  # three commands a beat: an idle worker's largest share of its Redis traffic
WORKER_EXPIRES_SECONDS = 16  # a worker silent this long (three beats missed) is gone
SUSPECT = PREFIX + "suspect:"  # + worker id: when the reconciler first found it silent (confirmed a round later)

ARQ_JOB = job_key_prefix
ARQ_RESULT = result_key_prefix
ARQ_IN_PROGRESS = in_progress_key_prefix
ARQ_RETRY = retry_key_prefix  # + job id: arq's count of the job's tries
ARQ_ABORT = abort_jobs_ss


def job_events(job_id: str) -> str:
    return JOB_EVENTS + job_id


def wake(queue: str) -> str:
    """The pub/sub channel that wakes the idle workers of a queue when a job is enqueued on it."""
    return PREFIX + "wake:" + queue


def queue_for(job_name: str) -> str:
    return SLOW_QUEUE if job_name in SLOW_JOBS else QUEUE
