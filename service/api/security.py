"""Password hashing (argon2id, off the event loop) and access tokens (JWT, HS256)."""

import asyncio
import secrets
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import jwt
from argon2 import PasswordHasher as Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError

from service.core.settings import MIN_SECRET_BYTES, Settings

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud", "ver"]


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired."""


class Passwords:
    """argon2id at OWASP's minimum cost (19 MiB, t=2, p=1), a bounded number of hashes at a time.

    Each hash holds 19 MiB and a core for tens of milliseconds, so concurrency is capped: a burst of
    logins queues here instead of starving the event loop's thread pool or the machine's memory.
    Checking a password (a login) and hashing a new one (a registration, a password change) have slots
    of their own, so that a flood of registrations cannot make everyone's login wait.
    """

    def __init__(self, concurrency: int, new_password_concurrency: int = 1) -> None:
        self._hasher = Argon2Hasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        self._slots = asyncio.Semaphore(concurrency)
        self._new_slots = asyncio.Semaphore(new_password_concurrency)
        # Verified against when a login names no user, so that such a login costs what a wrong password does.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        async with self._new_slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """True when password matches hashed; with hashed None, spends the same time and says False."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, hashed, password)

    def _verify(self, hashed: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(hashed or self._decoy, password) and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        return self._hasher.check_needs_rehash(hashed)


VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Tokens:
    """Issues and checks access tokens; the algorithm list is pinned, every claim is required.

    A token that verified is remembered (a bounded number of them) until it expires, so that a
    client's next requests skip the HMAC and the claim checks. Each token carries its user's token
    version (`ver`): raised when the password changes, it refuses every token issued before.
    """

    key: str
    issuer: str
    audience: str
    lifetime_seconds: int
    _verified: OrderedDict[str, tuple[int, int, float]] = field(default_factory=OrderedDict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Tokens":
        return cls(
            key=signing_key(settings),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime_seconds=settings.jwt_expire_minutes * 60,
        )

    def issue(self, user_id: int, version: int) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "ver": version,
            "iat": now,
            "exp": now + self.lifetime_seconds,
            "iss": self.issuer,
            "aud": self.audience,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def subject(self, token: str) -> tuple[int, int]:
        """The user id the token was issued to, and the token version it carries; InvalidToken for
        anything else."""
        if (known := self._verified.get(token)) is not None and known[2] > time.time():
            return known[0], known[1]
        user_id, version, expires = self._verify(token)
        self._verified[token] = (user_id, version, expires)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return user_id, version

    def _verify(self, token: str) -> tuple[int, int, float]:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS},
            )
            return int(claims["sub"]), int(claims["ver"]), float(claims["exp"])
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None


def signing_key(settings: Settings) -> str:
    """The configured JWT secret; in development without one, a random per-process secret, loudly."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    warnings.warn(
        "JWT_SECRET is not set: using a random secret for this process only. Tokens will not survive a "
        "restart nor work across API processes. Set JWT_SECRET to a random string of 32+ bytes.",
        RuntimeWarning,
        stacklevel=2,
    )
    return secrets.token_urlsafe(MIN_SECRET_BYTES)
