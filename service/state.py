"""What the lifespan opens once per process, handed to every request."""

from dataclasses import dataclass

from arq.connections import ArqRedis
from databases import Database
from starlette.requests import Request

from service.dispatch import Dispatcher
from service.metrics import HttpMetrics
from service.queries.users import UserLookup
from service.security import Passwords, Tokens
from service.settings import Settings
from service.throttle import Throttle


@dataclass(frozen=True)
class AppState:
    settings: Settings
    db: Database
    redis: ArqRedis
    passwords: Passwords
    tokens: Tokens
    http_metrics: HttpMetrics
    dispatcher: Dispatcher
    users: UserLookup
    throttle: Throttle


def app_state(request: Request) -> AppState:
    state: AppState = request.state.app
    return state
