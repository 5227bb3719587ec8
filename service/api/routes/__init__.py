"""HTTP routes, one module per resource, and the app's routing table built from them."""

from starlette.routing import BaseRoute

from service.api import routing  # first: it registers the `id` path convertor the routes below use
from service.api.routes import auth, dashboard, docs, items, jobs, operations, reports, tasks, users, webhooks


def all_routes() -> list[BaseRoute]:
    """Every route, one per path; the API's own routes also make up the OpenAPI document."""
    api: list[BaseRoute] = [
        *auth.routes,
        *users.routes,
        *items.routes,
        *tasks.routes,
        *jobs.routes,
        *reports.routes,
        *webhooks.routes,
        *operations.routes,
    ]
    # Starlette tries routes in order: the paths API clients send the most go first (their relative order
    # kept, so `/jobs/send-email` still comes before `/jobs/{job_id}`); the document keeps its own order.
    busiest = [*tasks.routes, *jobs.routes]
    rest = [route for route in api if route not in busiest]
    return routing.by_path([*busiest, *rest, *docs.routes(api), *dashboard.routes])
