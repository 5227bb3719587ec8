"""`python -m jobs [--slow] [--burst]`: arq's worker, kept running through Redis outages.

`arq jobs.worker.WorkerSettings` runs the same worker, but when Redis fails under arq (in the middle
of one of its WATCH transactions, python-arq/arq#498, or at startup and shutdown), the process
exits, leaving it to a supervisor to start it again. The poll loop itself rides out an outage
(jobs.fastworker); for the rest, the supervisor is built in here: the worker is closed (letting its
running jobs finish) and a fresh one starts once Redis answers, keeping the job ends Redis has yet to
take. SIGTERM and SIGINT still stop it for good, after arq's graceful wait.
"""

import argparse
import asyncio
import contextlib
import logging
import sys

import uvloop
from arq.connections import ArqRedis
from arq.worker import Worker, get_kwargs
from redis.exceptions import RedisError

from jobs.fastworker import FastWorker, Unfinished
from jobs.worker import SlowWorkerSettings, WorkerSettings, shutdown

log = logging.getLogger("jobs")
RESTART_DELAY = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="serve the slow queue (reports, long calculations)")
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    args = parser.parse_args(argv)
    settings = SlowWorkerSettings if args.slow else WorkerSettings
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as uvicorn does for the API: a faster loop
    unfinished = Unfinished()  # ends of jobs Redis did not take, said again by the next worker if need be
    while True:
        worker = FastWorker(**{**get_kwargs(settings), "burst": args.burst}, unfinished=unfinished)
        try:
            worker.run()
        except (RedisError, OSError) as exc:
            worker.loop.run_until_complete(_clean_up(worker))
            if worker.stopped_by is not None:  # asked to stop: Redis failing meanwhile changes nothing
                return 0
            log.warning("Redis failed under arq (%r); starting the worker again in %.0f s", exc, RESTART_DELAY)
            worker.loop.run_until_complete(asyncio.sleep(RESTART_DELAY))
            continue
        return 0


async def _clean_up(worker: Worker) -> None:
    """What arq's close() could not finish with Redis away: our shutdown hook, and the pool."""
    await shutdown(worker.ctx)  # idempotent: a no-op if arq got to run it
    pool: ArqRedis | None = worker.pool  # None when close() got that far (its pool is closed then)
    if pool is not None:
        with contextlib.suppress(RedisError, OSError):
            await pool.aclose(close_connection_pool=True)


if __name__ == "__main__":
    sys.exit(main())
