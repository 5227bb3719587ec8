"""Request and response models. Names show direction: *Create/*Update come in, *Public goes out."""

from datetime import UTC, datetime, timedelta
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
    model_validator,
)

from service.core import recurrence


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


ZONE_NAME = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"  # the shape of an IANA name (which ones exist: zoneinfo)
MAX_REMINDERS = 5
MAX_REMIND_BEFORE = timedelta(days=30)


def _offsets(value: list[timedelta]) -> list[timedelta]:
    """Reminder offsets, each a whole number of seconds from 0 to 30 days, longest first, each once."""
    for offset in value:
        if not timedelta(0) <= offset <= MAX_REMIND_BEFORE:
            raise ValueError("each reminder must come between 0 (PT0S) and 30 days (P30D) before the due time")
        if offset.microseconds:
            raise ValueError("reminder offsets are whole seconds")
    return sorted(set(value), reverse=True)


# ISO 8601 durations, e.g. ["P1D", "PT1H"]: one reminder each, that long before the due time.
RemindBefore = Annotated[
    list[timedelta], Field(max_length=MAX_REMINDERS, examples=[["P1D", "PT1H"]]),
    AfterValidator(_offsets),
]  # fmt: skip
# The patterns are the schema's word on their shape; the validators (with their own messages) have the last.
RULE_SHAPE = {"pattern": recurrence.RULE_TEXT.pattern}
Recurrence = Annotated[
    str, Field(max_length=500, json_schema_extra=RULE_SHAPE, examples=["FREQ=WEEKLY;BYDAY=MO;BYHOUR=9"]),
    AfterValidator(recurrence.check_rule),
]  # fmt: skip
TimeZone = Annotated[
    str, Field(max_length=64, json_schema_extra={"pattern": ZONE_NAME}, examples=["Europe/Berlin"]),
    AfterValidator(recurrence.check_zone),
]  # fmt: skip


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
    nullable = frozenset({"default_remind_before"})

    email: Email | None = None
    username: Username | None = None
    password: Password | None = None
    # Needed to change the email or the password: a stolen token alone cannot take the account over.
    current_password: CurrentPassword | None = None
    time_zone: TimeZone | None = None  # IANA; recurrences run on its wall time, emails show it
    # The reminders of tasks that name none; null: one, REMINDER_WINDOW_MINUTES before.
    default_remind_before: RemindBefore | None = None


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
    time_zone: str
    default_remind_before: list[timedelta] | None
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
    remind_before: RemindBefore | None = None  # null: the owner's default_remind_before
    recurrence: Recurrence | None = None  # an RRULE; the series starts at due_at

    @model_validator(mode="after")
    def _series_start(self) -> "TaskCreate":
        if self.recurrence is not None and self.due_at is None:
            raise ValueError("a recurring task needs due_at: its first occurrence, where the series starts")
        return self


MAX_BATCH = 100


class TaskBatchCreate(Incoming):
    """Tasks created together, all or none (an item's error is located by its index)."""

    tasks: Annotated[list[TaskCreate], Field(min_length=1, max_length=MAX_BATCH)]


class TaskUpdate(Patch):
    nullable = frozenset({"description", "due_at", "remind_before", "recurrence"})

    title: Title | None = None
    description: Description | None = None
    due_at: Moment | None = None
    priority: Priority | None = None
    # "done" on a recurring task records the occurrence and moves the task to the next one (status "todo").
    status: TaskStatus | None = None
    remind_before: RemindBefore | None = None
    recurrence: Recurrence | None = None  # null stops the series


class TaskPublic(Outgoing):
    id: int
    owner_id: int
    title: str
    description: str | None
    status: TaskStatus
    priority: Priority
    due_at: datetime | None
    remind_before: list[timedelta] | None
    recurrence: str | None
    created_at: datetime
    updated_at: datetime


class OccurrenceQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    count: Annotated[int, Field(ge=1, le=100)] = 10


class PastOccurrence(Outgoing):
    due_at: datetime
    outcome: Annotated[str, Field(json_schema_extra={"enum": ["done", "missed"]})]
    recorded_at: datetime


class Occurrences(BaseModel):
    """A task's next due times (its current due date first), computed in its owner's zone, and the latest
    occurrences it has left behind, newest first."""

    task_id: int
    recurrence: str | None
    time_zone: str
    upcoming: list[datetime]
    past: list[PastOccurrence]


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


class JobsAccepted(BaseModel):
    """One accepted job per item of a batch, in its order."""

    jobs: list[JobAccepted]


class JobWait(BaseModel):
    model_config = ConfigDict(extra="ignore")

    wait: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            allow_inf_nan=False,
            description="Seconds to wait, when If-None-Match names the job's current status, for its next "
            "change (200) before answering 304. Without If-None-Match the answer is at once.",
        ),
    ] = 0


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
