"""Who is calling: the bearer token (or, for the dashboard, the session cookie) resolved to a user."""

from starlette.requests import Request

from service.errors import Forbidden, InvalidAuthToken, Unauthorized
from service.queries.users import get_user
from service.schemas import UserRecord
from service.security import InvalidToken
from service.state import app_state


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def current_user(request: Request) -> UserRecord:
    """The active user the request's token names; 401 with WWW-Authenticate otherwise."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    state = app_state(request)
    try:
        user_id = state.tokens.user_id(token)
    except InvalidToken:
        raise InvalidAuthToken() from None
    user = await get_user(state.db, user_id=user_id)
    if user is None or not user.is_active:
        raise InvalidAuthToken()
    return user


async def current_admin(request: Request) -> UserRecord:
    user = await current_user(request)
    if not user.is_admin:
        raise Forbidden("Administrator rights required")
    return user
