"""Request and response models. Names show direction: *Create/*Update come in, *Public goes out."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)


def _email(value: str) -> str:
    """An address as RFC 5321 and the schema's `format: email` have it, in a normal form. Addresses at
    the .test domain (RFC 6761) are taken too, for test environments; other special-use names are not."""
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


Email = Annotated[str, Field(max_length=320, json_schema_extra={"format": "email"}), AfterValidator(_email)]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{3,64}$")]
Password = Annotated[str, Field(min_length=8, max_length=128)]
CurrentPassword = Annotated[str, Field(min_length=1, max_length=128)]
# PostgreSQL text cannot hold NUL, so no text we store may contain it. Titles and names are one line
# of text: no control character at all (a CR/LF in a name would break the email it goes into). They
# are checked as sent (so the schema tells the truth) and stored without surrounding blanks.
NO_NUL = r"^[^\x00]*$"
SOME_TEXT = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"  # one line, something besides blanks
Title = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=SOME_TEXT), AfterValidator(str.strip)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SOME_TEXT), AfterValidator(str.strip)]
Description = Annotated[str, Field(max_length=10_000, pattern=NO_NUL)]
SearchText = Annotated[str, Field(max_length=200, pattern=NO_NUL)]
Limit = Annotated[int, Field(ge=1, le=100)]
BIGINT_DIGITS = 18  # every 18-digit number fits in PostgreSQL's bigint


def _iso_text(value: Any) -> Any:
    """Dates come as ISO 8601 text, as the schema says; pydantic would also take numbers (-1e-9 too)
    as timestamps."""
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2030-01-31T09:00:00Z")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _storable(value: datetime) -> datetime:
    """A moment PostgreSQL can hold, in UTC: 0001-01-01T00:00+14:00 is in year 0 in UTC, which neither
    Python nor the database's driver can take."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range: it must fall between the years 1 and 9999 in UTC") from None


Moment = Annotated[AwareDatetime, AfterValidator(_storable)]  # a strict JSON body takes ISO 8601 text only
When = Annotated[Moment, BeforeValidator(_iso_text)]  # for query strings, which are never strict
Offset = Annotated[int, Field(ge=0, le=1_000_000)]


class Incoming(BaseModel):
    """A client's input: unknown fields are refused, so owner, status or is_admin cannot be slipped in;
    types are strict, so `false` is not a number and a number is not a date."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _null_only_where_allowed(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The JSON schema of a Patch says what it accepts: no null for a field that cannot be emptied."""
    nullable: frozenset[str] = getattr(model, "nullable", frozenset())
    for name, prop in schema.get("properties", {}).items():
        if name not in nullable and "anyOf" in prop:
            kept = [branch for branch in prop.pop("anyOf") if branch.get("type") != "null"]
            prop.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
            # Left out, the field stays as it is: no default to state (null would not fit the schema).
            if prop.get("default", ...) is None:
                del prop["default"]


class Patch(Incoming):
    """A partial update: fields left out stay as they are; null is accepted only where a value may be empty."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_null_only_where_allowed)
    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")  # after validation: a "before" validator would lose the strict JSON mode
    @classmethod
    def _refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("may not be null")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class Outgoing(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Auth and users


class UserCreate(Incoming):
    email: Email
    username: Username
    password: Password


class UserUpdate(Patch):
    email: Email | None = None
    username: Username | None = None
    password: Password | None = None
    # Needed to change the email or the password: a stolen token alone cannot take the account over.
    current_password: CurrentPassword | None = None


class VerifyEmailQuery(BaseModel):
    token: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[A-Za-z0-9_.-]+$")]


class PasswordConfirmation(Incoming):
    current_password: CurrentPassword


class _User(Outgoing):
    id: int
    email: str
    email_verified_at: datetime | None  # mail goes to the address only once it is verified
    username: str
    is_active: bool
    is_admin: bool
    created_at: datetime


class UserPublic(_User):
    pass


class UserRecord(_User):
    """A user as stored, password hash included. A sibling of UserPublic, not a kind of it, so a record
    cannot be sent where a UserPublic is expected: validating one as UserPublic drops the hash."""

    hashed_password: str
    token_version: int


class LoginForm(BaseModel):
    # OAuth2 password flow (RFC 6749 4.3): grant_type, scope and client fields may come along.
    username: Annotated[str, Field(min_length=1, max_length=320, pattern=NO_NUL)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


# Items


class ItemCreate(Incoming):
    title: Title
    description: Description | None = None


class ItemUpdate(Patch):
    nullable = frozenset({"description"})

    title: Title | None = None
    description: Description | None = None


class ItemPublic(Outgoing):
    id: int
    owner_id: int
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime


# Tasks


class TaskStatus(StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class TaskCreate(Incoming):
    title: Title
    description: Description | None = None
    due_at: Moment | None = None
    priority: Priority = Priority.NORMAL


class TaskUpdate(Patch):
    nullable = frozenset({"description", "due_at"})

    title: Title | None = None
    description: Description | None = None
    due_at: Moment | None = None
    priority: Priority | None = None
    status: TaskStatus | None = None


class TaskPublic(Outgoing):
    id: int
    owner_id: int
    title: str
    description: str | None
    status: TaskStatus
    priority: Priority
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: Limit = 50
    offset: Offset = 0


class TaskQuery(Page):
    status: TaskStatus | None = None
    due_before: When | None = None


# Background jobs


class JobState(StrEnum):
    PENDING = "PENDING"  # accepted, waiting for a worker
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"  # running, and has reported progress
    RETRY = "RETRY"  # failed transiently; waiting to run again
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"  # aborted by its owner or an admin

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})
ACTIVE_STATES = frozenset(JobState) - FINAL_STATES


class Progress(BaseModel):
    current: int
    total: int
    percent: int


class JobError(BaseModel):
    type: str
    message: str


class JobStatus(Outgoing):
    """The status object of a background job."""

    job_id: str
    name: str
    state: JobState
    progress: Progress | None
    result: Any
    error: JobError | None
    tries: int
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobRecord(JobStatus):
    """A job as stored: its status, plus who asked for it and with what arguments."""

    owner_id: int | None
    queue_name: str
    args: dict[str, Any]
    request_id: str | None
    trace_context: str | None = None  # W3C traceparent of the request that created it, when traced
    version: int  # bumped by every change of state or progress
    worker_id: str | None

    def status(self) -> JobStatus:
        return JobStatus.model_validate(self.model_dump(include=set(JobStatus.model_fields)))


class JobAccepted(BaseModel):
    job_id: str
    status_url: str


class SendEmailRequest(Incoming):
    recipient_email: Email
    username: Name


class ReportRequest(Incoming):
    pass


Operand = (
    Annotated[int, Field(ge=-(10**15), le=10**15)] | Annotated[float, Field(ge=-1e15, le=1e15, allow_inf_nan=False)]
)


class LongCalcRequest(Incoming):
    a: Operand
    b: Operand
    step_seconds: Annotated[float, Field(ge=0, le=10)] = 1.0


class JobQuery(Page):
    state: JobState | None = None
    name: Annotated[str, Field(max_length=64, pattern=NO_NUL)] | None = None


# The dashboard


def _user_filter(value: str) -> str:
    """A username, an email or a user id; digits (of any script) must make an id PostgreSQL can hold."""
    if value.strip().isdigit() and not (value.strip().isascii() and len(value.strip()) <= BIGINT_DIGITS):
        raise ValueError("not a user id: at most 18 digits 0-9")
    return value


class DashboardJobQuery(Page):
    name: Annotated[str, Field(max_length=64, pattern=NO_NUL)] | None = None
    state: JobState | None = None
    user: Annotated[str, Field(max_length=320, pattern=NO_NUL), AfterValidator(_user_filter)] | None = None
    since: When | None = None
    until: When | None = None
    q: SearchText | None = None  # a job id, or text in its args or error
    dead: bool = False  # only failures that exhausted their tries


class DashboardJob(JobRecord):
    username: str | None


# Webhooks


class WebhookEvent(StrEnum):
    JOB_FINISHED = "job.finished"  # one of your jobs reached SUCCESS, FAILURE or REVOKED
    TASK_DUE = "task.due"  # one of your open tasks reached its due time (once per task and due date)
    REMINDER_SENT = "reminder.sent"  # a reminder email about one of your tasks went out


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its first attempt
    RETRYING = "retrying"  # an attempt failed; another follows after a backoff
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # attempts ran out, or the URL was refused (SSRF); replay sends it again


def _distinct(events: list[WebhookEvent]) -> list[WebhookEvent]:
    return sorted(set(events))


WebhookURL = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[\x21-\x7e]+$")]
Events = Annotated[list[WebhookEvent], Field(min_length=1, max_length=10), AfterValidator(_distinct)]
WebhookDescription = Annotated[str, Field(max_length=500, pattern=NO_NUL)]


class WebhookCreate(Incoming):
    url: WebhookURL  # http(s), public (checked after resolving its host), no credentials
    events: Events
    description: WebhookDescription | None = None


class WebhookUpdate(Patch):
    nullable = frozenset({"description"})

    url: WebhookURL | None = None
    events: Events | None = None
    description: WebhookDescription | None = None
    active: bool | None = None  # false: no new deliveries, and waiting ones fail at their next attempt


class WebhookPublic(Outgoing):
    id: int
    url: str
    events: list[WebhookEvent]
    description: str | None
    active: bool
    previous_secret_expires_at: datetime | None  # after a rotation: until then the old secret signs too
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookPublic):
    """A webhook as created or rotated: the only time its signing secret is shown."""

    secret: str  # whsec_<base64>: give it to standardwebhooks.Webhook(secret) in your receiver


class DeliveryPublic(Outgoing):
    id: int
    webhook_id: int
    event_id: str  # the webhook-id header of every attempt: the same on retries and replays
    event_type: WebhookEvent
    data: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryQuery(Page):
    status: DeliveryStatus | None = None


class FailingDelivery(DeliveryPublic):
    """A delivery on the dashboard's card: whose webhook, where to."""

    url: str
    username: str
