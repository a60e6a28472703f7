"""Read the tickets a ``Selection`` asks for: one query for ``#list`` and ``tickets list``.

Read-only, in the caller's transaction: ``act.queries`` answers ``#list`` with it, the command
line's ``tickets list`` prints it, so both filter the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from maildesk.desk.queries import Selection
from maildesk.models import SHELVED, Status, Tag, Ticket


@dataclass(frozen=True, slots=True)
class Selected:
    """The tickets chosen, oldest first (at most the selection's limit), and how many match."""

    tickets: tuple[Ticket, ...]
    total: int


def conditions(selection: Selection) -> list[ColumnElement[bool]]:
    """The selection as SQL conditions on ``Ticket``."""
    found: list[ColumnElement[bool]] = []
    if selection.status is not None:
        found.append(Ticket.status == selection.status)
    else:  # spam is listed only when asked for
        found.append(Ticket.status != Status.SPAM)
    if selection.unassigned:
        found.append(Ticket.assignee.is_(None))
    elif selection.assignee is not None:
        found.append(Ticket.assignee == selection.assignee.lower())
    if selection.team is not None:
        found.append(Ticket.team == selection.team)
    if selection.tag is not None:
        tagged = select(Tag.ticket_id).where(Tag.tag == selection.tag.lower())
        found.append(Ticket.id.in_(tagged))
    if selection.requester is not None:
        found.append(Ticket.requester == selection.requester.lower())
    if selection.since is not None:
        found.append(Ticket.created_at >= selection.since)
    if selection.overdue:  # as the timers mark it, at each pass of the daemon
        shelved = [s.value for s in SHELVED]
        found.append(and_(Ticket.status.not_in(shelved), Ticket.sla_breached != ""))
    return found


def select_tickets(session: Session, selection: Selection) -> Selected:
    """The tickets of ``selection`` by number, and how many match in all."""
    where = conditions(selection)
    query: Any = select(Ticket).where(*where).order_by(Ticket.id)
    if selection.limit is not None:
        query = query.limit(selection.limit)
    tickets = tuple(session.scalars(query))
    total = len(tickets)
    if selection.limit is not None and total >= selection.limit:
        total = session.scalar(select(func.count(Ticket.id)).where(*where)) or 0
    return Selected(tickets, total)
