"""PostgreSQL connection strings in libpq's own form, several hosts included:

    postgresql://user:password@primary:5432,standby:5432/taskmanager?target_session_attrs=read-write

asyncpg reads that form as it is, trying each host until one is writable. `databases` (which takes
one host from the URL) and SQLAlchemy (for alembic, which spells several hosts `?host=a:1&host=b:2`)
do not: this module gives each of them the same target in the form it reads.
"""

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import sqlalchemy as sa

DEFAULT_PORT = 5432


@dataclass(frozen=True)
class PostgresDSN:
    hosts: tuple[tuple[str, int], ...]  # none for a unix socket named by ?host=
    database: str | None = None
    user: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    scheme: str = "postgresql"

    @classmethod
    def parse(cls, url: str) -> "PostgresDSN":
        parts = urlsplit(url)
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        hosts = tuple(_host_port(host) for host in hostlist.split(",") if host)  # none: ?host=/socket/dir
        return cls(
            hosts=hosts,
            database=unquote(parts.path.lstrip("/")) or None,
            user=unquote(user) or None,
            password=unquote(password) if password else None,
            query=dict(parse_qsl(parts.query)),
            scheme=parts.scheme.split("+")[0],
        )

    def with_database(self, database: str) -> "PostgresDSN":
        return replace(self, database=database)

    def __str__(self) -> str:
        """In libpq's form, password included (what asyncpg takes)."""
        userinfo = quote(self.user or "", safe="")
        if self.password is not None:
            userinfo += ":" + quote(self.password, safe="")
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts)
        url = f"{self.scheme}://{userinfo + '@' if userinfo else ''}{hosts}/{quote(self.database or '', safe='')}"
        return url + (f"?{urlencode(self.query, safe='/')}" if self.query else "")

    def for_databases(self) -> tuple[str, dict[str, Any]]:
        """The URL `databases` can parse (the first host), and the asyncpg options that give it every host."""
        if len(self.hosts) < 2:
            return str(self), {}
        first = replace(self, hosts=self.hosts[:1], query={})
        options: dict[str, Any] = {}
        if len(self.hosts) > 1:
            options["host"] = [host for host, _ in self.hosts]
            options["port"] = [port for _, port in self.hosts]
        if "target_session_attrs" in self.query:
            options["target_session_attrs"] = self.query["target_session_attrs"]
        return str(first), options

    def for_sqlalchemy(self) -> sa.URL:
        """For SQLAlchemy on asyncpg (alembic): several hosts as `host` query arguments."""
        query: dict[str, Any] = dict(self.query)
        if len(self.hosts) > 1:
            query["host"] = tuple(f"{host}:{port}" for host, port in self.hosts)
            return sa.URL.create("postgresql+asyncpg", self.user, self.password, None, None, self.database, query)
        host, port = self.hosts[0] if self.hosts else (None, None)
        return sa.URL.create("postgresql+asyncpg", self.user, self.password, host, port, self.database, query)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or DEFAULT_PORT)
    host, _, port = text.partition(":")
    return host, int(port or DEFAULT_PORT)
