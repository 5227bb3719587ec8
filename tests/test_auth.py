"""Registration, login and the tokens that guard every other route."""

import time

import httpx
import jwt
import pytest
from databases import Database

from service.api.security import InvalidToken, Tokens
from service.core.settings import Settings
from tests.conftest import PASSWORD, TEST_SECRET, login, register


async def test_register_login_and_read_me(client: httpx.AsyncClient) -> None:
    user = await register(client, "alice")
    assert user["email"] == "alice@example.com"
    assert user["username"] == "alice"
    assert user["is_admin"] is False
    assert "password" not in str(user) and "hashed" not in str(user)

    response = await client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert response.headers["cache-control"] == "no-store"

    me = await client.get("/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == user


async def test_login_by_email_is_case_insensitive(client: httpx.AsyncClient) -> None:
    await register(client, "bob")
    response = await client.post("/auth/token", data={"username": "BOB@Example.com", "password": PASSWORD})
    assert response.status_code == 200


async def test_password_is_stored_as_argon2id(client: httpx.AsyncClient, db: Database) -> None:
    await register(client, "carol")
    hashed = await db.fetch_val("SELECT hashed_password FROM users WHERE username = 'carol'")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in hashed


@pytest.mark.parametrize(
    ("email", "username", "message"),
    [
        ("dave@example.com", "someone-else", "Email already registered"),
        ("DAVE@EXAMPLE.COM", "someone-else", "Email already registered"),
        ("other@example.com", "dave", "Username already taken"),
        ("other@example.com", "DAVE", "Username already taken"),
    ],
)
async def test_duplicate_email_or_username_is_409(
    client: httpx.AsyncClient, db: Database, email: str, username: str, message: str
) -> None:
    await register(client, "dave")
    response = await client.post("/auth/register", json={"email": email, "username": username, "password": PASSWORD})
    assert response.status_code == 409
    assert response.json() == {"detail": message}
    assert await db.fetch_val("SELECT count(*) FROM users") == 1


async def test_wrong_password_and_unknown_user_look_the_same(client: httpx.AsyncClient) -> None:
    await register(client, "erin")
    wrong = await client.post("/auth/token", data={"username": "erin", "password": "not the password"})
    unknown = await client.post("/auth/token", data={"username": "nobody", "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "Incorrect username or password"}
    assert wrong.headers["www-authenticate"] == "Bearer"


def _claims(sub: str = "1", **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub,
        "iat": now,
        "exp": now + 600,
        "iss": "taskmanager",
        "aud": "taskmanager-api",
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _unsigned(claims: dict[str, object]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


BAD_TOKENS = {
    "expired": lambda sub: jwt.encode(_claims(sub, iat=1, exp=2), TEST_SECRET, algorithm="HS256"),
    "other key": lambda sub: jwt.encode(_claims(sub), "another-secret-" + "y" * 40, algorithm="HS256"),
    "alg none": lambda sub: _unsigned(_claims(sub)),
    "no exp": lambda sub: jwt.encode(_claims(sub, exp=None), TEST_SECRET, algorithm="HS256"),
    "wrong audience": lambda sub: jwt.encode(_claims(sub, aud="elsewhere"), TEST_SECRET, algorithm="HS256"),
    "garbage": lambda sub: "not.a.token",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_bad_tokens_are_401(client: httpx.AsyncClient, kind: str) -> None:
    user = await register(client, "frank")
    good = await login(client, "frank")
    assert (await client.get("/users/me", headers=good)).status_code == 200

    token = BAD_TOKENS[kind](str(user["id"]))
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or expired token"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_missing_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_token_of_deleted_user_stops_working(client: httpx.AsyncClient) -> None:
    await register(client, "gina")
    headers = await login(client, "gina")
    deleted = await client.request("DELETE", "/users/me", headers=headers, json={"current_password": PASSWORD})
    assert deleted.status_code == 204
    assert (await client.get("/users/me", headers=headers)).status_code == 401


async def test_update_me_changes_password_and_refuses_taken_username(client: httpx.AsyncClient) -> None:
    await register(client, "hank")
    await register(client, "ivy")
    headers = await login(client, "hank")
    taken = await client.patch("/users/me", headers=headers, json={"username": "ivy"})
    assert taken.status_code == 409

    new = {"password": "a brand new password", "current_password": PASSWORD}
    changed = await client.patch("/users/me", headers=headers, json=new)
    assert changed.status_code == 200
    assert (await client.post("/auth/token", data={"username": "hank", "password": PASSWORD})).status_code == 401
    await login(client, "hank", "a brand new password")


def test_production_refuses_to_start_without_a_strong_secret() -> None:
    with pytest.raises(ValueError, match="JWT_SECRET is required"):
        Settings(env="production", jwt_secret=None)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(env="production", jwt_secret="short")
    assert Settings(env="production", jwt_secret="z" * 32).jwt_secret is not None


def test_a_remembered_token_still_expires() -> None:
    tokens = Tokens(key="k" * 40, issuer="taskmanager", audience="taskmanager-api", lifetime_seconds=1)
    token = tokens.issue(7, 3)
    assert tokens.subject(token) == (7, 3)
    assert tokens.subject(token) == (7, 3)  # remembered
    time.sleep(1.1)
    with pytest.raises(InvalidToken):
        tokens.subject(token)
