"""Commands packed by hiredis go out byte for byte as redis-py's own packing writes them."""

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from service.core.packing import HiredisPacking, _packing, pack_with_hiredis
from service.core.settings import Settings

COMMANDS = [
    ("SET", "key", "value"),
    ("CONFIG GET", "notify-keyspace-events"),  # a name in two words: two arguments
    (b"CLIENT SETNAME", b"worker"),
    ("ZADD", "queue", 1.5, "job", 0.1, "other"),  # floats as redis-py writes them (repr)
    ("SET", "key", 10**20),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", b"\x00\xff", "é", -7),
    ("SET", "key", memoryview(b"a view")),  # hiredis takes none: redis-py packs it
    ("SET", "key", b"x" * 100_000),  # past redis-py's buffer cutoff, where it sends the value apart
]


@pytest.mark.parametrize("command", COMMANDS, ids=[str(command[:2]) for command in COMMANDS])
def test_the_same_bytes_as_redis_py(command: tuple[object, ...]) -> None:
    ours, theirs = _packing(Connection)(), Connection()
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands([command, command])) == b"".join(theirs.pack_commands([command, command]))


def test_what_redis_py_refuses_is_refused() -> None:
    with pytest.raises(DataError):
        _packing(Connection)().pack_command("SET", "key", True)


def test_every_kind_of_connection_gets_it() -> None:
    for kind in (Connection, UnixDomainSocketConnection, SentinelManagedConnection):
        packing = _packing(kind)
        assert issubclass(packing, HiredisPacking) and issubclass(packing, kind)
        assert _packing(packing) is packing


async def test_a_client_talks_to_redis_through_it(settings: Settings) -> None:
    client = pack_with_hiredis(Redis.from_url(settings.redis_url))
    try:
        await client.set("packing:float", 0.1)
        await client.zadd("packing:queue", {"job": 1.5})
        async with client.pipeline(transaction=True) as pipe:
            pipe.get("packing:float").zscore("packing:queue", "job")
            assert await pipe.execute() == [b"0.1", 1.5]
        connection = await client.connection_pool.get_connection()
        assert isinstance(connection, HiredisPacking)
        await client.connection_pool.release(connection)
    finally:
        await client.aclose()
