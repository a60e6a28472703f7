"""The SLA clock: working time under business hours, the targets a ticket runs against, and
when the next one falls due.

Pure arithmetic over a ticket's timestamps and the config: the timers (``act.automation``),
the lifecycle (``act.tickets``) and the report read it; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from maildesk.config import BusinessHours, Settings
from maildesk.models import SHELVED, Ticket

TARGETS = ("first_response", "resolution")
LABELS = {"first_response": "first response", "resolution": "resolution"}
# With validated hours (at least one working day) a window comes within a week plus holidays;
# the bound only keeps a year of holidays from looping forever.
MAX_DAYS = 3 * 366


# --------------------------------------------------------------------------- working time


def _windows(after: datetime, hours: BusinessHours) -> Iterator[tuple[datetime, datetime]]:
    """Working periods (UTC start, UTC end) from ``after`` on, in order, clipped to ``after``.

    Days, holidays and the opening hours are local to the configured zone; arithmetic happens
    in UTC so a daylight-saving change makes that day's window an hour longer or shorter.
    """
    zone = ZoneInfo(hours.timezone)
    opens_at, closes_at = time.fromisoformat(hours.start), time.fromisoformat(hours.end)
    holidays = {date.fromisoformat(d) for d in hours.holidays}
    day = after.astimezone(zone).date()
    for _ in range(MAX_DAYS):
        if day.weekday() in hours.days and day not in holidays:
            opens = datetime.combine(day, opens_at, zone).astimezone(UTC)
            closes = datetime.combine(day, closes_at, zone).astimezone(UTC)
            if closes > after:
                yield max(opens, after), closes
        day += timedelta(days=1)


def add_working_time(start: datetime, duration: timedelta, hours: BusinessHours | None) -> datetime:
    """``start`` plus ``duration`` counted in working time only (calendar time without hours).

    Friday 16:00 plus 4 h with 09:00-17:00 Monday to Friday is Monday 12:00: one hour on
    Friday, three on Monday. A start outside working hours counts from the next opening.
    """
    if hours is None:
        return start + duration
    remaining = duration
    for opens, closes in _windows(start, hours):
        if remaining <= closes - opens:
            return opens + remaining
        remaining -= closes - opens
    return start + duration  # no working day in three years: the config allows none


def working_time_between(start: datetime, end: datetime, hours: BusinessHours | None) -> timedelta:
    """How much working time lies between ``start`` and ``end`` (calendar time without hours)."""
    if end <= start:
        return timedelta(0)
    if hours is None:
        return end - start
    total = timedelta(0)
    for opens, closes in _windows(start, hours):
        if opens >= end:
            break
        total += min(closes, end) - opens
    return total


# --------------------------------------------------------------------------- SLA targets


@dataclass(frozen=True, slots=True)
class Target:
    """One SLA clock of a ticket: when it is due and when (if) it stopped."""

    name: str  # first_response | resolution
    due: datetime
    stopped_at: datetime | None  # the answer (or closing) that met or missed it

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def missed(self, now: datetime) -> bool:
        return (self.stopped_at or now) > self.due


def targets(ticket: Ticket, settings: Settings) -> tuple[Target, ...]:
    """The SLA clocks of ``ticket``'s priority, measured from its creation.

    A first response is stopped by the first public answer, or by closing (the customer is
    told in the closing notice); resolution by closing.
    """
    sla = settings.sla.get(ticket.priority)
    if sla is None:
        return ()
    hours = settings.business_hours
    out = []
    if sla.first_response is not None:
        due = add_working_time(ticket.created_at, sla.first_response, hours)
        out.append(Target("first_response", due, ticket.first_response_at or ticket.closed_at))
    if sla.resolution is not None:
        due = add_working_time(ticket.created_at, sla.resolution, hours)
        out.append(Target("resolution", due, ticket.closed_at))
    return tuple(out)


def breached(ticket: Ticket) -> list[str]:
    return [name for name in ticket.sla_breached.split(",") if name]


def next_due(ticket: Ticket, settings: Settings) -> datetime | None:
    """The earliest target still running and not yet reported as missed; None when none is."""
    if ticket.status in SHELVED:  # closed, or spam: no target runs
        return None
    done = breached(ticket)
    running = [
        t.due for t in targets(ticket, settings) if t.stopped_at is None and t.name not in done
    ]
    return min(running, default=None)


def refresh_due(ticket: Ticket, settings: Settings) -> None:
    """Keep ``Ticket.due_at`` (shown as ``due_at``, and what the timer pass looks for) current."""
    ticket.due_at = next_due(ticket, settings)
