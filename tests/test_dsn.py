"""PostgreSQL connection strings with several hosts, for every client that reads them."""

import sqlalchemy as sa

from service.core.dsn import PostgresDSN

MULTI = "postgresql://app:s%40cret@pg-a:5432,pg-b:6543/taskmanager?target_session_attrs=read-write"


def test_a_multi_host_url_is_read_whole() -> None:
    dsn = PostgresDSN.parse(MULTI)
    assert dsn.hosts == (("pg-a", 5432), ("pg-b", 6543))
    assert (dsn.user, dsn.password, dsn.database) == ("app", "s@cret", "taskmanager")
    assert dsn.query == {"target_session_attrs": "read-write"}
    assert str(dsn) == MULTI  # as asyncpg takes it


def test_databases_gets_one_host_in_the_url_and_every_host_as_options() -> None:
    url, options = PostgresDSN.parse(MULTI).for_databases()
    assert url == "postgresql://app:s%40cret@pg-a:5432/taskmanager"
    assert options == {"host": ["pg-a", "pg-b"], "port": [5432, 6543], "target_session_attrs": "read-write"}


def test_sqlalchemy_gets_hosts_as_query_arguments() -> None:
    url = PostgresDSN.parse(MULTI).for_sqlalchemy()
    assert url.drivername == "postgresql+asyncpg"
    assert url.query["host"] == ("pg-a:5432", "pg-b:6543")
    assert url.query["target_session_attrs"] == "read-write"
    assert url.password == "s@cret"


def test_a_single_host_url_stays_as_it_was() -> None:
    single = "postgresql://postgres@127.0.0.1:5432/taskmanager"
    dsn = PostgresDSN.parse(single)
    assert str(dsn) == single
    assert dsn.for_databases() == (single, {})
    assert dsn.for_sqlalchemy() == sa.make_url("postgresql+asyncpg://postgres@127.0.0.1:5432/taskmanager")
    assert str(dsn.with_database("postgres")) == "postgresql://postgres@127.0.0.1:5432/postgres"


def test_ipv6_hosts_and_default_ports() -> None:
    dsn = PostgresDSN.parse("postgresql://u@[::1]:5433,db.example/x")
    assert dsn.hosts == (("::1", 5433), ("db.example", 5432))
    assert str(dsn) == "postgresql://u@[::1]:5433,db.example:5432/x"


def test_a_unix_socket_url_keeps_its_host_argument() -> None:
    socket = "postgresql://postgres@/taskmanager?host=/run/postgresql"
    dsn = PostgresDSN.parse(socket)
    assert dsn.hosts == ()
    assert str(dsn) == socket
    assert dsn.for_databases() == (socket, {})
    assert dsn.for_sqlalchemy().query == {"host": "/run/postgresql"}
