"""Signed, expiring links in emails: "verify this address". A JWT (HS256, the service's JWT_SECRET)
with an audience of its own, so that a link is never an access token and an access token never a link."""

import time

import jwt

from service.core.settings import Settings

AUDIENCE = "taskmanager-verify-email"
LIFETIME_SECONDS = 24 * 3600


class InvalidLink(Exception):
    """Forged, expired, or for another purpose."""


def verification_token(key: str, *, user_id: int, email: str, issuer: str) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "email": email, "iat": now, "exp": now + LIFETIME_SECONDS}
    return jwt.encode({**claims, "iss": issuer, "aud": AUDIENCE}, key, algorithm="HS256")


def verified_claims(key: str, token: str, *, issuer: str) -> tuple[int, str]:
    """The user id and the address a link verifies; InvalidLink otherwise."""
    try:
        claims = jwt.decode(
            token, key, algorithms=["HS256"], audience=AUDIENCE, issuer=issuer,
            options={"require": ["sub", "email", "iat", "exp", "iss", "aud"]},
        )  # fmt: skip
        return int(claims["sub"]), str(claims["email"])
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise InvalidLink(str(exc)) from None


def verification_url(settings: Settings, *, user_id: int, email: str) -> str:
    """The link a worker mails: it needs the JWT_SECRET the API has (make run and compose share one)."""
    if settings.jwt_secret is None:
        raise RuntimeError("JWT_SECRET is not set: the API could not check a verification link signed here")
    key = settings.jwt_secret.get_secret_value()
    token = verification_token(key, user_id=user_id, email=email, issuer=settings.jwt_issuer)
    return f"{settings.public_url.rstrip('/')}/auth/verify-email?token={token}"
