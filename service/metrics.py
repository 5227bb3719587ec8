"""Prometheus metrics.

HTTP metrics live in each API process (prometheus-client; with several processes set
PROMETHEUS_MULTIPROC_DIR, see the README). Job metrics are cluster-wide: every worker and API
process adds to counters in Redis, so any API process's /metrics shows the whole system's jobs.
"""

import collections
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service import keys
from service.settings import Settings

log = logging.getLogger(__name__)

JOB_EVENTS = ("enqueued", "started", "succeeded", "failed", "retried", "aborted")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class HttpMetrics:
    """Requests by route template and status, and their latency, in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def process_registry(settings: Settings, registry: CollectorRegistry) -> CollectorRegistry:
    """This process's metrics; with PROMETHEUS_MULTIPROC_DIR set, those of every API process on the host."""
    if settings.prometheus_multiproc_dir is None:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(settings.prometheus_multiproc_dir))  # type: ignore[no-untyped-call]
    return merged


def add_job_metrics(pipe: Pipeline, job_events: Iterable[tuple[str, str, float | None]]) -> None:
    """Queue, on a Redis pipeline, job events (name, event, the run's seconds or None): each counted,
    and each duration in the histogram. Added up first, so a batch costs a command per field it touches."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    seconds_by_name: collections.defaultdict[str, float] = collections.defaultdict(float)
    for name, event, seconds in job_events:
        counts[keys.METRICS_JOB_EVENTS, f"{name}|{event}"] += 1
        if seconds is not None:
            # Each observation is counted in every bucket it fits: the stored counts are cumulative.
            for bound in DURATION_BUCKETS:
                if seconds <= bound:
                    counts[keys.METRICS_JOB_DURATION, f"{name}|{bound}"] += 1
            counts[keys.METRICS_JOB_DURATION, f"{name}|+Inf"] += 1
            seconds_by_name[name] += seconds
    for (key, field), count in counts.items():
        pipe.hincrby(key, field, count)
    for name, total in seconds_by_name.items():
        pipe.hincrbyfloat(keys.METRICS_JOB_DURATION, f"{name}|sum", total)


async def count_job_event(redis: Redis, name: str, event: str, seconds: float | None = None) -> None:
    """Best effort, like all metrics: a Redis outage loses a count, never a job."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_job_metrics(pipe, [(name, event, seconds)])
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.debug("job metric lost: %r", exc)


def _fields(raw: Mapping[bytes, bytes]) -> dict[tuple[str, str], str]:
    pairs = (key.decode().split("|", 1) for key in raw)
    return {(name, part): raw[f"{name}|{part}".encode()].decode() for name, part in pairs}


class Snapshot(Collector):
    """Metrics read from Redis and PostgreSQL at scrape time, served as they were read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def job_families(
    events: Mapping[bytes, bytes], durations: Mapping[bytes, bytes], gauges: Mapping[str, Any]
) -> list[Metric]:
    counters = {
        event: CounterMetricFamily(f"jobs_{event}", f"Jobs {event}, by name", labels=["name"]) for event in JOB_EVENTS
    }
    for (name, event), value in sorted(_fields(events).items()):
        if event in counters:
            counters[event].add_metric([name], float(value))
    duration = HistogramMetricFamily("job_duration_seconds", "Job run time, by name", labels=["name"])
    fields = _fields(durations)
    for name in sorted({name for name, _ in fields}):
        buckets = [(str(bound), float(fields.get((name, str(bound)), 0))) for bound in DURATION_BUCKETS]
        buckets.append(("+Inf", float(fields.get((name, "+Inf"), 0))))
        # Each observation was counted in every bucket it fits, so the stored counts are cumulative already.
        duration.add_metric([name], buckets, float(fields.get((name, "sum"), 0)))
    families: list[Metric] = [*counters.values(), duration]
    for metric, (help_text, value) in gauges.items():
        families.append(GaugeMetricFamily(metric, help_text, value=value))
    return families
