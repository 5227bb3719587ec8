from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import authenticate, client_ip
from service.api.errors import Forbidden, InvalidCredentials
from service.api.http import parse_body, parse_form, parse_query
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import app_state
from service.api.throttle import Check, Limit
from service.core import dispatch
from service.core.links import InvalidLink, verified_claims
from service.core.queries import users
from service.core.schemas import LoginForm, Token, UserCreate, UserPublic, VerifyEmailQuery


@operation(summary="Register a user", tag="auth", body=UserCreate, response=UserPublic, status=201,
           errors=(409, 429), auth=False)  # fmt: skip
async def register(request: Request) -> Response:
    data = await parse_body(request, UserCreate)
    state = app_state(request)
    limit = Limit("register-ip", state.settings.registrations_per_address_per_hour, 3600)
    await state.throttle.check(Check(limit, client_ip(request), "Too many registrations from this address"))
    hashed_password = await state.passwords.hash(data.password)
    async with state.db.transaction():  # the user and their welcome email's job, or neither
        user = await users.create_user(
            state.db, email=str(data.email).lower(), username=data.username, hashed_password=hashed_password
        )
        welcome = await dispatch.record_job(
            state.db,
            name="send_welcome_email",
            owner_id=user.id,
            args={"recipient_email": user.email, "username": user.username, "user_id": user.id},
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
    access_token = state.tokens.issue(user.id, user.token_version)
    body = Token(access_token=access_token, expires_in=state.tokens.lifetime_seconds)
    return respond(body, headers={"Cache-Control": "no-store"})


@operation(
    summary="Verify an email address (the link mailed to it)",
    tag="auth",
    query=VerifyEmailQuery,
    response=UserPublic,
    errors=(403,),
    auth=False,
)
async def verify_email(request: Request) -> Response:
    query = parse_query(request, VerifyEmailQuery)
    state = app_state(request)
    try:
        user_id, email = verified_claims(state.tokens.key, query.token, issuer=state.settings.jwt_issuer)
    except InvalidLink:
        raise Forbidden("This link is not valid, or has expired") from None
    user = await users.verify_email(state.db, user_id=user_id, email=email)
    if user is None:
        raise Forbidden("This link is for an address the account no longer has")
    return respond(UserPublic.model_validate(user))


routes = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/verify-email", verify_email, methods=["GET"]),
    Route("/auth/token", token, methods=["POST"]),
]
