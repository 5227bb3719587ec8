"""GET /openapi.json (generated once, from the routes); GET /docs, Swagger UI on it (served from the
swagger-ui-py package's copy of its assets: no CDN, it works offline), where Authorize runs the OAuth2
password flow and "Try it out" sends requests; GET /docs/reference, the document as a plain page."""

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.api.openapi import openapi_document
from service.api.pages import templates
from service.api.responses import JSONResponse

# The page's own <style> block is inline; it shows no user data, and runs no script at all.
DOCS_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# Swagger UI: its scripts are files of ours and of the package (no inline script); it styles elements inline
# and draws icons as data: URIs; it calls only this API.
SWAGGER_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SWAGGER_UI = Path(str(files("swagger_ui") / "static"))
SWAGGER_INIT = Path(__file__).resolve().parent.parent / "static" / "swagger-init.js"
TITLE = "Task Manager API"
VERSION = "0.1.0"


def _schema_text(schema: Any) -> str:
    return json.dumps(schema, indent=2)


def routes(api_routes: list[BaseRoute]) -> list[BaseRoute]:
    document = openapi_document(api_routes, title=TITLE, version=VERSION)
    page = templates.get_template("docs.html").render(doc=document, schema_text=_schema_text)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    interactive = templates.get_template("swagger.html").render(title=TITLE)

    async def reference_page(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY})

    async def swagger_page(request: Request) -> Response:
        return HTMLResponse(interactive, headers={"Content-Security-Policy": SWAGGER_POLICY})

    async def swagger_init(request: Request) -> Response:
        return FileResponse(SWAGGER_INIT, media_type="text/javascript")

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
        Route("/docs", swagger_page, methods=["GET"], include_in_schema=False),
        Route("/docs/init.js", swagger_init, methods=["GET"], include_in_schema=False),
        Route("/docs/reference", reference_page, methods=["GET"], include_in_schema=False),
        Mount("/docs/ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui"),
    ]
