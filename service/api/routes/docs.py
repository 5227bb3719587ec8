"""GET /openapi.json (generated once, from the routes) and GET /docs (that document as a page)."""

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from service.api.openapi import openapi_document
from service.api.pages import templates
from service.api.responses import JSONResponse

# The page's own <style> block is inline; it shows no user data, and runs no script at all.
DOCS_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
TITLE = "Task Manager API"
VERSION = "0.1.0"


def _schema_text(schema: Any) -> str:
    return json.dumps(schema, indent=2)


def routes(api_routes: list[BaseRoute]) -> list[Route]:
    document = openapi_document(api_routes, title=TITLE, version=VERSION)
    page = templates.get_template("docs.html").render(doc=document, schema_text=_schema_text)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY})

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
        Route("/docs", docs_page, methods=["GET"], include_in_schema=False),
    ]
