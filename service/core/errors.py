"""Errors the core raises and classifies, with no HTTP status: the edge (service.api.errors) maps them
to responses, the worker (jobs.retry) to retries."""

import asyncpg
import redis.exceptions


class DomainError(Exception):
    """A request the domain refuses, with a message fit for the person who made it."""

    message = "Refused"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class AlreadyExists(DomainError):
    """A unique name or address is taken already."""

    message = "Already exists"


class QueueFull(DomainError):
    """The user has as many jobs waiting or running on the queue as one user may."""

    message = "You have as many jobs waiting or running as one user may: wait for some to finish"


class OwnerNotActive(DomainError):
    """A job was submitted for a user who is gone, deactivated, or whose credentials are older than
    their last password change: the edge answers as for an invalid token."""

    message = "Invalid or expired token"


class InvalidField(DomainError):
    """A value that is valid alone but not with the rest of the row (a recurring task without a due date):
    the edge answers 422, located at the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyMismatch(DomainError):
    message = "This Idempotency-Key was already used for a different request"


# A database or Redis that is down, restarting or unreachable: try again later; nothing was half-done.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes ConnectionError
    TimeoutError,
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a connection the server dropped in the middle of a statement
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"; not its subclasses, see below
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_dependency_failure(error: BaseException) -> bool:
    """Whether `error` says a dependency is unavailable for now (rather than that the request was wrong)."""
    if isinstance(error, asyncpg.InterfaceError) and type(error) is not asyncpg.InterfaceError:
        # Its subclasses are mistakes that no retry mends: a value asyncpg cannot encode (DataError),
        # a feature the client or server lacks, a bad configuration.
        return False
    return isinstance(error, DEPENDENCY_ERRORS)
