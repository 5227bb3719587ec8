"""Items and tasks: CRUD scoped to the owner; someone else's row is 404, never 403."""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
from databases import Database

from service.core import tables

MakeUser = Callable[[str], Awaitable[dict[str, str]]]


async def _user_id(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return int((await client.get("/users/me", headers=headers)).json()["id"])


async def _insert_task(db: Database, owner_id: int, title: str, **values: object) -> int:
    query = tables.tasks.insert().values(owner_id=owner_id, title=title, **values).returning(tables.tasks.c.id)
    return int(await db.fetch_val(query))


async def test_item_crud(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    created = await client.post("/items", headers=alice, json={"title": "  Buy milk ", "description": "2 litres"})
    assert created.status_code == 201
    item = created.json()
    assert item["title"] == "Buy milk"
    assert item["owner_id"] == await _user_id(client, alice)

    assert (await client.get(f"/items/{item['id']}", headers=alice)).json() == item
    patched = await client.patch(f"/items/{item['id']}", headers=alice, json={"description": None})
    assert patched.status_code == 200
    assert patched.json()["description"] is None
    assert patched.json()["title"] == "Buy milk"

    listed = await client.get("/items", headers=alice)
    assert [row["id"] for row in listed.json()] == [item["id"]]
    mine = await client.get(f"/users/{item['owner_id']}/items", headers=alice)
    assert [row["id"] for row in mine.json()] == [item["id"]]

    assert (await client.delete(f"/items/{item['id']}", headers=alice)).status_code == 204
    assert (await client.get(f"/items/{item['id']}", headers=alice)).status_code == 404
    assert (await client.delete(f"/items/{item['id']}", headers=alice)).status_code == 404


async def test_other_users_items_and_tasks_are_404(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    alice_id = await _user_id(client, alice)
    item = (await client.post("/items", headers=alice, json={"title": "private"})).json()
    task_id = await _insert_task(db, alice_id, "private task")

    for path in (f"/items/{item['id']}", f"/tasks/{task_id}"):
        assert (await client.get(path, headers=bob)).status_code == 404
        assert (await client.patch(path, headers=bob, json={"title": "mine now"})).status_code == 404
        assert (await client.delete(path, headers=bob)).status_code == 404
    assert (await client.get(f"/users/{alice_id}/items", headers=bob)).status_code == 404
    assert (await client.get("/items", headers=bob)).json() == []
    assert (await client.get("/tasks", headers=bob)).json() == []

    # Nothing of Alice's changed.
    assert (await client.get(f"/items/{item['id']}", headers=alice)).json()["title"] == "private"
    assert await db.fetch_val(tables.tasks.select().with_only_columns(tables.tasks.c.title)) == "private task"


async def test_task_read_side_filters_and_pages(client: httpx.AsyncClient, db: Database, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    owner = await _user_id(client, alice)
    now = datetime.now(UTC)
    soon = await _insert_task(db, owner, "soon", due_at=now + timedelta(hours=1))
    later = await _insert_task(db, owner, "later", due_at=now + timedelta(days=3))
    done = await _insert_task(db, owner, "done", status="done")

    def ids(response: httpx.Response) -> list[int]:
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    assert ids(await client.get("/tasks", headers=alice)) == [soon, later, done]
    assert ids(await client.get("/tasks", headers=alice, params={"status": "done"})) == [done]
    due_before = (now + timedelta(days=1)).isoformat()
    assert ids(await client.get("/tasks", headers=alice, params={"due_before": due_before})) == [soon]
    assert ids(await client.get("/tasks", headers=alice, params={"limit": 1, "offset": 1})) == [later]

    patched = await client.patch(f"/tasks/{soon}", headers=alice, json={"status": "in_progress", "priority": "high"})
    assert patched.status_code == 200
    assert (patched.json()["status"], patched.json()["priority"]) == ("in_progress", "high")
    assert patched.json()["updated_at"] > patched.json()["created_at"]
    assert (await client.delete(f"/tasks/{later}", headers=alice)).status_code == 204
    assert ids(await client.get("/tasks", headers=alice)) == [soon, done]


async def test_list_limits_are_bounded(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    for params in ({"limit": 101}, {"limit": 0}, {"offset": -1}, {"status": "someday"}, {"due_before": "tomorrow"}):
        response = await client.get("/tasks", headers=alice, params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][0] == "query"


async def test_users_list_is_for_admins(client: httpx.AsyncClient, db: Database, make_user: MakeUser) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    alice_id, bob_id = await _user_id(client, alice), await _user_id(client, bob)

    forbidden = await client.get("/users", headers=bob)
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "Administrator rights required"}
    assert (await client.get(f"/users/{alice_id}", headers=bob)).status_code == 404
    assert (await client.get(f"/users/{bob_id}", headers=bob)).status_code == 200

    await db.execute(tables.users.update().where(tables.users.c.id == alice_id).values(is_admin=True))
    users = await client.get("/users", headers=alice)
    assert users.status_code == 200
    assert [user["username"] for user in users.json()] == ["alice", "bob"]
    assert all("hashed_password" not in user for user in users.json())
    assert (await client.get(f"/users/{bob_id}", headers=alice)).json()["username"] == "bob"
    assert (await client.get("/users/999999", headers=alice)).status_code == 404
