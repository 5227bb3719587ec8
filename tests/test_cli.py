"""`python -m service promote-admin`: the one way to make an administrator."""

import subprocess
from pathlib import Path

import httpx

from service.core.settings import Settings
from tests.conftest import login, register
from tests.processes import clean_env, python


def _promote(settings: Settings, email: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, DATA_DIR=str(tmp_path))
    return subprocess.run(python("-m", "service", "promote-admin", email), env=env, capture_output=True, text=True)


async def test_promote_admin_grants_admin_rights(client: httpx.AsyncClient, settings: Settings, tmp_path: Path) -> None:
    await register(client, "root")
    headers = await login(client, "root")
    assert (await client.get("/users", headers=headers)).status_code == 403

    done = _promote(settings, "ROOT@example.com", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "root@example.com is now an admin" in done.stdout.lower()
    assert (await client.get("/users", headers=headers)).status_code == 200


async def test_promote_admin_of_unknown_email_fails(settings: Settings, tmp_path: Path) -> None:
    done = _promote(settings, "ghost@example.com", tmp_path)
    assert done.returncode == 1
    assert "No user with email 'ghost@example.com'" in done.stderr
    assert "Traceback" not in done.stderr
