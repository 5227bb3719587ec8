# One image for the API and the worker. Slim, non-root, dependencies in their own cached layer.
# No `embedded` extra: in containers PostgreSQL and Redis are services of their own (compose.yaml).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir service jobs && touch service/__init__.py jobs/__init__.py \
    && pip install . \
    && pip uninstall --yes taskmanager

COPY service ./service
COPY jobs ./jobs
COPY migrations ./migrations

USER app
ENV ENV=production
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# A deadline on each request's head, idle connections closed after 5 s, 503 beyond 4,000 at once.
CMD ["uvicorn", "--factory", "service.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", \
     "--http", "service.api.protocol:TimelyHttpProtocol", "--timeout-keep-alive", "5", "--limit-concurrency", "4000", \
     "--timeout-graceful-shutdown", "20"]
