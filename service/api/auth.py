"""Who is calling: the bearer token (or, for the dashboard, the session cookie) resolved to a user."""

from starlette.requests import Request

from service.api.errors import Forbidden, InvalidAuthToken, Unauthorized
from service.api.security import InvalidToken
from service.api.state import AppState, app_state
from service.api.throttle import Check, Limit
from service.core.queries.users import find_by_login, update_user
from service.core.schemas import UserRecord
from service.core.settings import Settings


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def user_for_token(state: AppState, token: str) -> UserRecord:
    """The active user a token names, if it was issued since their last password change;
    InvalidAuthToken (401) otherwise."""
    try:
        user_id, version = state.tokens.subject(token)
    except InvalidToken:
        raise InvalidAuthToken() from None
    return await _active(state, user_id, version)


async def user_for_session(state: AppState, session_id: str) -> UserRecord:
    """The active user of a dashboard session, as for a token; InvalidAuthToken (401) otherwise."""
    session = await state.sessions.get(session_id)
    if session is None:
        raise InvalidAuthToken()
    return await _active(state, session.user_id, session.token_version)


async def _active(state: AppState, user_id: int, token_version: int) -> UserRecord:
    user = await state.users.get(user_id)
    if user is None or not user.is_active or user.token_version != token_version:
        raise InvalidAuthToken()
    return user


def token_subject(request: Request) -> tuple[int, int]:
    """The user id and token version of the request's bearer token, checked (no I/O); 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    try:
        return app_state(request).tokens.subject(token)
    except InvalidToken:
        raise InvalidAuthToken() from None


async def active_user(state: AppState, user_id: int, token_version: int) -> UserRecord:
    """The user a checked token names, if active and the token is not older than their last password change."""
    return await _active(state, user_id, token_version)


async def current_user(request: Request) -> UserRecord:
    """The active user the request's bearer token names; 401 with WWW-Authenticate otherwise."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    return await user_for_token(app_state(request), token)


def login_limits(settings: Settings) -> tuple[Limit, Limit]:
    """Failed logins per account (15 minutes), and attempts per client address (a minute)."""
    return (
        Limit("login-account", settings.login_failures_per_account, 15 * 60),
        Limit("login-ip", settings.login_attempts_per_ip, 60),
    )


async def authenticate(state: AppState, *, login: str, password: str, client_ip: str) -> UserRecord | None:
    """The active user with this username or email and password, or None; 429 when throttled.

    An unknown login costs what a wrong password does, so timing does not tell which usernames
    exist. Throttling comes before any hashing, so a flood costs little CPU.
    """
    per_account, per_ip = login_limits(state.settings)
    # Each attempt is counted before the password is checked, so that a burst of concurrent guesses
    # gets no more checks than the limit; a successful login forgets the account's count. Attempts
    # are counted per account, whether they name it by username or by email.
    await state.throttle.check(Check(per_ip, client_ip, "Too many login attempts from this address"))
    user = await find_by_login(state.db, login=login)
    account = f"user:{user.id}" if user else f"login:{login.strip().lower()}"
    await state.throttle.check(Check(per_account, account, "Too many failed logins for this account"))
    valid = await state.passwords.verify(user.hashed_password if user else None, password)
    if user is None or not valid or not user.is_active:
        return None
    await state.throttle.forget(per_account, account)
    if state.passwords.needs_rehash(user.hashed_password):
        hashed = await state.passwords.hash(password)
        await update_user(state.db, user_id=user.id, changes={"hashed_password": hashed})
    return user


def client_ip(request: Request) -> str:
    """The caller's address (uvicorn puts a trusted proxy's X-Forwarded-For here with --proxy-headers)."""
    return request.client.host if request.client else "unknown"


async def confirm_password(state: AppState, user: UserRecord, password: str) -> None:
    """Forbidden (403) unless password is the user's: what an email or password change, or deleting the
    account, needs besides the token. Wrong guesses count against the account's login limit."""
    per_account, _ = login_limits(state.settings)
    account = f"user:{user.id}"
    await state.throttle.check(Check(per_account, account, "Too many failed logins for this account"))
    if not await state.passwords.verify(user.hashed_password, password):
        raise Forbidden("The current password is not correct")
    await state.throttle.forget(per_account, account)


async def current_admin(request: Request) -> UserRecord:
    user = await current_user(request)
    if not user.is_admin:
        raise Forbidden("Administrator rights required")
    return user
