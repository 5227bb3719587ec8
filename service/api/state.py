"""What the lifespan opens once per process, handed to every request."""

from dataclasses import dataclass

from arq.connections import ArqRedis
from databases import Database
from starlette.requests import Request

from service.api.metrics import HttpMetrics
from service.api.security import Passwords, Tokens
from service.api.sessions import Sessions
from service.api.streams import StreamHub
from service.api.throttle import Throttle
from service.core.dispatch import Dispatcher
from service.core.queries.users import UserLookup
from service.core.settings import Settings


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
    sessions: Sessions
    streams: StreamHub


def app_state(request: Request) -> AppState:
    state: AppState = request.state.app
    return state
