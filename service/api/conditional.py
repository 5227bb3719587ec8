"""Conditional reads (RFC 9110 8.8.3, 13.1.2): an ETag on a representation, and 304 Not Modified, with
no body, to an If-None-Match that names it. The tag is a digest of the body itself, so it changes
exactly when the body does, whatever column of the row changed."""

import hashlib
import re

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

_OPAQUE_TAG = re.compile(r'(?:W/)?"([^"]*)"')  # an entity tag of an If-None-Match list, weak or strong


def etag(body: bytes) -> str:
    """The strong entity tag of these exact bytes."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def none_match(header: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names tag: `*` names any; a list by weak comparison (W/"x"
    matches "x"), the comparison If-None-Match uses. A malformed header names nothing."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return tag.removeprefix("W/").strip('"') in _OPAQUE_TAG.findall(header)


class Tagged:
    """A model's JSON body and its entity tag."""

    def __init__(self, content: BaseModel) -> None:
        self.body = content.model_dump_json().encode()
        self.etag = etag(self.body)

    def response(self, request: Request) -> Response:
        """200 with the body and its ETag, or 304 if the request's If-None-Match names it."""
        if none_match(request.headers.get("if-none-match"), self.etag):
            return Response(status_code=304, headers={"ETag": self.etag})
        return Response(self.body, media_type="application/json", headers={"ETag": self.etag})


def respond_tagged(request: Request, content: BaseModel) -> Response:
    return Tagged(content).response(request)
