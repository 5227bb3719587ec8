"""Bad input: a clear error with the right status, and nothing written."""

from collections.abc import Awaitable, Callable

import httpx
import pytest
from databases import Database

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


async def _row_counts(db: Database) -> dict[str, int]:
    return {table: await db.fetch_val(f"SELECT count(*) FROM {table}") for table in ("users", "items", "tasks")}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "username": "valid", "password": "long enough"}, "email"),
        ({"email": "a@example.com", "username": "x", "password": "long enough"}, "username"),
        ({"email": "a@example.com", "username": "has space", "password": "long enough"}, "username"),
        ({"email": "a@example.com", "username": "valid", "password": "short"}, "password"),
        ({"email": "a@example.com", "username": "valid"}, "password"),
        ({"email": "a@example.com", "username": "valid", "password": "long enough", "is_admin": True}, "is_admin"),
    ],
)
async def test_register_rejects_invalid_fields(
    client: httpx.AsyncClient, db: Database, body: dict[str, object], field: str
) -> None:
    response = await client.post("/auth/register", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert ["body", field] in [error["loc"] for error in detail]
    assert all(set(error) == {"loc", "msg", "type"} for error in detail)
    assert "long enough" not in response.text  # inputs, passwords included, are not echoed
    assert (await _row_counts(db))["users"] == 0


async def test_malformed_json_and_wrong_types_are_422(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    for content in (b"{not json", b"", b"[]", b'{"title": 5}', b'{"title": ""}', b'{"title": null}'):
        response = await client.post("/items", headers=alice, content=content)
        assert response.status_code == 422, content
        assert isinstance(response.json()["detail"], list)


async def test_client_cannot_set_owner_or_id(client: httpx.AsyncClient, db: Database, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    response = await client.post("/items", headers=alice, json={"title": "x", "owner_id": 999, "id": 5})
    assert response.status_code == 422
    assert {tuple(error["loc"]) for error in response.json()["detail"]} == {("body", "owner_id"), ("body", "id")}
    assert (await _row_counts(db))["items"] == 0


async def test_oversize_body_is_413_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    before = await _row_counts(db)
    huge = {"title": "big", "description": "x" * 20_000}  # over the 16 KiB limit set for tests
    response = await client.post("/items", headers=alice, json=huge)
    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await _row_counts(db) == before

    # A chunked upload without Content-Length is cut off as it streams in.
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 1024

    streamed = await client.post("/items", headers=alice, content=chunks())
    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "Content Too Large"}


async def test_patch_refuses_null_for_required_fields(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    item = (await client.post("/items", headers=alice, json={"title": "keep me"})).json()
    response = await client.patch(f"/items/{item['id']}", headers=alice, json={"title": None})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "title"]
    assert (await client.get(f"/items/{item['id']}", headers=alice)).json()["title"] == "keep me"


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    wrong_method = await client.put("/items")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed"}
