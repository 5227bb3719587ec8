"""OpenTelemetry traces with the real SDK and its in-memory exporter: one trace from the HTTP request
through the job's enqueue to its run on a worker, and the SQL and SMTP calls inside it."""

import logging
from collections.abc import Iterator

import pytest
from databases import Database
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.app import create_app
from service.core import keys, tracing
from service.core.logs import JSONFormatter
from service.core.settings import Settings
from tests.conftest import MailBox, api_client, drain, login, register, verify

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """This process traced, into memory, for this module's tests (the API app made after this starts)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)  # once per process: no other test module sets one
    tracing.start()
    try:
        yield _exporter
    finally:
        tracing.stop()
        _exporter.clear()


def _trace_of(spans: list[ReadableSpan], span: ReadableSpan) -> list[ReadableSpan]:
    assert span.context is not None
    return [other for other in spans if other.context is not None and other.context.trace_id == span.context.trace_id]


def _one(spans: list[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = [
        span
        for span in spans
        if span.name == name and all((span.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [span.name for span in spans])
    return found[0]


def _child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert parent.context is not None
    return child.parent is not None and child.parent.span_id == parent.context.span_id


# Off first: the traced tests below start tracing for the rest of the module.


def test_off_unless_the_environment_asks() -> None:
    assert not tracing.asked_for({})
    assert tracing.asked_for({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.asked_for({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.asked_for({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.asked_for({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_nothing_is_traced_when_off(settings: Settings) -> None:
    """Off (the default; these run before the module's traced tests), the API has no tracing middleware
    and a job's row no trace context."""
    assert not tracing.active()
    assert not any("OpenTelemetry" in repr(middleware) for middleware in create_app(settings).user_middleware)
    with tracing.creating(job_id="j", name="n", queue="q") as trace_context:
        assert trace_context is None


async def test_one_trace_from_post_tasks_to_the_jobs_sql(
    spans: InMemorySpanExporter, settings: Settings, db: Database, mail: MailBox
) -> None:
    """(mail: the welcome email that registering queues goes out, so that the drain ends.)"""
    async with api_client(settings) as client:
        await register(client, "tracy")
        headers = await login(client, "tracy")
        spans.clear()
        created = await client.post("/tasks", headers=headers, json={"title": "Traced"})
        assert created.status_code == 202
        job_id = created.json()["job_id"]
        await drain(settings)
    finished = list(spans.get_finished_spans())
    request = _one(finished, "POST /tasks", **{"http.method": "POST"})
    assert request.kind == SpanKind.SERVER
    create = _one(finished, f"create {keys.QUEUE}", **{"messaging.message.id": job_id})
    process = _one(finished, f"process {keys.QUEUE}", **{"messaging.message.id": job_id})
    assert create.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert (create.attributes or {})["messaging.operation.type"] == "create"
    assert (process.attributes or {})["messaging.operation.type"] == "process"
    assert (process.attributes or {})["messaging.destination.name"] == keys.QUEUE
    assert _child_of(create, request) and _child_of(process, create)
    in_trace = _trace_of(finished, request)
    assert process in in_trace
    # The job's own SQL (the task's INSERT), traced by the asyncpg instrumentation, inside its run.
    sql = [span for span in in_trace if "INSERT INTO tasks" in str((span.attributes or {}).get("db.statement", ""))]
    assert sql and all(_child_of(span, process) for span in sql)
    # The row keeps the trace context: a job enqueued again from it (the reconciler) keeps its trace.
    stored = await db.fetch_val("SELECT trace_context FROM jobs WHERE job_id = :id", {"id": job_id})
    assert create.context is not None and f"{create.context.trace_id:032x}" in stored


async def test_one_trace_from_a_reminder_request_to_smtp(
    spans: InMemorySpanExporter, settings: Settings, db: Database, mail: MailBox
) -> None:
    async with api_client(settings) as client:
        await register(client, "remy")
        await verify(db, "remy")
        headers = await login(client, "remy")
        await client.post("/tasks", headers=headers, json={"title": "Call the dentist"})
        await drain(settings)
        task_id = (await client.get("/tasks", headers=headers)).json()[0]["id"]
        spans.clear()
        remind = await client.post(f"/tasks/{task_id}/remind", headers=headers)
        assert remind.status_code == 202
        await drain(settings)
    finished = list(spans.get_finished_spans())
    process = _one(finished, f"process {keys.QUEUE}", **{"messaging.message.id": remind.json()["job_id"]})
    smtp = _one(finished, "smtp send")
    assert smtp.kind == SpanKind.CLIENT and _child_of(smtp, process)
    request = next(span for span in finished if span.kind == SpanKind.SERVER and span.name.startswith("POST /tasks/"))
    assert smtp in _trace_of(finished, request)
    assert any(message.subject == "Reminder: Call the dentist" for message in mail.to("remy@example.com"))


def test_a_json_log_line_carries_the_trace_id(spans: InMemorySpanExporter) -> None:
    with tracing.tracer.start_as_current_span("somewhere") as span:
        record = logging.LogRecord("jobs", logging.INFO, __file__, 1, "job started", None, None)
        record.request_id = "-"
        line = JSONFormatter().format(record)
    assert f'"trace_id": "{span.get_span_context().trace_id:032x}"' in line
