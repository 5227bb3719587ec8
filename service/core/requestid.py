"""The request id of the HTTP request being served, or of the request that enqueued the job being run.

Set by the API's middleware (service.api.middleware.Edge) and by the job lifecycle; read by the
log lines (service.core.logs) and stored with each job it enqueues (service.core.dispatch).
"""

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
