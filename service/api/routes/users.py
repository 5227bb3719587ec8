from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import confirm_password, current_admin, current_user
from service.api.errors import Forbidden, NotFound
from service.api.http import parse_body, parse_query
from service.api.openapi import operation
from service.api.responses import respond
from service.api.state import app_state
from service.core.queries import users
from service.core.queries.tasks import rearm_defaults
from service.core.schemas import Page, PasswordConfirmation, UserPublic, UserUpdate


@operation(summary="The current user", tag="users", response=UserPublic)
async def read_me(request: Request) -> Response:
    return respond(UserPublic.model_validate(await current_user(request)))


@operation(summary="Change the current user", tag="users", body=UserUpdate, response=UserPublic, errors=(403, 409))
async def update_me(request: Request) -> Response:
    user = await current_user(request)
    update = await parse_body(request, UserUpdate)
    changes = update.changes()
    current_password = changes.pop("current_password", None)
    state = app_state(request)
    if {"email", "password"} & set(changes):
        if current_password is None:
            raise Forbidden("Changing the email or the password needs current_password")
        await confirm_password(state, user, current_password)
    if "email" in changes:
        changes["email"] = str(changes["email"]).lower()
    if "password" in changes:
        changes["hashed_password"] = await state.passwords.hash(changes.pop("password"))
    new_password = "hashed_password" in changes
    updated = (
        await users.update_user(state.db, user_id=user.id, changes=changes, revoke_tokens=new_password)
        if changes
        else user
    )
    if updated is None:
        raise NotFound()
    if "default_remind_before" in changes:
        await rearm_defaults(state.db, owner_id=user.id)
    if updated.email != user.email:  # unverified until the link sent to the new address is followed
        await state.dispatcher.submit(
            name="send_email_confirmation", owner_id=user.id, args={"user_id": user.id, "email": updated.email}
        )
    return respond(UserPublic.model_validate(updated))


@operation(
    summary="Delete the current user and everything they own",
    tag="users",
    body=PasswordConfirmation,
    status=204,
    errors=(403,),
)
async def delete_me(request: Request) -> Response:
    user = await current_user(request)
    confirmation = await parse_body(request, PasswordConfirmation)
    state = app_state(request)
    await confirm_password(state, user, confirmation.current_password)
    await users.delete_user(state.db, user_id=user.id)
    return Response(status_code=204)


@operation(summary="A user: yourself, or anyone for an admin", tag="users", response=UserPublic, errors=(404,))
async def read_user(request: Request) -> Response:
    caller = await current_user(request)
    user_id: int = request.path_params["user_id"]
    user = caller if caller.id == user_id else None
    if caller.is_admin and user is None:
        user = await users.get_user(app_state(request).db, user_id=user_id)
    if user is None:
        raise NotFound("User not found")
    return respond(UserPublic.model_validate(user))


@operation(summary="All users (admin)", tag="users", query=Page, response=UserPublic, many=True, errors=(403,))
async def list_users(request: Request) -> Response:
    await current_admin(request)
    page = parse_query(request, Page)
    found = await users.list_users(app_state(request).db, limit=page.limit, offset=page.offset)
    return respond([UserPublic.model_validate(user) for user in found])


routes = [
    Route("/users/me", read_me, methods=["GET"]),
    Route("/users/me", update_me, methods=["PATCH"]),
    Route("/users/me", delete_me, methods=["DELETE"]),
    Route("/users/{user_id:id}", read_user, methods=["GET"]),
    Route("/users", list_users, methods=["GET"]),
]
