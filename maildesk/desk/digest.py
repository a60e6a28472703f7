"""The digest's calendar: which day's digest is due, and the window of the admin's figures.

Pure, like the timers' rules: ``act.digest`` asks ``due_day`` on every timer pass and sends each
recipient the day's digest once. Days are those of the desk's zone (``Settings.zone``); with
``[business_hours]`` only its working days (not its holidays) have one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from maildesk.config import BusinessHours, Settings

MAX_DAYS = 3 * 366  # the same bound as the SLA clock's: a config allows no working day in that


def due_day(now: datetime, settings: Settings) -> date | None:
    """The day whose digest is due at ``now``: today (the desk's zone) once ``[digest] at``
    has come on a working day; None without ``[digest]``, on a day off and before that time.
    A daemon started later that day still finds it due; yesterday's never is."""
    if settings.digest is None:
        return None
    zone = ZoneInfo(settings.zone)
    today = now.astimezone(zone).date()
    if not working_day(today, settings.business_hours):
        return None
    return today if now >= moment(today, settings.digest.at, zone) else None


def moment(day: date, clock: str, zone: ZoneInfo) -> datetime:
    """``clock`` ("08:30") on ``day`` in ``zone``, in UTC. On the day clocks go forward a time
    in the skipped hour is read with the offset before the change (02:30 in Berlin on the last
    Sunday of March is 03:30 summer time); on the day they go back, a time that happens twice
    is its first."""
    return datetime.combine(day, time.fromisoformat(clock), zone).astimezone(UTC)


def working_day(day: date, hours: BusinessHours | None) -> bool:
    if hours is None:
        return True
    return day.weekday() in hours.days and day.isoformat() not in hours.holidays


def previous_working_day(day: date, hours: BusinessHours | None) -> date:
    """The working day before ``day`` (yesterday without business hours)."""
    before = day - timedelta(days=1)
    for _ in range(MAX_DAYS):
        if working_day(before, hours):
            return before
        before -= timedelta(days=1)
    return day - timedelta(days=1)


def figures_window(day: date, settings: Settings) -> tuple[datetime, datetime]:
    """What the admin's figures on ``day`` cover, in UTC: from the start of the working day
    before (yesterday, or Friday on a Monday) to the start of ``day``."""
    zone = ZoneInfo(settings.zone)
    since = previous_working_day(day, settings.business_hours)
    return moment(since, "00:00", zone), moment(day, "00:00", zone)


def end_of(day: date, settings: Settings) -> datetime:
    """The end of ``day`` in the desk's zone, in UTC: what "due today" runs up to."""
    return moment(day + timedelta(days=1), "00:00", ZoneInfo(settings.zone))
