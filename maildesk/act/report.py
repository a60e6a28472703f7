"""How the desk is doing over a window, as numbers and as one self-contained HTML page of charts.

Read-only, beside the flow, under ``cli``'s ``report`` and the admin's ``digest``: ``build`` gathers the figures into a
``DeskReport`` value (tickets opened and closed per day, the backlog by status now, time to
first response and to close as distributions, SLA compliance, satisfaction);
``DeskReport.as_json`` is what ``maildesk report --json`` prints, and ``render_html`` draws the
same numbers with matplotlib (``Figure`` objects rendered by Agg, never pyplot or a display) as
base64 PNG images in one HTML page that needs nothing else to open offline: the Jinja2 template
``report.html.j2`` beside this module, autoescaped, run by ``mail.rendering``. The headline
figures come from ``stats``, so ``maildesk stats`` and the report agree. The only module that
imports matplotlib.
"""

from __future__ import annotations

import base64
import io
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.act import stats
from maildesk.config import Settings
from maildesk.desk import sla, timers
from maildesk.mail import rendering
from maildesk.models import SHELVED, Event, Status, Ticket

# Time buckets for the distributions: upper bounds in seconds, and how they read.
BUCKETS: tuple[tuple[float, str], ...] = (
    (15 * 60, "< 15 min"),
    (3600, "15 min–1 h"),
    (4 * 3600, "1–4 h"),
    (8 * 3600, "4–8 h"),
    (86400, "8–24 h"),
    (2 * 86400, "1–2 d"),
    (3 * 86400, "2–3 d"),
    (7 * 86400, "3–7 d"),
    (float("inf"), "> 7 d"),
)
OPEN_STATUSES = (Status.OPEN.value, Status.PENDING.value, Status.ESCALATED.value)
COLOURS = {
    "opened": "#4c78a8",
    "closed": "#54a24b",
    "open": "#4c78a8",
    "pending": "#f58518",
    "escalated": "#e45756",
    "met": "#54a24b",
    "missed": "#e45756",
    "running": "#bab0ac",
    "response": "#4c78a8",
    "close": "#72b7b2",
}
INK, MUTED, GRID = "#1f2933", "#616e7c", "#e4e7eb"


@dataclass(frozen=True, slots=True)
class Distribution:
    """Durations in seconds, as bucket counts plus median and 90th percentile."""

    seconds: tuple[float, ...]

    @property
    def counts(self) -> list[int]:
        counts = [0] * len(BUCKETS)
        for value in self.seconds:
            counts[next(i for i, (bound, _) in enumerate(BUCKETS) if value < bound)] += 1
        return counts

    def percentile(self, share: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def median(self) -> float | None:
        return float(statistics.median(self.seconds)) if self.seconds else None

    def as_json(self) -> dict[str, Any]:
        return {
            "count": len(self.seconds),
            "median_seconds": self.median,
            "p90_seconds": self.percentile(0.9),
            "buckets": [
                {"label": label, "count": count}
                for (_, label), count in zip(BUCKETS, self.counts, strict=True)
            ],
        }


@dataclass(frozen=True, slots=True)
class Compliance:
    """One SLA target over the tickets opened in the window that have it."""

    target: str  # first_response | resolution
    met: int
    missed: int
    running: int  # not yet answered or closed, and not yet due

    @property
    def rate(self) -> float | None:
        decided = self.met + self.missed
        return round(self.met / decided, 3) if decided else None

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "met": self.met,
            "missed": self.missed,
            "running": self.running,
            "rate": self.rate,
        }


@dataclass(frozen=True, slots=True)
class DeskReport:
    desk: str
    since: datetime
    until: datetime
    zone: str
    summary: stats.Stats
    days: tuple[date, ...]
    opened_per_day: tuple[int, ...]
    closed_per_day: tuple[int, ...]
    backlog: dict[str, dict[str, int]]  # status -> team -> count, tickets not closed now
    first_response: Distribution
    close: Distribution
    sla: tuple[Compliance, ...]
    ratings: tuple[int, ...]  # how many 1s, 2s ... 5s

    @property
    def backlog_total(self) -> dict[str, int]:
        return {status: sum(teams.values()) for status, teams in self.backlog.items()}

    def as_json(self) -> dict[str, Any]:
        rated = sum(self.ratings)
        return {
            "desk": self.desk,
            "since": timers.iso(self.since),
            "until": timers.iso(self.until),
            "timezone": self.zone,
            "summary": self.summary.as_json(),
            "per_day": [
                {"date": day.isoformat(), "opened": opened, "closed": closed}
                for day, opened, closed in zip(
                    self.days, self.opened_per_day, self.closed_per_day, strict=True
                )
            ],
            "backlog": self.backlog_total,
            "backlog_by_team": self.backlog,
            "first_response": self.first_response.as_json(),
            "time_to_close": self.close.as_json(),
            "sla": [c.as_json() for c in self.sla],
            "satisfaction": {
                "count": rated,
                "average": self.summary.satisfaction_average,
                "ratings": {str(n + 1): count for n, count in enumerate(self.ratings)},
            },
        }


# --------------------------------------------------------------------------- gathering


def build(session: Session, settings: Settings, since: datetime, until: datetime) -> DeskReport:
    """The figures for ``[since, until]``; days are counted in the business-hours zone."""
    zone: tzinfo = ZoneInfo(settings.business_hours.timezone) if settings.business_hours else UTC
    summary = stats.compute(session, since, until, [t.name for t in settings.teams])
    opened = list(
        session.scalars(
            select(Ticket).where(
                Ticket.created_at >= since,
                Ticket.created_at <= until,
                Ticket.status != Status.SPAM,
            )
        )
    )
    closed = list(
        session.scalars(
            select(Ticket).where(
                Ticket.status == Status.CLOSED,
                Ticket.closed_at.is_not(None),
                Ticket.closed_at >= since,
                Ticket.closed_at <= until,
            )
        )
    )
    days = _days(since, until, zone)
    opened_days = Counter(t.created_at.astimezone(zone).date() for t in opened)
    closed_days = Counter(t.closed_at.astimezone(zone).date() for t in closed if t.closed_at)
    return DeskReport(
        desk=settings.desk.name,
        since=since,
        until=until,
        zone=str(zone),
        summary=summary,
        days=days,
        opened_per_day=tuple(opened_days[d] for d in days),
        closed_per_day=tuple(closed_days[d] for d in days),
        backlog=_backlog(session),
        first_response=Distribution(
            tuple(
                (t.first_response_at - t.created_at).total_seconds()
                for t in opened
                if t.first_response_at is not None
            )
        ),
        close=Distribution(
            tuple((t.closed_at - t.created_at).total_seconds() for t in closed if t.closed_at)
        ),
        sla=_compliance(opened, settings, until),
        ratings=_ratings(session, since, until),
    )


def _days(since: datetime, until: datetime, zone: tzinfo) -> tuple[date, ...]:
    first, last = since.astimezone(zone).date(), until.astimezone(zone).date()
    return tuple(first + timedelta(days=n) for n in range((last - first).days + 1))


def _backlog(session: Session) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {status: {} for status in OPEN_STATUSES}
    rows = session.execute(select(Ticket.status, Ticket.team).where(Ticket.status.not_in(SHELVED)))
    for status, team in rows:
        teams = out.setdefault(status, {})
        teams[team] = teams.get(team, 0) + 1
    return out


def _compliance(
    tickets: Sequence[Ticket], settings: Settings, now: datetime
) -> tuple[Compliance, ...]:
    tally = {name: Counter[str]() for name in sla.TARGETS}
    for ticket in tickets:
        for target in sla.targets(ticket, settings):
            if target.missed(now) or target.name in sla.breached(ticket):
                tally[target.name]["missed"] += 1
            elif target.stopped_at is not None:
                tally[target.name]["met"] += 1
            else:
                tally[target.name]["running"] += 1
    return tuple(
        Compliance(name, counts["met"], counts["missed"], counts["running"])
        for name, counts in tally.items()
        if counts
    )


def _ratings(session: Session, since: datetime, until: datetime) -> tuple[int, ...]:
    """Ratings given in the window: each rated ticket counts once, with its latest rating."""
    rated = select(Event.ticket_id).where(
        Event.kind == "rating", Event.at >= since, Event.at <= until
    )
    values = Counter(
        session.scalars(
            select(Ticket.rating).where(Ticket.id.in_(rated), Ticket.rating.is_not(None))
        )
    )
    return tuple(values[n] for n in range(1, 6))


# --------------------------------------------------------------------------- drawing


def _figure(height: float = 3.0) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.0, height), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.spines[["left", "bottom"]].set_color(GRID)
    axes.tick_params(colors=MUTED, labelsize=8)
    axes.set_axisbelow(True)
    return figure, axes


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _empty(axes: Axes, text: str = "nothing in this period") -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def chart_per_day(report: DeskReport) -> str:
    figure, axes = _figure()
    x = list(range(len(report.days)))
    width = 0.4
    axes.bar([i - width / 2 for i in x], report.opened_per_day, width, label="opened",
             color=COLOURS["opened"])  # fmt: skip
    axes.bar([i + width / 2 for i in x], report.closed_per_day, width, label="closed",
             color=COLOURS["closed"])  # fmt: skip
    for i, day in enumerate(report.days):
        if day.weekday() >= 5:
            axes.axvspan(i - 0.5, i + 0.5, color="#f0f2f5", zorder=0)
    step = max(1, -(-len(x) // 16))
    axes.set_xticks(x[::step], [d.strftime("%a\n%d") for d in report.days][::step])
    axes.set_xlim(-0.6, len(x) - 0.4)
    months = dict.fromkeys(d.strftime("%B %Y") for d in report.days)
    axes.set_xlabel(" – ".join(months), color=MUTED, fontsize=8)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    axes.legend(frameon=False, fontsize=8, loc="upper left", ncols=2)
    axes.set_ylabel("tickets", color=MUTED, fontsize=8)
    return _png(figure)


def chart_backlog(report: DeskReport) -> str:
    figure, axes = _figure(2.8)
    statuses = [s for s in OPEN_STATUSES]
    teams = sorted({team for by_team in report.backlog.values() for team in by_team})
    if not teams:
        _empty(axes, "no open tickets")
        return _png(figure)
    left = [0] * len(statuses)
    shades = ["#4c78a8", "#9ecae9", "#f58518", "#ffbf79", "#54a24b", "#88d27a", "#b279a2"]
    for n, team in enumerate(teams):
        counts = [report.backlog.get(s, {}).get(team, 0) for s in statuses]
        axes.barh(statuses, counts, left=left, label=team, color=shades[n % len(shades)])
        left = [a + b for a, b in zip(left, counts, strict=True)]
    for y, total in enumerate(left):
        axes.text(total, y, f" {total}", va="center", color=INK, fontsize=9)
    axes.invert_yaxis()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="x", color=GRID, linewidth=0.8)
    axes.set_xlim(0, max(left + [1]) * 1.15)
    axes.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                ncols=min(len(teams), 4), title="team", title_fontsize=8)  # fmt: skip
    return _png(figure)


def chart_distribution(distribution: Distribution, colour: str) -> str:
    figure, axes = _figure()
    if not distribution.seconds:
        _empty(axes)
        return _png(figure)
    labels = [label for _, label in BUCKETS]
    counts = distribution.counts
    axes.bar(labels, counts, color=colour, width=0.7)
    for x, count in enumerate(counts):
        if count:
            axes.text(x, count, str(count), ha="center", va="bottom", fontsize=8, color=INK)
    axes.tick_params(axis="x", labelrotation=30)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    axes.set_ylabel("tickets", color=MUTED, fontsize=8)
    return _png(figure)


def chart_sla(report: DeskReport) -> str:
    figure, axes = _figure(2.0)
    if not report.sla:
        _empty(axes, "no SLA targets configured for these tickets")
        return _png(figure)
    names = [sla.LABELS[c.target] for c in report.sla]
    left = [0.0] * len(report.sla)
    for part in ("met", "missed", "running"):
        shares = []
        for c in report.sla:
            total = c.met + c.missed + c.running
            shares.append(100 * getattr(c, part) / total if total else 0)
        axes.barh(names, shares, left=left, color=COLOURS[part], label=part, height=0.55)
        for y, (start, share, c) in enumerate(zip(left, shares, report.sla, strict=True)):
            if share >= 6:
                axes.text(start + share / 2, y, str(getattr(c, part)), ha="center",
                          va="center", color="white", fontsize=9, fontweight="bold")  # fmt: skip
        left = [a + b for a, b in zip(left, shares, strict=True)]
    for y, c in enumerate(report.sla):
        axes.text(101.5, y, f"{_percent(c.rate)} met", va="center", color=INK, fontsize=9,
                  fontweight="bold")  # fmt: skip
    axes.set_xlim(0, 100)
    axes.invert_yaxis()
    axes.set_xlabel("% of tickets opened in the period", color=MUTED, fontsize=8)
    axes.legend(frameon=False, fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return _png(figure)


def chart_satisfaction(report: DeskReport) -> str:
    figure, axes = _figure(2.4)
    if not sum(report.ratings):
        _empty(axes, "no ratings in this period")
        return _png(figure)
    scale = ["#e45756", "#f58518", "#eeca3b", "#88d27a", "#54a24b"]
    labels = ["1 poor", "2", "3", "4", "5 excellent"]
    axes.bar(labels, report.ratings, color=scale, width=0.7)
    for x, count in enumerate(report.ratings):
        if count:
            axes.text(x, count, str(count), ha="center", va="bottom", fontsize=8, color=INK)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    axes.set_ylabel("ratings", color=MUTED, fontsize=8)
    return _png(figure)


# --------------------------------------------------------------------------- the page


def _duration(seconds: float | None) -> str:
    return stats.duration_text(seconds)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def _tiles(report: DeskReport) -> list[tuple[str, str, str]]:
    """The headline figures above the charts: (name, figure, what it counts)."""
    s = report.summary
    rated = sum(report.ratings)
    sla_tiles = [
        (
            f"{sla.LABELS[c.target]} SLA",
            _percent(c.rate),
            f"{c.met} of {c.met + c.missed} met in time",
        )
        for c in report.sla
    ] or [("SLA", "-", "no targets configured")]
    return [
        ("Opened", str(s.opened), "new tickets"),
        ("Closed", str(s.closed), "in the period"),
        ("Backlog", str(s.backlog), "not closed, now"),
        ("First response", _duration(report.first_response.median), "median"),
        ("Time to close", _duration(report.close.median), "median"),
        *sla_tiles,
        (
            "Satisfaction",
            f"{s.satisfaction_average:.1f} / 5" if s.satisfaction_average is not None else "-",
            f"{rated} rating{'s' if rated != 1 else ''}",
        ),
    ]


def _charts(report: DeskReport) -> list[tuple[str, str, str]]:
    """The six charts: (title, base64 PNG, caption)."""
    s = report.summary
    rated = sum(report.ratings)
    fr, cl = report.first_response, report.close
    return [
        (
            "Tickets opened and closed per day",
            chart_per_day(report),
            f"{sum(report.opened_per_day)} opened, {sum(report.closed_per_day)} closed "
            f"({report.zone} days)",
        ),
        (
            "Backlog by status",
            chart_backlog(report),
            ", ".join(f"{n} {status}" for status, n in report.backlog_total.items()),
        ),
        (
            "Time to first response",
            chart_distribution(fr, COLOURS["response"]),
            f"{len(fr.seconds)} answered; median {_duration(fr.median)}, "
            f"90% within {_duration(fr.percentile(0.9))}",
        ),
        (
            "Time to close",
            chart_distribution(cl, COLOURS["close"]),
            f"{len(cl.seconds)} closed; median {_duration(cl.median)}, "
            f"90% within {_duration(cl.percentile(0.9))}",
        ),
        (
            "SLA compliance",
            chart_sla(report),
            "; ".join(
                f"{sla.LABELS[c.target]}: {c.met} met, {c.missed} missed, {c.running} running"
                for c in report.sla
            )
            or "no SLA targets configured",
        ),
        (
            "Satisfaction",
            chart_satisfaction(report),
            f"{rated} rating{'s' if rated != 1 else ''}, average "
            + (f"{s.satisfaction_average:.2f}" if s.satisfaction_average is not None else "-"),
        ),
    ]


def render_html(report: DeskReport) -> str:
    """One HTML page, charts embedded as base64 PNG: no scripts, fonts or links to fetch."""
    zone = ZoneInfo(report.zone)
    period = (
        f"{report.since.astimezone(zone).strftime('%d %b %Y %H:%M')} – "
        f"{report.until.astimezone(zone).strftime('%d %b %Y %H:%M')} ({report.zone})"
    )
    page = resources.files("maildesk.act").joinpath("report.html.j2").read_text(encoding="utf-8")
    return rendering.render_page(
        page,
        {
            "title": f"{report.desk}: help desk report",
            "desk": report.desk,
            "period": period,
            "tiles": _tiles(report),
            "charts": _charts(report),
            "generated": report.until.astimezone(zone).strftime("%d %b %Y %H:%M %Z"),
        },
    )
