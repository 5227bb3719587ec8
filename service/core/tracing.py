"""OpenTelemetry traces: one per request, from the HTTP span through the job's enqueue to its run on a
worker, with the SQL, Redis and SMTP calls inside.

Off unless the standard variables ask for it (OTEL_TRACES_EXPORTER=otlp or console, or an
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; OTEL_SDK_DISABLED=true wins): then each process exports its spans
with the SDK's batch processor, and the contrib instrumentations trace asyncpg and redis-py. Off, the
spans below are OpenTelemetry's no-op ones and nothing is instrumented.

The job's span names and attributes follow the messaging conventions: `create <queue>` (producer)
when the API accepts a job, `process <queue>` (consumer) when a worker runs it. The W3C trace
context of the `create` span is stored in the job's row (`trace_context`), so a job the reconciler
enqueues again, from its row, keeps its trace.
"""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

tracer = trace.get_tracer("taskmanager")
_propagator = TraceContextTextMapPropagator()
MESSAGING_SYSTEM = "arq"
_active = False  # whether this process exports spans (and its libraries are instrumented)


def active() -> bool:
    return _active


def asked_for(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service_name: str) -> None:
    """For a process's entry point: export spans as the OTEL_* variables say, if they ask for any."""
    if _active or not asked_for():
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))  # and OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    start()


def start() -> None:
    """Trace the libraries (asyncpg, redis-py) into whatever tracer provider is set."""
    global _active
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _active = True


def stop() -> None:
    """Undo start() (for tests)."""
    global _active
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().uninstrument()
    _active = False


def _job_attributes(job_id: str, queue: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
    }


@contextmanager
def creating(*, job_id: str, name: str, queue: str) -> Iterator[str | None]:
    """The span of a job's acceptance; yields the trace context to store with the job (None when off)."""
    if not _active:
        yield None
        return
    attributes = {**_job_attributes(job_id, queue, "create"), "taskmanager.job.name": name}
    with tracer.start_as_current_span(f"create {queue}", kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier.get("traceparent")


@contextmanager
def processing(*, job_id: str, name: str, queue: str, trace_context: str | None, attempt: int) -> Iterator[Span]:
    """The span of a job's run on a worker, in the trace of the request that created it (none when off:
    not even a no-op span, which costs a job a few microseconds for nothing)."""
    if not _active:
        yield trace.INVALID_SPAN
        return
    parent = _propagator.extract({"traceparent": trace_context}) if trace_context else None
    attributes = {
        **_job_attributes(job_id, queue, "process"),
        "taskmanager.job.name": name,
        "messaging.message.delivery_attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def current_ids() -> tuple[str, str] | None:
    """The trace and span ids (hex) of the current span, if there is one being recorded."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
