"""/openapi.json as API clients use it: a valid document, and a client generated from it that works."""

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import PASSWORD, Deployment
from tests.processes import PROJECT_DIR

CLIENT_PACKAGE = "taskmanager_contract_client"


async def test_the_served_document_is_valid_openapi(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    validate(document)  # raises, naming the first thing wrong


async def test_the_document_declares_the_headers_clients_rely_on(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    parameters = document["components"]["parameters"]
    create_task = document["paths"]["/tasks"]["post"]
    sent = {parameters[ref["$ref"].rsplit("/", 1)[1]]["name"] for ref in create_task["parameters"]}
    assert sent == {"Idempotency-Key", "X-Request-ID"}
    responses = create_task["responses"]
    assert set(responses) == {"202", "401", "413", "422", "429", "503"}
    assert {"Location", "X-Request-ID"} <= set(responses["202"]["headers"])
    assert "Retry-After" in responses["429"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response["headers"], (method, path, status)
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]["$ref"]
                    assert schema.endswith("/ValidationErrorDetail" if status == "422" else "/ErrorDetail")


async def test_optional_fields_have_no_default_their_schema_refuses(client: httpx.AsyncClient) -> None:
    """A PATCH field left out leaves the value alone: no `default: null` on a field that may not be null."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("ItemUpdate", "TaskUpdate", "UserUpdate"):
        for field, schema in schemas[name]["properties"].items():
            if schema.get("default", ...) is None:
                assert {"type": "null"} in schema.get("anyOf", []), (name, field)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """A directory for the generated client, importable while the test runs and forgotten after."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.split(".")[0] == CLIENT_PACKAGE]:
        del sys.modules[name]


async def _generate(document: dict[str, Any], directory: Path) -> ModuleType:
    """The client openapi-python-client makes of the document, imported; its own formatting step runs ruff."""
    source = directory / "openapi.json"
    source.write_text(json.dumps(document))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = await asyncio.create_subprocess_exec(
        bin_dir / "openapi-python-client", "generate", "--path", str(source), "--meta", "none",
        "--output-path", str(directory / CLIENT_PACKAGE),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=PROJECT_DIR,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), 90))[0].decode()
    assert process.returncode == 0, output
    assert "warning" not in output.lower(), output  # every schema, parameter and response understood
    assert "error" not in output.lower(), output
    return importlib.import_module(CLIENT_PACKAGE)


def _load(package: str, *modules: str) -> list[ModuleType]:
    return [importlib.import_module(f"{package}.{module}") for module in modules]


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_generated_client_drives_the_task_api(deployment: Deployment, generated: Path) -> None:
    async with await deployment.client() as http:
        document = (await http.get("/openapi.json")).json()
    package = (await _generate(document, generated)).__name__
    register, token, create_task, background_status, list_tasks, models = _load(
        package, "api.auth.register", "api.auth.token", "api.tasks.create_task", "api.tasks.background_status",
        "api.tasks.list_tasks", "models",
    )  # fmt: skip
    client_module = importlib.import_module(f"{package}.client")

    anonymous = client_module.Client(base_url=deployment.base_url, raise_on_unexpected_status=True)
    user = models.UserCreate(email="contract@example.com", username="contract", password=PASSWORD)
    registered = await register.asyncio_detailed(client=anonymous, body=user)
    assert registered.status_code == 201
    assert isinstance(registered.parsed, models.UserPublic)
    assert registered.parsed.username == "contract"

    login = await token.asyncio(client=anonymous, body=models.LoginForm(username="contract", password=PASSWORD))
    assert isinstance(login, models.Token)
    unauthenticated = await create_task.asyncio_detailed(client=anonymous, body=models.TaskCreate(title="x"))
    assert unauthenticated.status_code == 401
    assert isinstance(unauthenticated.parsed, models.ErrorDetail)
    assert unauthenticated.headers["www-authenticate"] == "Bearer"

    me = client_module.AuthenticatedClient(
        base_url=deployment.base_url, token=login.access_token, raise_on_unexpected_status=True
    )
    body = models.TaskCreate(title="Renew passport", priority=models.Priority.HIGH)
    first = await create_task.asyncio_detailed(client=me, body=body, idempotency_key="contract-1")
    again = await create_task.asyncio_detailed(client=me, body=body, idempotency_key="contract-1")
    assert first.status_code == again.status_code == 202
    assert isinstance(first.parsed, models.JobAccepted)
    assert isinstance(again.parsed, models.JobAccepted)
    assert again.parsed.job_id == first.parsed.job_id  # one job
    assert first.headers["location"] == first.parsed.status_url

    bad_key = await create_task.asyncio_detailed(client=me, body=body, idempotency_key="k" * 256)
    assert bad_key.status_code == 422
    assert isinstance(bad_key.parsed, models.ValidationErrorDetail)
    assert bad_key.parsed.detail[0].loc == ["header", "Idempotency-Key"]

    status = None
    for _ in range(500):
        status = await background_status.asyncio(client=me, job_id=first.parsed.job_id, x_request_id="contract")
        assert isinstance(status, models.JobStatus)
        if status.state in (models.JobState.SUCCESS, models.JobState.FAILURE):
            break
        await asyncio.sleep(0.02)
    assert status is not None
    assert status.state == models.JobState.SUCCESS, status

    mine = await list_tasks.asyncio(client=me)
    assert isinstance(mine, list)
    assert [(task.title, task.priority) for task in mine] == [("Renew passport", models.Priority.HIGH)]
    assert mine[0].id == status.result["task_id"]
