from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import authenticate, client_ip
from service.api.errors import InvalidCredentials
from service.api.http import parse_body, parse_form
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import app_state
from service.core import dispatch
from service.core.queries import users
from service.core.schemas import LoginForm, Token, UserCreate, UserPublic


@operation(
    summary="Register a user", tag="auth", body=UserCreate, response=UserPublic, status=201, errors=(409,), auth=False
)
async def register(request: Request) -> Response:
    data = await parse_body(request, UserCreate)
    state = app_state(request)
    hashed_password = await state.passwords.hash(data.password)
    async with state.db.transaction():  # the user and their welcome email's job, or neither
        user = await users.create_user(
            state.db, email=str(data.email).lower(), username=data.username, hashed_password=hashed_password
        )
        welcome = await dispatch.record_job(
            state.db,
            name="send_welcome_email",
            owner_id=user.id,
            args={"recipient_email": user.email, "username": user.username},
            job_id=f"welcome-{user.id}",
        )
    await dispatch.enqueue(state.redis, welcome)
    return respond(UserPublic.model_validate(user), status_code=201)


@operation(
    summary="Log in (OAuth2 password flow)", tag="auth", form=LoginForm, response=Token, errors=(401, 429), auth=False
)
async def token(request: Request) -> Response:
    form = await parse_form(request, LoginForm)
    state = app_state(request)
    user = await authenticate(state, login=form.username, password=form.password, client_ip=client_ip(request))
    if user is None:
        raise InvalidCredentials()
    access_token = state.tokens.issue(user.id)
    body = Token(access_token=access_token, expires_in=state.tokens.lifetime_seconds)
    return respond(body, headers={"Cache-Control": "no-store"})


routes = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/token", token, methods=["POST"]),
]
