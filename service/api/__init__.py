"""The HTTP edge: routes, authentication, middleware, error responses, the dashboard and the docs."""
