"""How jobs travel through Redis: JSON (orjson), never pickle, so that whoever can write to Redis
cannot make a worker run code. The API and every worker must use the same pair.

A failed job's result holds its exception. JSON keeps the exception's type name and message; read
back, it is an exception again (a CancelledError for an aborted job, else a JobError naming the
type), so that arq's `Job.result()` raises and `Job.abort()` reports the abort, as with pickle.
"""

import asyncio
from typing import Any

import orjson


class JobError(Exception):
    """A job's exception as it came back from Redis: the name of its type, and its message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message


def _fallback(value: Any) -> Any:
    if isinstance(value, JobError):
        return {"error": value.type_name, "message": value.message}
    if isinstance(value, BaseException):  # arq stores a failed job's exception as its result
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback)


def _exception(error: dict[str, Any]) -> BaseException:
    if error["error"] == "CancelledError":
        return asyncio.CancelledError(error["message"])
    return JobError(str(error["error"]), str(error["message"]))


def deserialize(data: bytes) -> Any:
    value = orjson.loads(data)
    # arq's result of a failed job: {"s": false, "r": <the exception>, ...}; a job payload has no "s".
    if isinstance(value, dict) and value.get("s") is False:
        error = value.get("r")
        if isinstance(error, dict) and error.keys() == {"error", "message"}:
            value["r"] = _exception(error)
    return value
