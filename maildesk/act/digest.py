"""The morning digest: each agent's open tickets, her teams' unassigned ones and the SLA targets
due today or missed; the admin's figures, with the HTML report attached.

Beside the timers: every timer pass of the daemon (under the same lease) calls ``run``, which
does nothing until the calendar (``desk.digest.due_day``) says the day's digest is due. Each
recipient's mail is written with its ``digests`` row (day, kind, recipient) in one
transaction, and the row's key lets one in: a second daemon on the same database, or a restart
after it went out, finds the day done. An empty digest writes the row and sends nothing (so no
digest comes at 14:00 once a ticket does). Each list shows at most ``SHOWN`` tickets and says
how many more there are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maildesk.act import stats
from maildesk.act.means import Desk
from maildesk.act.notices import personal_address
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings, Settings
from maildesk.database import Database
from maildesk.desk import commands, sla, timers
from maildesk.desk import digest as calendar
from maildesk.mail.compose import Enclosure
from maildesk.models import SHELVED, DatabaseError, DigestSent, Ticket

log = logging.getLogger("maildesk.digest")  # the logs name the job, not the module path

SHOWN = 25  # tickets a list shows; the rest are counted ("and 475 more")
SUBJECT_CHARS = 80  # of a ticket's subject in a list line


def run(db: Database, desk: Desk) -> int:
    """Write the digests due now that are not written yet; returns how many mails. One
    recipient's failure is logged and tried again next pass; the others carry on."""
    now = desk.clock()
    day = calendar.due_day(now, desk.settings)
    if day is None:
        return 0
    with db.transaction() as session:
        query = select(DigestSent.kind, DigestSent.recipient).where(DigestSent.day == day)
        done = {(kind, recipient) for kind, recipient in session.execute(query)}
    written = 0
    for kind, recipient, make in recipients(desk):
        if (kind, recipient) in done:
            continue
        try:
            with db.transaction() as session:
                mail = make(session, desk, day, now)
                if claim(session, (day, kind, recipient), mail is not None, now) and mail:
                    desk.mailer.enqueue(session, mail, now)
                    written += 1
        except DatabaseError:
            raise
        except Exception:  # noqa: BLE001 - one recipient's digest must not stop the others'
            log.exception("digest for %s on %s failed; trying again next pass", recipient, day)
    if written:
        log.info("digest of %s: %d mails written", day, written)
    return written


Make = Callable[[Session, Desk, date, datetime], Mail | None]


def recipients(desk: Desk) -> list[tuple[str, str, Make]]:
    """Who gets a digest: every agent, and the admin when ``[digest] admin`` says so."""
    found: list[tuple[str, str, Make]] = [
        ("agent", agent.email, _for_agent(agent)) for agent in desk.settings.agents
    ]
    settings = desk.settings
    if settings.digest is not None and settings.digest.admin and settings.desk.admin_address:
        found.append(("admin", settings.desk.admin_address, admin_digest))
    return found


def claim(session: Session, key: tuple[date, str, str], mailed: bool, now: datetime) -> bool:
    """Write the day's row for this recipient; False when there is one already (another
    daemon wrote it meanwhile: its transaction holds the key until it commits or rolls back)."""
    day, kind, recipient = key
    values = {"day": day, "kind": kind, "recipient": recipient, "at": now, "mailed": mailed}
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(DigestSent).values(values).on_conflict_do_nothing()
    # RETURNING, not rowcount: the driver may not know the count (psycopg says -1 here)
    return session.connection().execute(statement.returning(DigestSent.day)).first() is not None


# --------------------------------------------------------------------------- an agent's digest


@dataclass(frozen=True, slots=True)
class Listed:
    """One list of a digest: the tickets it shows and how many there are in all."""

    tickets: Sequence[Ticket]
    count: int


Lists = tuple[Listed, Listed, Listed]  # hers, unassigned in her teams, SLA due or missed


def _for_agent(agent: AgentSettings) -> Make:
    def make(session: Session, desk: Desk, day: date, now: datetime) -> Mail | None:
        return agent_digest(session, desk, agent, day, now)

    return make


def agent_digest(
    session: Session, desk: Desk, agent: AgentSettings, day: date, now: datetime
) -> Mail | None:
    """The agent's digest for ``day``; None when all its lists are empty."""
    settings = desk.settings
    hers = Ticket.assignee == agent.email
    # a ticket whose assignee is no longer an agent is her teams' to take, as an unassigned one
    owner_gone = Ticket.assignee.not_in([a.email for a in settings.agents])
    unowned = and_(or_(Ticket.assignee.is_(None), owner_gone), Ticket.team.in_(agent.teams))
    live = Ticket.status.not_in(SHELVED)
    end = calendar.end_of(day, settings)
    running_late = or_(
        Ticket.due_at < end,
        Ticket.sla_breached.contains("resolution"),
        and_(Ticket.sla_breached.contains("first_response"), Ticket.first_response_at.is_(None)),
    )
    lists = (
        _listed(session, live, hers),
        _listed(session, live, unowned),
        _listed(session, live, or_(hers, unowned), running_late),
    )
    if not any(listed.count for listed in lists):
        return None
    return agent_mail(desk, agent, (day, now), lists)


def agent_mail(desk: Desk, agent: AgentSettings, when: tuple[date, datetime], lists: Lists) -> Mail:
    """The agent's digest of ``lists`` on that day; its Reply-To is her personal address."""
    day, now = when
    context = agent_context(desk, day, now, lists)
    return Mail(
        kind="digest",
        template="agent_digest",
        to=agent.email,
        context={"agent": {"email": agent.email, "name": agent.name}, **context},
        to_agent=True,
        reply_to=personal_address(desk, agent),
    )


def _listed(session: Session, *where: ColumnElement[bool]) -> Listed:
    count = session.scalar(select(func.count()).select_from(Ticket).where(*where)) or 0
    shown = session.scalars(select(Ticket).where(*where).order_by(Ticket.id).limit(SHOWN))
    return Listed(list(shown), count)


def agent_context(desk: Desk, day: date, now: datetime, lists: Lists) -> dict[str, Any]:
    """What ``agent_digest``'s templates see, besides ``agent``: ``day``, and ``mine``,
    ``unassigned`` and ``sla``, each ``tickets`` (a line's values) and ``more`` (not shown)."""
    mine, unassigned, late = lists
    end = calendar.end_of(day, desk.settings)
    return {
        "day": f"{day:%A %d %B %Y}",
        "mine": _shown(mine, [_line(desk, t, now) for t in mine.tickets]),
        "unassigned": _shown(unassigned, [_line(desk, t, now) for t in unassigned.tickets]),
        "sla": _shown(late, [_sla_line(desk, t, now, end) for t in late.tickets]),
    }


def _shown(listed: Listed, lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tickets": lines, "count": listed.count, "more": max(listed.count - len(lines), 0)}


def _line(desk: Desk, ticket: Ticket, now: datetime) -> dict[str, Any]:
    subject = commands.defang(" ".join(ticket.subject.split()))
    if len(subject) > SUBJECT_CHARS:
        subject = subject[: SUBJECT_CHARS - 1] + "…"
    return {
        "ref": desk.ref(ticket),
        "subject": subject or "(no subject)",
        "status": ticket.status,
        "priority": ticket.priority,
        "team": ticket.team,
        "requester": ticket.requester or "(no address)",
        "assignee": ticket.assignee,
        "age": timers.human(now - ticket.created_at),
    }


def _sla_line(desk: Desk, ticket: Ticket, now: datetime, end: datetime) -> dict[str, Any]:
    """A ticket of the SLA list, with each of its targets still running that falls due
    before the day ends or was missed: ``targets``, a sentence each."""
    running = [t for t in sla.targets(ticket, desk.settings) if t.stopped_at is None]
    targets = [
        f"{t.label} missed, due {timers.when(t.due, desk.settings)}"
        if t.due <= now
        else f"{t.label} due {timers.when(t.due, desk.settings)}"
        for t in running
        if t.due < end
    ]
    return {**_line(desk, ticket, now), "targets": targets}


# --------------------------------------------------------------------------- the admin's figures


def admin_digest(session: Session, desk: Desk, day: date, now: datetime) -> Mail | None:
    """The figures since the working day before (``maildesk stats`` over that window), with
    the HTML report of the same window attached; None when nothing happened and nothing is
    open."""
    settings = desk.settings
    since, until = calendar.figures_window(day, settings)
    figures = stats.compute(session, since, until, [t.name for t in settings.teams])
    if not (figures.opened or figures.closed or figures.backlog):
        return None
    # here, not at the top: matplotlib is loaded by the daemon only when it draws a report
    from maildesk.act import report

    page = report.render_html(report.build(session, settings, since, until))
    return admin_mail(settings, day, figures, page)


def admin_mail(settings: Settings, day: date, figures: stats.Stats, page: str) -> Mail:
    """The admin's digest of ``figures``, the report's ``page`` attached."""
    name = f"maildesk-report-{day:%Y-%m-%d}.html"
    return Mail(
        kind="digest",
        template="admin_digest",
        to=settings.desk.admin_address or "",
        context=admin_context(settings, day, figures),
        to_agent=True,
        attachments=(Enclosure(name, "text/html", page.encode("utf-8")),),
    )


def admin_context(settings: Settings, day: date, figures: stats.Stats) -> dict[str, Any]:
    """What ``admin_digest``'s templates see: ``day`` and ``figures`` (as ``maildesk stats``
    prints them: counts, and durations as text)."""
    d = stats.duration_text
    ratings = figures.satisfaction_count
    return {
        "day": f"{day:%A %d %B %Y}",
        "figures": {
            "since": timers.when(figures.since, settings),
            "until": timers.when(figures.until, settings),
            "opened": figures.opened,
            "by_status": figures.by_status,
            "closed": figures.closed,
            "backlog": figures.backlog,
            "first_response": d(figures.median_first_response),
            "to_close": d(figures.median_close),
            "satisfaction": (
                f"{figures.satisfaction_average:.1f}/5 from {ratings} rating"
                + ("s" if ratings != 1 else "")
                if ratings
                else "no ratings"
            ),
            "teams": [
                {
                    "team": t.team,
                    "opened": t.opened,
                    "backlog": t.backlog,
                    "first_response": d(t.median_first_response),
                    "to_close": d(t.median_close),
                }
                for t in figures.teams
            ],
        },
    }
