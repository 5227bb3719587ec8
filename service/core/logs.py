"""Logging: JSON lines in production, readable lines in development; every line carries the request id
of the HTTP request it serves, or of the request that enqueued the job it runs."""

import json
import logging
import sys
import time
from typing import Any

from service.core import tracing
from service.core.requestid import request_id
from service.core.settings import Environment, Settings

# Attributes every LogRecord has; anything else on a record came in through `extra=` and is logged too.
# uvicorn and `databases` pass `color_message`: the message again, with terminal colour codes in it.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "color_message", "taskName",
}  # fmt: skip


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class WithoutArqJobLines(logging.Filter):
    """arq logs each job's start and end; the job lifecycle logs them too, with the request id, so
    arq's two lines are dropped (its retries, aborts and failures are kept)."""

    PER_JOB = frozenset({"%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.PER_JOB


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if ids := tracing.current_ids():
            line["trace_id"], line["span_id"] = ids
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ReadableFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s%(extras)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        extras = {key: value for key, value in vars(record).items() if key not in _STANDARD and key != "extras"}
        record.extras = "".join(f" {key}={value}" for key, value in extras.items())
        return super().format(record)


def configure_logging(settings: Settings) -> None:
    """One handler on the root logger; uvicorn's and arq's loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JSONFormatter() if settings.env is Environment.PRODUCTION else ReadableFormatter())
    # What neither format shows is not gathered for each line (the logging HOWTO's "Optimization"): the
    # caller's file and line (a walk of the stack), thread, process and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "arq"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("arq.worker").addFilter(WithoutArqJobLines())
    # Our access log (service.api.middleware.Edge) has the request id and the route; uvicorn's has neither.
    logging.getLogger("uvicorn.access").disabled = True
