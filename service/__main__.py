"""python -m service COMMAND: run | services | migrate | worker | mailcatcher | promote-admin EMAIL."""

import argparse
import asyncio
import os
import sys

from pydantic import ValidationError

from service.core.settings import Settings
from service.dev import mailcatcher, migrate, runner
from service.dev.servers import ServerNotFound, provide


async def _promote(database_url: str, email: str) -> bool:
    from databases import Database

    from service.core.queries.users import promote_admin

    async with Database(database_url) as db:
        return await promote_admin(db, email=email)


def promote_admin(settings: Settings, email: str) -> int:
    with provide(settings, start_embedded=True) as endpoints:
        migrate.upgrade(endpoints.database_url)
        if not asyncio.run(_promote(endpoints.database_url, email)):
            print(f"No user with email {email!r}. Register first (POST /auth/register).", file=sys.stderr)
            return 1
    print(f"{email} is now an admin.")
    return 0


def migrate_only(settings: Settings) -> int:
    with provide(settings, start_embedded=True) as endpoints:
        migrate.upgrade(endpoints.database_url)
    print("Database schema is up to date.")
    return 0


def worker(settings: Settings, argv: list[str]) -> int:
    """One more arq worker against the servers of a running `make run` (or the configured ones)."""
    with provide(settings, start_embedded=False) as endpoints:
        env = {**os.environ, **endpoints.as_env()}
    os.execvpe(sys.executable, [sys.executable, "-m", "jobs", *argv], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="servers, migrations, API and worker in the foreground (make run)")
    commands.add_parser("services", help="only find or start PostgreSQL and Redis, until Ctrl-C")
    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser("worker", help="one more arq worker (make worker); --slow for the slow queue")
    commands.add_parser("mailcatcher", help="a local SMTP server on SMTP_PORT that prints every email")
    promote = commands.add_parser("promote-admin", help="make an existing user an administrator")
    promote.add_argument("email")
    args, rest = parser.parse_known_args(argv)
    try:
        settings = Settings()
        match args.command:
            case "run":
                return runner.run(settings)
            case "services":
                return runner.serve_only(settings)
            case "migrate":
                return migrate_only(settings)
            case "worker":
                return worker(settings, rest)
            case "mailcatcher":
                asyncio.run(mailcatcher.run(settings.smtp_host, settings.smtp_port))
                return 0
            case "promote-admin":
                return promote_admin(settings, args.email)
    except (ServerNotFound, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
