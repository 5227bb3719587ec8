"""Recurring tasks: RFC 5545 RRULEs, parsed and expanded by python-dateutil, evaluated in the owner's zone.

A series starts at the task's due date (DTSTART, RFC 5545 3.8.5.3); the rule gives the occurrences after
it. The rule runs on local wall time in the owner's IANA zone, so `BYHOUR=9` stays 09:00 local across a
DST change, while every time stored or returned is UTC.
"""

import functools
import itertools
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dateutil.rrule import rrule, rrulestr

MIN_GAP = timedelta(hours=1)  # no rule may fire more often than hourly
RULE_TEXT = re.compile(r"^[A-Za-z0-9=;,+-]{1,500}$")  # one RRULE value: no DTSTART, no RRULE: prefix, no lines
TOO_FREQUENT = frozenset({"SECONDLY", "MINUTELY"})
RFC_PARTS = frozenset(
    {"FREQ", "UNTIL", "COUNT", "INTERVAL", "BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY", "BYMONTHDAY", "BYYEARDAY",
     "BYWEEKNO", "BYMONTH", "BYSETPOS", "WKST"}
)  # fmt: skip
LIMITS = {"COUNT": 100_000, "INTERVAL": 1000}
# Checking a rule expands it from here: dateutil stops at year 9999, so a rule that can never fire (the
# 30th of February) is found out within ten years of expansion instead of looping through eight thousand.
PROBE_START = datetime(9990, 1, 1, tzinfo=UTC)
PROBE_OCCURRENCES = 50


def _parts(text: str) -> dict[str, str]:
    parts = {}
    for part in text.upper().split(";"):
        name, _, value = part.partition("=")
        if not value or name in parts:
            raise ValueError(f"not an RRULE: each part is NAME=VALUE, once ({part!r})")
        parts[name] = value
    return parts


def check_rule(text: str) -> str:
    """The rule in upper case, if it is one this service runs: a valid RRULE that fires, at most hourly.
    Raises ValueError with a message for the person who wrote it."""
    if not RULE_TEXT.match(text):
        raise ValueError("an RRULE value such as FREQ=WEEKLY;BYDAY=MO;BYHOUR=9 (no DTSTART: the due date is the start)")
    parts = _parts(text)
    if "FREQ" not in parts:
        raise ValueError("FREQ is required, e.g. FREQ=WEEKLY")
    if parts["FREQ"] in TOO_FREQUENT:
        raise ValueError("fires too often: at most hourly (FREQ=HOURLY or longer)")
    if unknown := sorted(parts.keys() - RFC_PARTS):
        raise ValueError(f"not an RFC 5545 RRULE part: {', '.join(unknown)}")
    for name, most in LIMITS.items():
        if name in parts and not (parts[name].isdigit() and 1 <= int(parts[name]) <= most):
            raise ValueError(f"{name} must be a whole number from 1 to {most}")
    if "COUNT" in parts and "UNTIL" in parts:
        raise ValueError("COUNT and UNTIL may not both be given (RFC 5545)")
    rule = text.upper()
    try:
        probe = _rule(rule, PROBE_START).replace(count=None, until=None)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"not a valid RRULE: {exc}") from None
    _check_gaps(list(itertools.islice(probe, PROBE_OCCURRENCES)))
    return rule


def _check_gaps(occurrences: list[datetime]) -> None:
    if len(occurrences) < 2:
        raise ValueError("never fires, or less than once in five years")
    if any(later - earlier < MIN_GAP for earlier, later in itertools.pairwise(occurrences)):
        raise ValueError("fires too often: occurrences must be at least an hour apart")


def _rule(text: str, start: datetime) -> rrule:
    parsed = rrulestr(text, dtstart=start)
    if not isinstance(parsed, rrule):  # a set: the text held several rules
        raise ValueError("one rule only")
    return parsed


@functools.cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_zone(name: str) -> str:
    """An IANA time zone name zoneinfo knows (e.g. Europe/Berlin); ValueError otherwise."""
    if name not in _zone_names():
        raise ValueError("not an IANA time zone name, e.g. Europe/Berlin or UTC")
    return name


def upcoming(rule: str, *, start: datetime, after: datetime, time_zone: str, count: int) -> list[datetime]:
    """Up to `count` occurrences of the series begun at `start` that fall strictly after `after` (UTC)."""
    found: list[datetime] = []
    try:
        local_start, local_after = start.astimezone(zone(time_zone)), after.astimezone(zone(time_zone))
        # dateutil compares wall times: start a little early, then keep what falls after `after` as an
        # instant (each once: the wall times a spring-forward skips can land on the same instant).
        for local in _rule(rule, local_start).xafter(local_after - timedelta(hours=3)):
            instant = local.astimezone(UTC)
            if instant > after and (not found or instant > found[-1]):
                found.append(instant)
                if len(found) == count:
                    break
    except OverflowError:  # the series runs past the years datetime holds: it ends there
        pass
    return found


def next_due(rule: str, *, start: datetime, after: datetime, time_zone: str) -> datetime | None:
    """The occurrence that follows `after`, or None when the series has ended (COUNT or UNTIL)."""
    following = upcoming(rule, start=start, after=after, time_zone=time_zone, count=1)
    return following[0] if following else None
