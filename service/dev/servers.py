"""Finding the PostgreSQL and Redis the service runs against.

For each server, in order: the URL the user configured (it must answer); the URL an embedded
server of a running `make run` wrote to .data/services.env; the local default when it answers;
otherwise an embedded server started here from a pip wheel, with its data under .data/.
"""

import asyncio
import contextlib
import fcntl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis

from service.core.connections import open_redis
from service.core.dsn import PostgresDSN
from service.core.settings import EmbeddedMode, Settings
from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey

PROBE_TIMEOUT = 3.0


class ServerNotFound(Exception):
    """A server the service needs does not answer; the message says what to do."""


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str

    def as_env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}


def safe_url(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


async def postgres_problem(url: str) -> str | None:
    """None when PostgreSQL answers at url (its database may not exist yet), else why not."""
    try:
        conn = await asyncpg.connect(_server_url(url), timeout=PROBE_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


async def redis_problem(url: str) -> str | None:
    """None when Redis (or Valkey) answers PING at url, else why not."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


async def sentinel_problem(settings: Settings) -> str | None:
    """None when the primary the sentinels name answers PING, else why not."""
    client = open_redis(settings)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


async def ensure_database(url: str) -> None:
    """Create the database named in url if the server does not have it yet."""
    name = PostgresDSN.parse(url).database
    conn = await asyncpg.connect(_server_url(url), timeout=PROBE_TIMEOUT)
    try:
        if name and not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            quoted = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent creator won
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


def _server_url(url: str) -> str:
    """The maintenance database on the same server(s), reachable before ours exists; asyncpg's form."""
    return str(PostgresDSN.parse(url).with_database("postgres"))


def runtime_env_file(settings: Settings) -> Path:
    """Where an owner of embedded servers writes their URLs, for `make worker` and the CLI to find."""
    return settings.data_dir / "services.env"


def read_runtime_env(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _write_runtime_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


Probe = Callable[[str], Coroutine[Any, Any, str | None]]


@dataclass(frozen=True)
class _Kind:
    what: str
    variable: str  # also the lower-case Settings field
    probe: Probe
    embedded: Callable[[Path], EmbeddedPostgres | EmbeddedValkey]
    data_subdir: str


POSTGRES = _Kind("PostgreSQL", "DATABASE_URL", postgres_problem, EmbeddedPostgres, "postgres")
REDIS = _Kind("Redis", "REDIS_URL", redis_problem, EmbeddedValkey, "valkey")


def _probe(kind: _Kind, url: str) -> str | None:
    return asyncio.run(kind.probe(url))


def _missing_message(kind: _Kind, url: str, problem: str, *, explicit: bool) -> str:
    what, variable = kind.what, kind.variable
    if explicit:
        return (
            f"Cannot reach {what} at {safe_url(url)} ({problem}). {variable} is set in your environment: start "
            f"that server, correct the URL, or unset {variable} to let `make run` use a local or embedded {what}."
        )
    return (
        f"No {what} answers at {safe_url(url)} and no `make run` is running here ({problem}). Start `make run` "
        f"(it starts an embedded {what} under .data/), or set {variable} to a server you run."
    )


class ServerSet(contextlib.ExitStack):
    """Resolves both servers; embedded ones started here stop when the context exits."""

    def __init__(self, settings: Settings, *, start_embedded: bool) -> None:
        super().__init__()
        self.settings = settings
        self.start_embedded = start_embedded
        self.embedded: dict[str, str] = {}  # variable -> URL of the embedded servers started here

    def resolve(self) -> Endpoints:
        for kind in (POSTGRES, REDIS):  # every configured URL is checked before anything is started
            if self._explicit(kind):
                self._check(kind)
        endpoints = Endpoints(
            database_url=_with_database(self._resolve(POSTGRES), self.settings.database_url),
            redis_url=self._resolve(REDIS),
        )
        if self.embedded:
            path = runtime_env_file(self.settings)
            _write_runtime_env(path, self.embedded)
            self.callback(path.unlink, missing_ok=True)
        asyncio.run(ensure_database(endpoints.database_url))
        return endpoints

    def _explicit(self, kind: _Kind) -> bool:
        sentinels = kind is REDIS and self.settings.redis_sentinels is not None
        return sentinels or kind.variable.lower() in self.settings.model_fields_set

    def _check(self, kind: _Kind) -> None:
        """The URL the user set: that server, or a clear error; never a fallback behind their back."""
        url: str = getattr(self.settings, kind.variable.lower())
        if kind is REDIS and self.settings.redis_sentinels:
            if problem := asyncio.run(sentinel_problem(self.settings)):
                raise ServerNotFound(
                    f"Cannot reach the Redis primary {self.settings.redis_sentinel_master!r} through the sentinels"
                    f" {self.settings.redis_sentinels} ({problem}). REDIS_SENTINELS is set in your environment:"
                    " start them, correct the list, or unset REDIS_SENTINELS."
                )
        elif problem := _probe(kind, url):
            raise ServerNotFound(_missing_message(kind, url, problem, explicit=True))

    def _resolve(self, kind: _Kind) -> str:
        url: str = getattr(self.settings, kind.variable.lower())
        if self._explicit(kind):
            return url  # checked in resolve()
        running = read_runtime_env(runtime_env_file(self.settings)).get(kind.variable)
        if running and _probe(kind, running) is None:
            return running
        mode = self.settings.embedded_servers
        problem = "not tried: EMBEDDED_SERVERS=always" if mode is EmbeddedMode.ALWAYS else _probe(kind, url)
        if problem is None:
            return url
        if mode is EmbeddedMode.NEVER or not self.start_embedded:
            raise ServerNotFound(_missing_message(kind, url, problem, explicit=False))
        return self._start(kind)

    def _start(self, kind: _Kind) -> str:
        self._lock_data_dir()
        server = kind.embedded(self.settings.data_dir / kind.data_subdir)
        server.start()
        self.callback(server.stop)
        self.embedded[kind.variable] = server.url
        return server.url

    def _lock_data_dir(self) -> None:
        """One owner of .data at a time; the kernel drops the lock if the owner dies, even by SIGKILL."""
        if self.embedded:
            return
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = self.enter_context((self.settings.data_dir / ".lock").open("w"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerNotFound(
                f"Another process (a `make run`?) owns the embedded servers in {self.settings.data_dir}. "
                "Stop it, or use `make worker` to add a worker to it."
            ) from None


def _with_database(url: str, configured_url: str) -> str:
    """url, naming the database that the configured URL names (embedded servers only have `postgres`)."""
    database = PostgresDSN.parse(configured_url).database or "taskmanager"
    return str(PostgresDSN.parse(url).with_database(database))


@contextlib.contextmanager
def provide(settings: Settings, *, start_embedded: bool) -> Iterator[Endpoints]:
    """Working URLs for both servers, with the database created; embedded servers stop on exit."""
    with ServerSet(settings, start_embedded=start_embedded) as servers:
        yield servers.resolve()
