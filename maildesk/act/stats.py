"""The numbers a support lead asks for, over a window: ``maildesk stats``.

Beside the flow, read-only: tickets opened in the window by status and team, the backlog now,
median time to the first agent response (``first_response_at - created_at``), median time to
close (of tickets closed in the window), and satisfaction (average and count of the ratings
given in the window). ``cli`` prints it as a table or as JSON; the admin's ``digest`` mails it
(it sits below the command line for that).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk.config import parse_duration
from maildesk.models import SHELVED, Event, Status, Ticket

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TeamStats:
    team: str
    opened: int  # opened in the window
    by_status: dict[str, int]  # of those opened in the window, their status now
    backlog: int  # not closed, now (whenever opened)
    median_first_response: float | None  # seconds
    median_close: float | None  # seconds


@dataclass(frozen=True, slots=True)
class Stats:
    since: datetime
    until: datetime
    opened: int
    by_status: dict[str, int]
    backlog: int
    closed: int  # closed in the window
    median_first_response: float | None
    median_close: float | None
    satisfaction_average: float | None
    satisfaction_count: int
    teams: tuple[TeamStats, ...] = field(default=())

    def as_json(self) -> dict[str, object]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "opened": self.opened,
            "by_status": self.by_status,
            "backlog": self.backlog,
            "closed": self.closed,
            "median_first_response_seconds": self.median_first_response,
            "median_close_seconds": self.median_close,
            "satisfaction": {
                "average": self.satisfaction_average,
                "count": self.satisfaction_count,
            },
            "teams": [
                {
                    "team": t.team,
                    "opened": t.opened,
                    "by_status": t.by_status,
                    "backlog": t.backlog,
                    "median_first_response_seconds": t.median_first_response,
                    "median_close_seconds": t.median_close,
                }
                for t in self.teams
            ],
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def parse_since(text: str | None, now: datetime) -> datetime:
    """``7d``, ``12h``, ``2w`` (back from now) or an ISO date/time; default 30 days back."""
    if not text:
        return now - DEFAULT_WINDOW
    if re.match(r"^\s*\d+\s*[smhdw]\s*$", text):
        delta = parse_duration(text)
        assert delta is not None
        return now - delta
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'--since: expected a duration like "7d" or a date like "2026-11-01", got {text!r}'
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


@dataclass(frozen=True, slots=True)
class _Window:
    """The rows one window's figures are counted from."""

    opened: tuple[tuple[str, str, datetime, datetime | None], ...]  # team, status, times
    closed: tuple[tuple[str, datetime, datetime | None], ...]  # team, created, closed
    backlog: dict[str, int]  # team -> tickets not closed, now
    ratings: tuple[int, ...]  # the latest rating of each ticket rated in the window

    def first_responses(self, team: str | None) -> list[float]:
        return [
            (first - created).total_seconds()
            for t, _, created, first in self.opened
            if first is not None and (team is None or t == team)
        ]

    def closing(self, team: str | None) -> list[float]:
        return [
            (done - created).total_seconds()
            for t, created, done in self.closed
            if done is not None and (team is None or t == team)
        ]

    def statuses(self, team: str | None) -> dict[str, int]:
        counts = {s.value: 0 for s in Status if s is not Status.SPAM}  # spam is not counted
        for t, status, _, _ in self.opened:
            if team is None or t == team:
                counts[status] = counts.get(status, 0) + 1
        return counts

    def team(self, name: str) -> TeamStats:
        return TeamStats(
            team=name,
            opened=sum(1 for t, *_ in self.opened if t == name),
            by_status=self.statuses(name),
            backlog=int(self.backlog.get(name, 0)),
            median_first_response=_median(self.first_responses(name)),
            median_close=_median(self.closing(name)),
        )


def _window(session: Session, since: datetime, now: datetime) -> _Window:
    opened = session.execute(
        select(Ticket.team, Ticket.status, Ticket.created_at, Ticket.first_response_at).where(
            Ticket.created_at >= since, Ticket.created_at <= now, Ticket.status != Status.SPAM
        )
    )
    closed = session.execute(
        select(Ticket.team, Ticket.created_at, Ticket.closed_at).where(
            Ticket.closed_at.is_not(None), Ticket.closed_at >= since, Ticket.closed_at <= now
        )
    )
    backlog = session.execute(
        select(Ticket.team, func.count()).where(Ticket.status.not_in(SHELVED)).group_by(Ticket.team)
    )
    rated = select(Event.ticket_id).where(
        Event.kind == "rating", Event.at >= since, Event.at <= now
    )
    ratings = session.scalars(
        select(Ticket.rating).where(Ticket.id.in_(rated), Ticket.rating.is_not(None))
    )
    return _Window(
        opened=tuple((team, status, at, first) for team, status, at, first in opened),
        closed=tuple((team, at, done) for team, at, done in closed),
        backlog={team: int(count) for team, count in backlog},
        ratings=tuple(r for r in ratings if r is not None),
    )


def compute(session: Session, since: datetime, now: datetime, teams: Sequence[str] = ()) -> Stats:
    """The figures for tickets in ``[since, now]``; ``teams`` lists configured teams first."""
    rows = _window(session, since, now)
    names = dict.fromkeys([*teams, *(t for t, *_ in rows.opened), *rows.backlog])
    ratings = rows.ratings
    return Stats(
        since=since,
        until=now,
        opened=len(rows.opened),
        by_status=rows.statuses(None),
        backlog=sum(rows.backlog.values()),
        closed=len(rows.closed),
        median_first_response=_median(rows.first_responses(None)),
        median_close=_median(rows.closing(None)),
        satisfaction_average=round(statistics.fmean(ratings), 2) if ratings else None,
        satisfaction_count=len(ratings),
        teams=tuple(rows.team(name) for name in names),
    )


def open_counts(session: Session) -> dict[str, int]:
    """Tickets not closed (nor spam), by team."""
    return {
        team: int(count)
        for team, count in session.execute(
            select(Ticket.team, func.count())
            .where(Ticket.status.not_in(SHELVED))
            .group_by(Ticket.team)
        )
    }


def assigned_counts(session: Session) -> dict[str, int]:
    """Tickets not closed (nor spam), by assignee."""
    return {
        assignee: int(count)
        for assignee, count in session.execute(
            select(Ticket.assignee, func.count())
            .where(Ticket.status.not_in(SHELVED), Ticket.assignee.is_not(None))
            .group_by(Ticket.assignee)
        )
        if assignee is not None
    }


def duration_text(seconds: float | None) -> str:
    """``3h 20m``, ``2d 4h``, ``45s``; ``-`` when there is no figure."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s" if minutes < 10 and secs else f"{minutes}m"
    return f"{secs}s"
