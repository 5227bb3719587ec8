"""Which failures are worth another try, and how long to wait before it. Pure functions."""

import random
from collections.abc import Callable

import aiosmtplib

from jobs.smtp import EmailInFlight
from service.core.errors import is_dependency_failure


class PermanentError(Exception):
    """Retrying cannot help: bad input, a row that no longer exists."""


def is_transient(error: BaseException) -> bool:
    """Connections refused or lost, timeouts, servers restarting or overloaded: these pass.

    OSError and TimeoutError, among the dependency failures, include aiosmtplib's connect,
    disconnect and timeout errors."""
    if isinstance(error, PermanentError):
        return False
    if isinstance(error, EmailInFlight):
        return True
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return 400 <= error.code < 500  # SMTP 4xx: "try again later"; 5xx: refused for good
    return is_dependency_failure(error)


def backoff(attempt: int, *, base: float, cap: float = 300.0, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): exponential, capped, "equal jitter"
    (half fixed, half random), so that jobs that failed together do not all come back together."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return float(ceiling / 2 + rand() * ceiling / 2)
