"""JSON responses: orjson for plain content, pydantic's own serializer for models."""

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def respond(
    content: BaseModel | Sequence[BaseModel], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A response holding a pydantic model, or a list of them, as JSON."""
    if isinstance(content, BaseModel):
        body = content.model_dump_json().encode()
    else:
        body = b"[" + b",".join(item.model_dump_json().encode() for item in content) + b"]"
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")
