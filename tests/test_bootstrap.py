"""`make run`'s bootstrap as a new user meets it: embedded servers, Ctrl-C, a SIGKILL, a bad URL."""

import contextlib
import random
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.dev.embedded import free_port
from tests.conftest import PASSWORD
from tests.processes import Proc, clean_env, python, start, stopped_at_exit, wait_http

pytestmark = pytest.mark.e2e


def fixed_port() -> int:
    """A free port below the kernel's ephemeral range, as 8000 and 1025 are: the embedded servers that
    `make run` starts pick ephemeral ports (free_port), which could otherwise land on the API's port
    between two runs that reuse it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10_000), low), 200):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _run(data_dir: Path, port: int, log: Path) -> Proc:
    env = clean_env(EMBEDDED_SERVERS="always", DATA_DIR=str(data_dir), PORT=str(port), SMTP_PORT=str(fixed_port()))
    return start(python("-m", "service", "run"), env, log)


def _register_and_login(base: str) -> None:
    user = {"email": "newcomer@example.com", "username": "newcomer", "password": PASSWORD}
    assert httpx.post(f"{base}/auth/register", json=user).status_code == 201
    _login(base)


def _login(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/auth/token", data={"username": "newcomer", "password": PASSWORD})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = httpx.get(f"{base}/users/me", headers=headers)
    assert me.json()["username"] == "newcomer"
    return headers


def _until(url: str, headers: dict[str, str], state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(url, headers=headers).json()
        if body["state"] == state:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} never reached {state}: {body}")


def _create_task_and_get_reminded(base: str, run: Proc) -> None:
    """The whole product through `make run`: the job runs, and the email shows in the mail catcher's output."""
    headers = _login(base)
    created = httpx.post(f"{base}/tasks", headers=headers, json={"title": "Feed the cat"})
    assert created.status_code == 202
    task_id = _until(f"{base}{created.headers['location']}", headers, "SUCCESS")["result"]["task_id"]
    # Reminders go to verified addresses: follow the link of the welcome email, printed by the mail catcher.
    link = re.search(r"(http://[^/\s]+/auth/verify-email\?token=[\w.-]+)", run.output())
    assert link and link.group(1).startswith(base), run.output()
    assert httpx.get(link.group(1)).status_code == 200
    remind = httpx.post(f"{base}/tasks/{task_id}/remind", headers=headers)
    _until(f"{base}{remind.headers['location']}", headers, "SUCCESS")
    deadline = time.monotonic() + 10
    while "Subject: Reminder: Feed the cat" not in run.output():
        assert time.monotonic() < deadline, run.output()
        time.sleep(0.1)
    assert "Subject: Welcome to Task Manager, newcomer!" in run.output()


def test_run_serves_stops_on_ctrl_c_and_keeps_its_data(tmp_path: Path) -> None:
    port = fixed_port()
    base = f"http://127.0.0.1:{port}"
    with stopped_at_exit(_run(tmp_path / "data", port, tmp_path / "run1.log")) as run:
        wait_http(f"{base}/readyz", run)
        assert "127.0.0.1:5432" not in run.output()  # embedded, though local servers may answer
        _register_and_login(base)
        _create_task_and_get_reminded(base, run)

        run.signal_group(signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.wait_group_gone(timeout=10) < 10
    assert not (tmp_path / "data" / "services.env").exists()

    with stopped_at_exit(_run(tmp_path / "data", port, tmp_path / "run2.log")) as again:
        wait_http(f"{base}/readyz", again)
        _login(base)  # the user registered before is still there
        again.signal_group(signal.SIGINT)
        again.wait_group_gone(timeout=10)


@pytest.mark.parametrize("victim", ["group", "runner"])
def test_run_recovers_after_sigkill(tmp_path: Path, victim: str) -> None:
    port = fixed_port()
    base = f"http://127.0.0.1:{port}"
    with stopped_at_exit(_run(tmp_path / "data", port, tmp_path / "run1.log")) as run:
        wait_http(f"{base}/readyz", run)
        _register_and_login(base)
        if victim == "group":
            run.signal_group(signal.SIGKILL)  # everything dies at once: stale pid files stay behind
        else:
            run.process.kill()  # only the runner: its children must not outlive it
        run.wait_group_gone(timeout=10)
    assert (tmp_path / "data" / "postgres" / "postmaster.pid").exists() or victim == "runner"

    with stopped_at_exit(_run(tmp_path / "data", port, tmp_path / "run2.log")) as again:
        wait_http(f"{base}/readyz", again)
        _login(base)
        again.signal_group(signal.SIGINT)
        again.wait_group_gone(timeout=10)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "REDIS_URL"])
def test_unreachable_configured_server_is_a_short_error(tmp_path: Path, variable: str) -> None:
    scheme = "postgresql://postgres" if variable == "DATABASE_URL" else "redis://"
    url = f"{scheme}@127.0.0.1:{free_port()}/0".replace("redis://@", "redis://")
    env = clean_env(**{variable: url, "DATA_DIR": str(tmp_path / "data")})
    run = start(python("-m", "service", "run"), env, tmp_path / "run.log")
    assert run.process.wait(30) == 2
    output = run.output()
    assert url in output
    assert f"{variable} is set in your environment" in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()  # nothing created anywhere
