"""Log lines: one readable line per event in development, JSON in production, both with the request id,
and neither with the terminal colour codes uvicorn and `databases` attach to their records."""

import json
import logging

from service.core.logs import JSONFormatter, ReadableFormatter
from service.core.requestid import request_id


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, ("127.0.0.1:8000",), None)
    record.__dict__.update(extra)
    record.request_id = request_id.get() or "-"
    return record


def test_a_readable_line_has_no_colour_codes() -> None:
    record = _record("Uvicorn running on %s", color_message="Uvicorn running on \x1b[1m%s\x1b[0m", job="x")
    line = ReadableFormatter().format(record)
    assert line.endswith("INFO    uvicorn.error [-] Uvicorn running on 127.0.0.1:8000 job=x")
    assert "\x1b" not in line and "color_message" not in line


def test_a_json_line_carries_the_request_id_and_no_colour_codes() -> None:
    token = request_id.set("req-42")
    try:
        record = _record("Uvicorn running on %s", color_message="\x1b[1m%s\x1b[0m")
    finally:
        request_id.reset(token)
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "Uvicorn running on 127.0.0.1:8000"
    assert line["request_id"] == "req-42"
    assert "color_message" not in line
