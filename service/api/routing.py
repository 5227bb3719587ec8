"""Paths: the `id` convertor, and one Route per path.

Row ids in paths use the `id` convertor: digits that fit PostgreSQL's bigint, so an id too large
for the database is a 404 like any unknown id, not an error from the database.

Starlette answers 405 from the first route whose path matches, with that route's methods in `Allow`;
routes sharing a path are merged so that `Allow` lists them all.
"""

from collections.abc import Awaitable, Callable, Sequence

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core.schemas import BIGINT_DIGITS

Endpoint = Callable[[Request], Awaitable[Response]]


class IdConvertor(Convertor[int]):
    regex = f"[0-9]{{1,{BIGINT_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


def by_path(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    merged: dict[str, list[Route]] = {}
    order: list[BaseRoute | str] = []
    for route in routes:
        if not isinstance(route, Route) or route.methods is None:
            order.append(route)
            continue
        if route.path not in merged:
            merged[route.path] = []
            order.append(route.path)
        merged[route.path].append(route)
    return [_merge(merged[item]) if isinstance(item, str) else item for item in order]


def _merge(routes: list[Route]) -> Route:
    if len(routes) == 1:
        return routes[0]
    endpoints: dict[str, Route] = {}
    for route in routes:
        for method in route.methods or ():
            endpoints.setdefault(method, route)

    async def dispatch(request: Request) -> Response:
        endpoint = endpoints[request.method].endpoint
        response: Response = await endpoint(request)
        return response

    dispatch.__methods__ = endpoints  # type: ignore[attr-defined]  # read by service.api.openapi
    return Route(routes[0].path, dispatch, methods=list(endpoints), name=routes[0].name)
