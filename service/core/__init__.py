"""What the API and the worker share: settings, connections, tables, queries, schemas, job records, keys.

Nothing here imports Starlette, `service.api` or `service.dev`."""
