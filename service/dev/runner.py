"""`make run`: the servers, migrations, then the API (and its helpers) in the foreground until Ctrl-C."""

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.core.settings import PROJECT_DIR, Settings
from service.dev import migrate
from service.dev.embedded import die_with_parent
from service.dev.servers import Endpoints, provide

STOP_TIMEOUT = 6.0  # per child; the whole shutdown stays under 10 s


@dataclass
class Child:
    name: str
    argv: list[str]
    env: Mapping[str, str]
    process: subprocess.Popen[bytes]
    restarts: list[float] = field(default_factory=list)

    def restart(self) -> bool:
        """Start it again after a crash, unless it keeps crashing (5 times in a minute)."""
        now = time.monotonic()
        self.restarts = [at for at in self.restarts if now - at < 60] + [now]
        if len(self.restarts) > 5:
            return False
        time.sleep(1)
        self.process = spawn(self.name, self.argv, self.env).process
        return True


def dev_secret(settings: Settings) -> str:
    """A JWT secret kept in .data/, so tokens survive a restart of `make run` (development only)."""
    path = settings.data_dir / "jwt_secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def child_env(settings: Settings, endpoints: Endpoints) -> dict[str, str]:
    env = {**os.environ, **endpoints.as_env(), "PYTHONUNBUFFERED": "1"}
    env.setdefault("PUBLIC_URL", f"http://{settings.host}:{settings.port}")  # the links in emails
    if settings.jwt_secret is None:
        env["JWT_SECRET"] = dev_secret(settings)
    return env


# As the Dockerfile runs it: a deadline on each request's head (service.api.protocol), idle kept-alive
# connections closed after 5 s, and at most 4,000 connections at once (503 beyond, within the file
# handles the runner raises its limit to).
UVICORN_LIMITS = ["--http", "service.api.protocol:TimelyHttpProtocol", "--timeout-keep-alive", "5",
                  "--limit-concurrency", "4000"]  # fmt: skip


def api_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", *UVICORN_LIMITS,
        "--host", settings.host, "--port", str(settings.port), "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip


def worker_command(*, slow: bool = False) -> list[str]:
    """arq's worker, kept running through Redis restarts (see jobs/__main__.py)."""
    return [sys.executable, "-m", "jobs", *(["--slow"] if slow else [])]


def mailcatcher_command() -> list[str]:
    return [sys.executable, "-m", "service", "mailcatcher"]


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def spawn(name: str, argv: list[str], env: Mapping[str, str]) -> Child:
    process = subprocess.Popen(
        argv, env=env, cwd=PROJECT_DIR, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM)
    )
    return Child(name, argv, env, process)


def supervise(children: list[Child]) -> int:
    """Run until Ctrl-C / SIGTERM, restarting a child that dies (unless it keeps dying); then stop every
    child, newest first."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    failed = None
    while failed is None and not stop.wait(0.2):
        for child in children:
            if child.process.poll() is None or stop.is_set():
                continue
            print(f"{child.name} exited with status {child.process.returncode}; restarting it.", file=sys.stderr)
            if not child.restart():
                print(f"{child.name} keeps failing; stopping everything.", file=sys.stderr)
                failed = child
                break
    for child in reversed(children):
        terminate(child.process)
    return 0 if failed is None else 1


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def banner(settings: Settings, endpoints: Endpoints, extra: list[str]) -> str:
    lines = [
        f"API        http://{settings.host}:{settings.port}  (docs at /docs)",
        f"PostgreSQL {endpoints.database_url}",
        f"Redis      {endpoints.redis_url}",
        *extra,
        "Press Ctrl-C to stop everything.",
    ]
    return "\n".join(lines)


def raise_file_limit(wanted: int = 65536) -> None:
    """Let this process and its children hold as many connections as the hard limit allows (the soft
    limit is often 1,024: a few hundred slow clients would leave the API no file handle to accept with)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(settings: Settings) -> int:
    raise_file_limit()
    with provide(settings, start_embedded=True) as endpoints:
        migrate.upgrade(endpoints.database_url)
        env = child_env(settings, endpoints)
        children, extra = [], []
        if listening(settings.smtp_host, settings.smtp_port):
            extra.append(f"SMTP       {settings.smtp_host}:{settings.smtp_port} (already listening: emails go there)")
        else:
            children.append(spawn("mail catcher", mailcatcher_command(), env))
            extra.append(f"SMTP       {settings.smtp_host}:{settings.smtp_port} (mail catcher: emails print below)")
        children.append(spawn("worker", worker_command(), env))
        children.append(spawn("slow worker", worker_command(slow=True), env))
        children.append(spawn("api", api_command(settings), env))
        print(banner(settings, endpoints, extra), flush=True)
        return supervise(children)


def serve_only(settings: Settings) -> int:
    """`python -m service services`: just the servers, until Ctrl-C, for an API run from an IDE."""
    with provide(settings, start_embedded=True) as endpoints:
        migrate.upgrade(endpoints.database_url)
        print(f"DATABASE_URL={endpoints.database_url}\nREDIS_URL={endpoints.redis_url}", flush=True)
        return supervise([])
