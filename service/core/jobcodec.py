"""How jobs travel through Redis: JSON (orjson), never pickle, so that whoever can write to Redis
cannot make a worker run code. The API and every worker must use the same pair."""

from typing import Any

import orjson


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseException):  # arq stores a failed job's exception as its result
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback)


def deserialize(data: bytes) -> Any:
    return orjson.loads(data)
