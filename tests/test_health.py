"""Liveness, readiness (503 naming what is down), the OpenAPI document and its page."""

import httpx

from service.core.settings import Settings
from service.dev.embedded import free_port
from tests.conftest import api_client


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_readyz_names_an_unreachable_database(settings: Settings) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    async with api_client(settings.model_copy(update={"database_url": closed})) as client:
        response = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    assert response.status_code == 503
    assert response.json()["detail"] == "unavailable: database"
    assert response.json()["checks"]["redis"] == "ok"
    assert response.json()["checks"]["database"].startswith("down")


async def test_readyz_names_an_unreachable_redis(settings: Settings) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with api_client(settings.model_copy(update={"redis_url": closed})) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "unavailable: redis"
    assert response.json()["checks"]["database"] == "ok"


async def test_database_down_is_503_not_500(settings: Settings) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    async with api_client(settings.model_copy(update={"database_url": closed})) as client:
        response = await client.post(
            "/auth/register", json={"email": "a@example.com", "username": "alice", "password": "long enough"}
        )
    assert response.status_code == 503
    assert response.json() == {"detail": "Service temporarily unavailable"}
    assert response.headers["retry-after"] == "1"


async def test_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    expected = {
        ("/auth/register", "post"),
        ("/auth/token", "post"),
        ("/auth/verify-email", "get"),
        ("/users/me", "get"),
        ("/users/me", "patch"),
        ("/users/me", "delete"),
        ("/users/{user_id}", "get"),
        ("/users", "get"),
        ("/items", "post"),
        ("/items", "get"),
        ("/items/{id}", "get"),
        ("/items/{id}", "patch"),
        ("/items/{id}", "delete"),
        ("/users/{user_id}/items", "get"),
        ("/tasks", "get"),
        ("/tasks/{id}", "get"),
        ("/tasks/{id}", "patch"),
        ("/tasks/{id}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    assert expected <= {(path, method) for path, ops in paths.items() for method in ops}
    register = paths["/auth/register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserCreate"
    }
    assert set(register["responses"]) == {"201", "409", "413", "422", "429", "503"}
    assert "security" not in register
    token_form = paths["/auth/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token_form
    tasks = paths["/tasks"]["get"]
    query = {param["name"] for param in tasks["parameters"] if "$ref" not in param}
    assert query == {"limit", "offset", "status", "due_before"}
    assert {"$ref": "#/components/parameters/RequestId"} in tasks["parameters"]
    assert tasks["security"] == [{"OAuth2PasswordBearer": []}]
    assert document["components"]["schemas"]["UserCreate"]["additionalProperties"] is False
    assert "hashed_password" not in document["components"]["schemas"]["UserPublic"]["properties"]


async def test_docs_is_swagger_ui_served_from_here(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui-bundle.js" in page.text and "<script>" not in page.text  # no inline script
    for asset in ("/docs/ui/swagger-ui-bundle.js", "/docs/ui/swagger-ui.css", "/docs/init.js"):
        served = await client.get(asset)
        assert served.status_code == 200, asset
    assert "/openapi.json" in (await client.get("/docs/init.js")).text


async def test_docs_reference_renders_the_document(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs/reference")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/auth/register" in page.text
    assert "UserCreate" in page.text
    assert "<code>Idempotency-Key</code></td><td>header</td>" in page.text  # parameters declared once, by $ref
