"""Prometheus metrics as /metrics serves them.

HTTP metrics live in each API process (prometheus-client; with several processes set
PROMETHEUS_MULTIPROC_DIR, see the README). Job metrics are read from the counters every process
keeps in Redis (service.core.metrics) at scrape time.
"""

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.core.metrics import DURATION_BUCKETS, JOB_EVENTS
from service.core.settings import Settings


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

        # Each (method, route, status)'s children, looked up once: `labels()` checks and joins its
        # arguments on every call, half of what counting a request cost.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        if (children := self._children.get(key)) is None:
            requests, latency = self.requests.labels(method, route, str(status)), self.latency.labels(method, route)
            children = self._children[key] = (requests, latency)
        children[0].inc()
        children[1].observe(seconds)


def process_registry(settings: Settings, registry: CollectorRegistry) -> CollectorRegistry:
    """This process's metrics; with PROMETHEUS_MULTIPROC_DIR set, those of every API process on the host."""
    if settings.prometheus_multiproc_dir is None:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(settings.prometheus_multiproc_dir))  # type: ignore[no-untyped-call]
    return merged


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
        # Each run was counted in its own bucket: Prometheus' buckets count every run up to their bound.
        bounds = [*map(str, DURATION_BUCKETS), "+Inf"]
        cumulative = itertools.accumulate(float(fields.get((name, bound), 0)) for bound in bounds)
        duration.add_metric([name], list(zip(bounds, cumulative, strict=True)), float(fields.get((name, "sum"), 0)))
    families: list[Metric] = [*counters.values(), duration]
    for metric, (help_text, value) in gauges.items():
        families.append(GaugeMetricFamily(metric, help_text, value=value))
    return families
